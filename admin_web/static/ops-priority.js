// The bus-priority pool (GET /priority every 2 s): its members, the requests granted and
// refused by reason, and the latency from a bus's position to the controller's write,
// its histogram drawn as bars.
"use strict";

(function () {
  const root = document.getElementById("priority-page");
  if (!root) return;

  cp.poll("/priority", 2000, (data) => {
    const granted = data.requests.granted || 0;
    const refused = Object.entries(data.requests.refused || {}).sort((a, b) => b[1] - a[1]);
    const refusedTotal = refused.reduce((sum, [, n]) => sum + n, 0);
    const total = granted + refusedTotal;
    document.getElementById("priority-granted").textContent = ops.number(granted, 0);
    document.getElementById("priority-refused-total").textContent = ops.number(refusedTotal, 0);
    const share = (n) => (total ? `${ops.number(100 * n / total, 1)} %` : "—");
    ops.syncRows(document.querySelector("#priority-refused tbody"), refused, ([reason]) => reason,
      (entry) => JSON.stringify([entry, total]),
      ([reason, n]) => cp.el("tr", { "data-reason": reason },
        cp.el("td", {}, reason.replace(/_/g, " ")),
        cp.el("td", { class: "num" }, ops.number(n, 0)),
        cp.el("td", { class: "num" }, share(n))));

    document.getElementById("priority-none-refused").hidden = refused.length > 0;

    const latency = data.latency_ms || {};
    const ms = (v) => (v === null || v === undefined ? "—" : `${ops.number(v, 1)} ms`);
    document.getElementById("priority-p50").textContent = ms(latency.p50);
    document.getElementById("priority-p99").textContent = ms(latency.p99);
    const histogram = latency.histogram || [];
    const box = document.getElementById("latency-chart");
    if (!histogram.some(([, n]) => n > 0)) {
      cp.replace(box, cp.el("p", { class: "muted" }, "No request measured yet."));
    } else {
      let lower = 0;
      const rows = histogram.map(([upper, n]) => {
        const label = upper === null ? `> ${ops.number(lower, 0)}` : `≤ ${ops.number(upper, 1)}`;
        if (upper !== null) lower = upper;
        return { label, values: { n } };
      });
      cp.replace(box, ops.barChart({
        series: [{ key: "n", label: "requests", cls: "series-a" }], rows, unit: "requests",
        label: "latency histogram: requests per latency bucket (ms)", id: "latency-histogram",
      }), cp.el("p", { class: "muted small" }, "Buckets by upper bound in ms."));
    }

    const members = (data.members || []).slice().sort((a, b) => String(a.id).localeCompare(String(b.id)));
    ops.syncRows(document.querySelector("#priority-members tbody"), members, (m) => m.id,
      (m) => JSON.stringify(m),
      (m) => cp.el("tr", { "data-member-id": m.id },
        cp.el("td", { class: "mono" }, m.id || "—"),
        cp.el("td", { class: "num" }, m.pid === null ? "—" : m.pid),
        cp.el("td", { class: "num" }, ops.number(m.buses, 0)),
        cp.el("td", {}, m.realtime ? `real-time ${m.realtime}` : "normal")));
    document.getElementById("priority-no-members").hidden = members.length > 0;
  });
})();
