// The equipment list: GET /api/v1/equipment with the filters of the page's URL (kind,
// municipality, status, online, in_alarm, limit, after), refreshed every 3 s; the
// next page's link carries the API's X-Next-After as its "after".
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const FILTERS = ["kind", "municipality", "status", "online", "in_alarm"];

  // The newest time the runtime received any of the equipment's values.
  function lastSeen(item) {
    let ts = null;
    for (const r of Object.values(item.reported || {})) {
      if (r && typeof r.received_ts === "number" && r.received_ts > 0 && (ts === null || r.received_ts > ts)) {
        ts = r.received_ts;
      }
    }
    return ts;
  }

  function row(item) {
    const ts = lastSeen(item);
    const conditions = (item.conditions || []).join(", ");
    const href = `/equipment/${encodeURIComponent(item.id)}`;
    return cp.el("tr", { "data-entity-id": item.id, "data-online": String(!!item.online),
                         "data-in-alarm": String(!!item.in_alarm) },
      cp.el("td", {}, cp.el("a", { href, class: "mono" }, item.id)),
      cp.el("td", { class: "kind" }, item.kind || "—"),
      cp.el("td", { class: "municipality" }, item.municipality),
      cp.el("td", { class: "status-cell" },
        cp.el("span", { class: `status status-${item.status || "unknown"}` }, item.status || "unknown")),
      cp.el("td", { class: "online" },
        cp.el("span", { class: item.online ? "online-yes" : "online-no" },
          cp.el("span", { class: item.online ? "dot dot-online" : "dot dot-offline", "aria-hidden": "true" }),
          item.online ? "online" : "offline")),
      cp.el("td", { class: "alarms" }, item.in_alarm
        ? cp.el("span", { class: "in-alarm", title: conditions || null },
          cp.el("span", { class: "dot dot-alarm", "aria-hidden": "true" }), "in alarm")
        : (conditions ? cp.el("span", { class: "muted" }, conditions) : "—")),
      cp.el("td", { class: "seen", title: ts ? cp.time(ts) : null, "data-ts": ts === null ? null : String(ts) },
        cp.age(ts)));
  }

  function start() {
    const section = document.getElementById("equipment");
    if (!section) return;
    const rows = document.getElementById("equipment-rows");
    const next = document.getElementById("next-page");
    const first = document.getElementById("first-page");
    const count = document.getElementById("page-count");
    const error = document.getElementById("equipment-error");
    const form = document.getElementById("equipment-filters");

    const here = cp.query();
    const params = {};
    for (const name of [...FILTERS, "after"]) if (here[name]) params[name] = here[name];
    params.limit = here.limit || section.dataset.pageSize;

    // A changed filter applies at once (the form's submit button does the same).
    for (const select of form.querySelectorAll("select")) {
      select.addEventListener("change", () => form.requestSubmit());
    }
    if (params.after) {
      const back = { ...params };
      delete back.after;
      if (!here.limit) delete back.limit;
      first.href = cp.withQuery("/equipment", back);
      first.hidden = false;
    }

    cp.poll(cp.withQuery("/equipment", params), REFRESH_MS, (items, response) => {
      error.hidden = true;
      const out = items.map(row);
      if (!out.length) {
        out.push(cp.el("tr", {}, cp.el("td", { colspan: 7, class: "muted" },
          params.after ? "No more equipment." : "No equipment matches these filters.")));
      }
      cp.replace(rows, out);
      const after = response.headers.get("X-Next-After");
      count.textContent = `${items.length} shown`;
      if (after) {
        const forward = { ...params, after };
        if (!here.limit) delete forward.limit;
        next.href = cp.withQuery("/equipment", forward);
        next.hidden = false;
      } else {
        next.hidden = true;
      }
    }, (err) => {
      if (err instanceof cp.ApiError) {
        error.textContent = err.field ? `${err.message} (${err.field})` : err.message;
        error.hidden = false;
      }
    });

    // Ages move on between answers.
    setInterval(() => {
      for (const cell of rows.querySelectorAll("td.seen[data-ts]")) {
        cell.textContent = cp.age(Number(cell.dataset.ts));
      }
    }, 5000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
