// The audit trail (admin): GET /audit with its filters (user, action or its family,
// outcome, a time range), a page at a time. The next page's cursor comes in the
// X-Next-Before header; the cursors of the pages passed are kept to go back. The first
// page is read again every 5 s; each entry's params, before and after open in place.
"use strict";

(function () {
  const root = document.getElementById("audit-page");
  if (!root) return;
  const filtersForm = document.getElementById("audit-filters");
  const rowsNode = document.getElementById("audit-rows");
  const errorBox = document.getElementById("audit-error");
  const older = document.getElementById("audit-older");
  const newer = document.getElementById("audit-newer");
  const newest = document.getElementById("audit-newest");
  const pageNo = document.getElementById("audit-page-no");
  const summary = document.getElementById("audit-summary");

  let filters = ops.bindFilters(filtersForm, (values) => { filters = values; cursors.length = 0; go(null); });
  // The cursors (before) of the pages before this one; this one's; the next one's.
  const cursors = [];
  let before = new URLSearchParams(location.search).get("before") || null;
  let next = null;
  let entries = [];
  const opened = new Set();
  let poll = null;

  function epoch(local) {
    if (!local) return "";
    const ms = new Date(local).getTime();
    return Number.isFinite(ms) ? String(ms / 1000) : "";
  }

  function path() {
    return cp.withQuery("/audit", {
      user: filters.user, action: filters.action, outcome: filters.outcome,
      since: epoch(filters.from), until: epoch(filters.to), limit: filters.limit || "50",
      before: before || "",
    });
  }

  function go(cursor) {
    before = cursor;
    ops.setParam("before", before || "");
    opened.clear();
    if (poll) poll.stop();
    // Only the first page changes as entries are written; an older one is read once.
    poll = cp.poll(path, before ? 3600 * 1000 : 5000, (data, response) => {
      ops.showError(errorBox, null);
      entries = data;
      next = response.headers.get("X-Next-Before");
      render();
    }, (error) => ops.showError(errorBox, error));
  }

  function render() {
    const flat = [];
    for (const e of entries) {
      flat.push({ e, more: false });
      if (opened.has(e.id)) flat.push({ e, more: true });
    }
    ops.syncRows(rowsNode, flat, (x) => (x.more ? `${x.e.id}/more` : x.e.id),
      (x) => (x.more ? "more" : opened.has(x.e.id) ? "open" : "closed"), (x) => (x.more ? buildMore(x.e) : buildRow(x.e)));
    document.getElementById("audit-empty").hidden = entries.length > 0;
    older.disabled = !next;
    newer.disabled = !before;
    newest.disabled = !before;
    pageNo.textContent = `page ${cursors.length + 1}`;
    summary.textContent = entries.length ? `${entries.length} entries, from ${cp.time(entries[entries.length - 1].ts)} to ${cp.time(entries[0].ts)}` : "";
  }

  function buildRow(e) {
    const hasMore = [e.params, e.before, e.after].some((v) => v !== null && v !== undefined);
    const toggle = hasMore ? cp.el("button", {
      type: "button", class: "expand", "data-action": "expand", "aria-expanded": opened.has(e.id) ? "true" : "false",
      "aria-label": `parameters and changes of ${e.action} by ${e.user}`,
      onclick: () => { if (opened.has(e.id)) opened.delete(e.id); else opened.add(e.id); render(); },
    }, opened.has(e.id) ? "▾ details" : "▸ details") : null;
    return cp.el("tr", { "data-audit-id": e.id, "data-outcome": e.outcome, "data-audit-action": e.action, class: `outcome-${e.outcome}` },
      cp.el("td", {}, ops.ago(e.ts)),
      cp.el("td", { class: "mono" }, e.user || "—"),
      cp.el("td", {}, e.role || ""),
      cp.el("td", { class: "mono small" }, e.source || ""),
      cp.el("td", { class: "mono" }, e.action),
      cp.el("td", { class: "mono small" }, e.target || ""),
      cp.el("td", {}, cp.el("span", { class: `badge outcome outcome-${e.outcome}` }, e.outcome),
        e.code ? cp.el("span", { class: "muted small" }, ` ${e.code}`) : null),
      cp.el("td", { class: "small" }, e.detail || ""),
      cp.el("td", {}, toggle));
  }

  function buildMore(e) {
    const block = (name, value) => (value === null || value === undefined ? null
      : cp.el("div", { class: "json-block" }, cp.el("h4", {}, name),
        cp.el("pre", { "data-field": name }, JSON.stringify(value, null, 2))));
    return cp.el("tr", { class: "more", "data-audit-detail": e.id },
      cp.el("td", { colspan: 9 }, cp.el("div", { class: "json-blocks" },
        block("params", e.params), block("before", e.before), block("after", e.after))));
  }

  older.addEventListener("click", () => { if (next) { cursors.push(before); go(next); } });
  newer.addEventListener("click", () => go(cursors.length ? cursors.pop() : null));
  newest.addEventListener("click", () => { cursors.length = 0; go(null); });
  go(before);
})();
