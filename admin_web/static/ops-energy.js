// The energy report (GET /energy, step night): savings and metered energy per night for
// the metropolis or one municipality, and per municipality over the same nights, drawn
// as bars and listed. The range ends at the city's "now", which the API's default range
// (the last day) tells; a report is read on load and on Refresh, not polled.
"use strict";

(function () {
  const root = document.getElementById("energy-page");
  if (!root) return;
  const filtersForm = document.getElementById("energy-filters");
  const errorBox = document.getElementById("energy-error");
  const SAVINGS = [
    { key: "dimming", label: "dimming saving", cls: "series-a" },
    { key: "legacy", label: "legacy saving", cls: "series-b" },
  ];
  const ENERGY = [
    { key: "metered", label: "metered", cls: "series-c" },
    { key: "dimming", label: "dimming baseline", cls: "series-a" },
    { key: "legacy", label: "legacy baseline", cls: "series-b" },
  ];
  const PARALLEL = 4;
  let municipalities = [];
  let filters = ops.bindFilters(filtersForm, (values) => { filters = values; load(); });
  let generation = 0;

  const kwh = (wh) => ops.number(wh / 1000, 2);
  const pct = (v) => (v === null || v === undefined ? "—" : `${ops.number(v, 1)} %`);

  cp.api("/crisis").then((rows) => {
    municipalities = Object.keys(rows);
    ops.fillOptions(document.getElementById("energy-municipality"), municipalities);
    filters = ops.filterValues(filtersForm);
    load();
  }).catch((error) => { ops.showError(errorBox, error); load(); });

  async function load() {
    const mine = ++generation;
    ops.showError(errorBox, null);
    const nights = Math.min(62, Math.max(1, Math.round(Number(filters.nights) || 7)));
    try {
      const latest = await cp.api("/energy?step=night");
      const to = latest.to;
      const from = to - nights * 86400;
      const scope = filters.municipality ? { scope: "municipality", id: filters.municipality } : { scope: "metropolis" };
      const report = await cp.api(cp.withQuery("/energy", { ...scope, step: "night", from, to }));
      if (mine !== generation) return;
      document.getElementById("energy-range").textContent =
        `${nights} night${nights > 1 ? "s" : ""} to ${cp.time(to)} · ${report.circuits} circuits, ${report.lamps} lamps`;
      document.getElementById("energy-scope-name").textContent = filters.municipality || "the metropolis";
      renderNights(report);
      const perTown = await mapLimited(municipalities, PARALLEL, (m) =>
        cp.api(cp.withQuery("/energy", { scope: "municipality", id: m, step: "night", from, to }))
          .then((r) => ({ slug: m, report: r }), (error) => ({ slug: m, error })));
      if (mine !== generation) return;
      renderMunicipalities(perTown);
    } catch (error) {
      if (mine === generation) ops.showError(errorBox, error);
    }
  }

  async function mapLimited(items, limit, fn) {
    const out = new Array(items.length);
    let next = 0;
    async function worker() {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]);
      }
    }
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
    return out;
  }

  // A chart, or a line saying why there is none (no step, or nothing lit in them).
  function chartOr(box, rows, chart) {
    const drawn = rows.some((r) => Object.values(r.values).some((v) => v !== null && v !== undefined && v !== 0));
    if (drawn) cp.replace(box, ...chart());
    else cp.replace(box, cp.el("p", { class: "muted" }, "Nothing metered at night in this range yet."));
  }

  function renderNights(report) {
    const steps = report.steps || [];
    const label = (s) => s.night || cp.time(s.start);
    const savingRows = steps.map((s) => ({ label: label(s), values: { dimming: s.dimming_saving_pct, legacy: s.legacy_saving_pct } }));
    const energyRows = steps.map((s) => ({ label: label(s), values: {
      metered: s.metered_wh / 1000, dimming: s.dimming_baseline_wh / 1000, legacy: s.legacy_baseline_wh / 1000 } }));
    chartOr(document.getElementById("energy-night-savings"), savingRows, () => [
      ops.barChart({ series: SAVINGS, unit: "%", label: "savings per night, percent", rows: savingRows, id: "energy-night-chart" }),
      ops.legend(SAVINGS)]);
    chartOr(document.getElementById("energy-night-wh"), energyRows, () => [
      ops.barChart({ series: ENERGY, unit: "kWh", label: "metered energy and baselines per night, kWh", rows: energyRows }),
      ops.legend(ENERGY)]);
    const row = (name, s, attrs) => cp.el("tr", attrs,
      cp.el("th", { scope: "row" }, name),
      cp.el("td", { class: "num" }, kwh(s.metered_wh)),
      cp.el("td", { class: "num" }, kwh(s.dimming_baseline_wh)),
      cp.el("td", { class: "num" }, kwh(s.legacy_baseline_wh)),
      cp.el("td", { class: "num" }, pct(s.dimming_saving_pct)),
      cp.el("td", { class: "num" }, pct(s.legacy_saving_pct)),
      cp.el("td", { class: "num" }, s.counter_resets));
    cp.replace(document.querySelector("#energy-nights tbody"),
      steps.length ? steps.map((s) => row(label(s), s, { "data-night": s.night || "" }))
        : cp.el("tr", {}, cp.el("td", { colspan: 7, class: "muted" }, "No metered night in this range.")));
    cp.replace(document.querySelector("#energy-nights tfoot"), row("Total", report.total, { class: "total" }));
  }

  function renderMunicipalities(perTown) {
    const ok = perTown.filter((x) => x.report && x.report.circuits > 0);
    const rows = ok.map((x) => ({ label: x.slug, values: { dimming: x.report.total.dimming_saving_pct, legacy: x.report.total.legacy_saving_pct } }));
    chartOr(document.getElementById("energy-muni-savings"), rows, () => [
      ops.barChart({ series: SAVINGS, unit: "%", label: "savings per municipality, percent", rows, id: "energy-municipality-chart" }),
      ops.legend(SAVINGS)]);
    cp.replace(document.querySelector("#energy-municipalities tbody"), perTown.map((x) => {
      if (x.error) {
        return cp.el("tr", { "data-municipality": x.slug }, cp.el("th", { scope: "row" }, x.slug),
          cp.el("td", { colspan: 7, class: "error" }, x.error.message));
      }
      const t = x.report.total;
      return cp.el("tr", { "data-municipality": x.slug },
        cp.el("th", { scope: "row" }, x.slug),
        cp.el("td", { class: "num" }, x.report.circuits),
        cp.el("td", { class: "num" }, x.report.lamps),
        cp.el("td", { class: "num" }, kwh(t.metered_wh)),
        cp.el("td", { class: "num" }, kwh(t.dimming_baseline_wh)),
        cp.el("td", { class: "num" }, kwh(t.legacy_baseline_wh)),
        cp.el("td", { class: "num" }, pct(t.dimming_saving_pct)),
        cp.el("td", { class: "num" }, pct(t.legacy_saving_pct)));
    }));
  }
})();
