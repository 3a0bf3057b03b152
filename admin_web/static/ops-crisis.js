// The crisis panel: each municipality's mode and the progress of its activation, and the
// switch (POST /crisis) for the municipalities ticked. Read every second while an
// activation runs (entities pending, or one just asked for not shown yet), else every 3 s.
"use strict";

(function () {
  const root = document.getElementById("crisis-page");
  if (!root) return;
  const role = root.dataset.role;
  const canOperate = role === "operator" || role === "admin";
  const mine = new Set((root.dataset.municipalities || "").split(" ").filter(Boolean));
  const mayAct = (slug) => canOperate && (role === "admin" || mine.size === 0 || mine.has(slug));
  const form = document.getElementById("crisis-form");
  const rowsNode = document.getElementById("crisis-rows");
  const errorBox = document.getElementById("crisis-error");
  const notice = document.getElementById("crisis-notice");
  const summary = document.getElementById("crisis-summary");
  const selectAll = document.getElementById("crisis-select-all");
  const selected = new Set();
  const FAST = 1000, CALM = 3000;

  form.hidden = !canOperate;
  selectAll.disabled = !canOperate;
  let rows = {};
  // Activations asked for from this page and not yet seen settled: id -> {munis, until}.
  // One the coordinator refused never shows in the rows: past AWAIT_MS its command says why.
  const awaited = new Map();
  const AWAIT_MS = 60000;
  let interval = FAST;
  let poll = cp.poll("/crisis", interval, onData, (e) => ops.showError(errorBox, e));

  function onData(data) {
    rows = data;
    render();
    const running = Object.values(rows).some((r) => (r.entities && r.entities.pending) > 0);
    for (const [id, { munis, until }] of Array.from(awaited)) {
      const settled = munis.every((m) => rows[m] && rows[m].activation_id === id
        && !(rows[m].entities && rows[m].entities.pending));
      if (settled) {
        awaited.delete(id);
        notice.textContent = `Activation ${id} done in ${munis.join(", ")}.`;
      } else if (Date.now() > until) {
        awaited.delete(id);
        cp.api(`/commands/${encodeURIComponent(id)}`).then((command) => {
          ops.showError(errorBox, new Error(`activation ${id} is ${command.status}${command.error ? `: ${command.error}` : ""}`));
        }, (error) => ops.showError(errorBox, error));
      }
    }
    const wanted = running || awaited.size ? FAST : CALM;
    if (wanted !== interval) {
      interval = wanted;
      poll.stop();
      poll = cp.poll("/crisis", interval, onData, (e) => ops.showError(errorBox, e));
    }
  }

  function render() {
    const slugs = Object.keys(rows);
    const active = slugs.filter((m) => rows[m].mode !== "normal");
    summary.textContent = active.length
      ? `${active.length} of ${slugs.length} municipalities under a plan`
      : `all ${slugs.length} municipalities normal`;
    ops.syncRows(rowsNode, slugs.map((m) => ({ slug: m, row: rows[m] })), (x) => x.slug,
      (x) => JSON.stringify([x.row, selected.has(x.slug)]), buildRow);
    const selectable = slugs.filter(mayAct);
    selectAll.checked = selectable.length > 0 && selectable.every((m) => selected.has(m));
  }

  function buildRow({ slug, row }) {
    const e = row.entities || { done: 0, pending: 0, failed: 0 };
    const total = e.done + e.pending + e.failed;
    const progress = cp.el("div", {
      class: "progress", "data-done": e.done, "data-pending": e.pending, "data-failed": e.failed,
      role: "group", "aria-label": `activation of ${slug}`,
    });
    if (total) {
      const bar = cp.el("div", { class: "progress-bar", "aria-hidden": "true" });
      for (const [part, n] of [["done", e.done], ["failed", e.failed], ["pending", e.pending]]) {
        if (!n) continue;
        const seg = cp.el("span", { class: `seg seg-${part}` });
        seg.style.width = `${(100 * n / total).toFixed(2)}%`;
        bar.append(seg);
      }
      progress.append(bar);
    }
    if (total || row.activation_id) {
      progress.append(cp.el("span", { class: "small" },
        cp.el("span", { class: "done" }, `${e.done} done`), " · ",
        cp.el("span", { class: "pending" }, `${e.pending} pending`), " · ",
        cp.el("span", { class: e.failed ? "failed" : "" }, `${e.failed} failed`)));
    } else {
      progress.append(cp.el("span", { class: "muted" }, "—"));
    }
    if (row.activation_id) progress.append(cp.el("div", { class: "muted small mono", title: "activation id" }, row.activation_id));
    const details = [];
    if (row.kept && row.kept.length) {
      details.push(cp.el("details", {}, cp.el("summary", {}, `${row.kept.length} kept`),
        cp.el("ul", {}, row.kept.map((k) => cp.el("li", {},
          `${k.entity} ${k.field} = ${JSON.stringify(k.value)} (${k.reason})`)))));
    }
    if (row.failures && row.failures.length) {
      details.push(cp.el("details", { class: "failed" }, cp.el("summary", {}, `${row.failures.length} failed`),
        cp.el("ul", {}, row.failures.map((f) => cp.el("li", {}, `${f.entity}: ${f.error}`)))));
    }
    const box = cp.el("input", {
      type: "checkbox", name: "municipality", value: slug, "aria-label": `select ${slug}`,
      disabled: !mayAct(slug), checked: selected.has(slug),
      onchange: (ev) => { if (ev.target.checked) selected.add(slug); else selected.delete(slug); render(); },
    });
    return cp.el("tr", { "data-municipality": slug, "data-mode": row.mode, class: `mode-${row.mode}` },
      cp.el("td", {}, box),
      cp.el("th", { scope: "row", class: "mono" }, slug),
      cp.el("td", {}, cp.el("span", { class: `badge mode mode-${row.mode}` }, row.mode)),
      cp.el("td", {}, ops.ago(row.since)),
      cp.el("td", {}, row.by || cp.el("span", { class: "muted" }, "—")),
      cp.el("td", { class: "small" }, row.description || ""),
      cp.el("td", {}, progress),
      cp.el("td", {}, details));
  }

  selectAll.addEventListener("change", () => {
    for (const slug of Object.keys(rows)) {
      if (!mayAct(slug)) continue;
      if (selectAll.checked) selected.add(slug); else selected.delete(slug);
    }
    render();
  });

  async function switchTo(mode) {
    ops.showError(errorBox, null);
    notice.textContent = "";
    const munis = Object.keys(rows).filter((m) => selected.has(m));
    if (!munis.length) {
      ops.showError(errorBox, Object.assign(new Error("tick at least one municipality"), { field: "municipalities" }));
      return;
    }
    const body = { mode, municipalities: munis };
    if (mode !== "normal" && document.getElementById("crisis-replace").checked) body.replace = true;
    try {
      const answer = await cp.post("/crisis", body);
      awaited.set(answer.activation_id, { munis, until: Date.now() + AWAIT_MS });
      notice.textContent = `${mode === "normal" ? "Back to normal" : `Mode ${mode}`} asked for ${munis.join(", ")} (activation ${answer.activation_id}); following it…`;
      interval = FAST;
      poll.stop();
      poll = cp.poll("/crisis", interval, onData, (e) => ops.showError(errorBox, e));
    } catch (error) {
      ops.showError(errorBox, error);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    switchTo(document.getElementById("crisis-mode").value);
  });
  document.getElementById("crisis-normal").addEventListener("click", () => switchTo("normal"));
})();
