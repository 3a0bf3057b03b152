// What the operators' pages share, on top of cp (app.js): keyed table rows, live ages,
// filters kept in the URL, error messages next to forms, and SVG bar charts.
//
//   ops.syncRows(tbody, alarms, (a) => a.id, (a) => JSON.stringify(a), buildRow)
//   ops.ago(ts)                     -> <time> showing "12 s ago", the exact time as its title
//   ops.bindFilters(form, onChange) -> the form's fields mirrored in the page's query string
//   ops.barChart({series, rows, unit, label}) -> an <svg> of grouped bars
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";

  // An SVG element: attributes set as given (presentation attributes, never style).
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Rows of ``tbody`` made to match ``items`` in order: a row whose item is unchanged
  // (same signature) is kept as it is, focus and all; nodes move only when the order
  // changed. ``build(item)`` makes a row; its key is stored in data-key.
  function syncRows(tbody, items, keyOf, signatureOf, build) {
    const existing = new Map();
    for (const row of Array.from(tbody.children)) {
      if (row.dataset.key !== undefined) existing.set(row.dataset.key, row);
      else row.remove();
    }
    const wanted = [];
    for (const item of items) {
      const key = String(keyOf(item));
      const signature = signatureOf(item);
      let row = existing.get(key);
      if (!row || row.dataset.signature !== signature) {
        const fresh = build(item);
        fresh.dataset.key = key;
        fresh.dataset.signature = signature;
        if (row) row.replaceWith(fresh);
        row = fresh;
      }
      existing.delete(key);
      wanted.push(row);
    }
    for (const gone of existing.values()) gone.remove();
    wanted.forEach((row, i) => {
      if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] || null);
    });
    return wanted;
  }

  // A <time> showing how long ago ``ts`` was, refreshed every second by refreshAges().
  function ago(ts) {
    if (ts === null || ts === undefined) return cp.el("span", { class: "muted" }, "—");
    const iso = new Date(ts * 1000).toISOString();
    return cp.el("time", { datetime: iso, title: cp.time(ts), "data-ts": ts }, cp.age(ts));
  }

  function refreshAges() {
    for (const node of document.querySelectorAll("time[data-ts]")) {
      const text = cp.age(Number(node.dataset.ts));
      if (node.textContent !== text) node.textContent = text;
    }
  }
  setInterval(refreshAges, 1000);

  // The API's refusal shown in ``box`` (its message, and the field it names), or cleared.
  function showError(box, error) {
    if (!box) return;
    if (!error) { box.hidden = true; box.textContent = ""; return; }
    let text = error.message || String(error);
    if (error.status) text = `${error.status}: ${text}`;
    if (error.field) text += ` (field ${error.field})`;
    box.textContent = text;
    box.hidden = false;
  }

  // The form's named fields <-> the page's query string. Fields start from the URL; each
  // change rewrites the URL (no reload, no history entry) and calls onChange.
  function bindFilters(form, onChange) {
    const params = new URLSearchParams(location.search);
    for (const field of form.elements) {
      if (!field.name || !params.has(field.name)) continue;
      if (field.type === "checkbox") field.checked = params.get(field.name) === "1";
      else field.value = params.get(field.name);
    }
    const changed = () => {
      const next = new URLSearchParams(location.search);
      for (const [name, value] of Object.entries(filterValues(form))) {
        if (value === "") next.delete(name); else next.set(name, value);
      }
      const query = next.toString();
      history.replaceState(null, "", query ? `${location.pathname}?${query}` : location.pathname);
      onChange(filterValues(form));
    };
    form.addEventListener("change", changed);
    form.addEventListener("submit", (event) => { event.preventDefault(); changed(); });
    return filterValues(form);
  }

  function filterValues(form) {
    const out = {};
    for (const field of form.elements) {
      if (!field.name) continue;
      out[field.name] = field.type === "checkbox" ? (field.checked ? "1" : "") : field.value.trim();
    }
    return out;
  }

  // Options added to ``select`` (values, or [value, label] pairs), and the value the page's
  // URL gives its name chosen again (it could not be before its option existed).
  // Whether that changed the select's value.
  function fillOptions(select, values) {
    const before = select.value;
    for (const v of values) {
      const [value, label] = Array.isArray(v) ? v : [v, v];
      select.append(cp.el("option", { value }, label));
    }
    const wanted = new URLSearchParams(location.search).get(select.name);
    if (wanted !== null && Array.from(select.options).some((o) => o.value === wanted)) select.value = wanted;
    return select.value !== before;
  }

  // An equipment id as a link to its page (/equipment/ID).
  const KINDS = new Set(["crossroad", "lighting_circuit", "building", "camera", "vehicle", "access_terminal"]);
  function equipmentLink(id, kind) {
    if (!id) return cp.el("span", { class: "muted" }, "—");
    if (kind !== undefined && !KINDS.has(kind)) return cp.el("span", { class: "mono" }, id);
    return cp.el("a", { class: "mono", href: `/equipment/${encodeURIComponent(id)}` }, id);
  }

  // Set one query parameter of the page's URL (empty: removed), without a reload.
  function setParam(name, value) {
    const next = new URLSearchParams(location.search);
    if (value === "" || value === null || value === undefined) next.delete(name); else next.set(name, value);
    const query = next.toString();
    history.replaceState(null, "", query ? `${location.pathname}?${query}` : location.pathname);
  }

  function number(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
  }

  // Grouped bars: one group per row, one bar per series. rows: [{label, values: {key: n}}];
  // series: [{key, label, cls}]. Values may be null (no bar, "—" in the tooltip).
  function barChart({ series, rows, unit, label, id, height = 220, minGroup = 28 }) {
    // Room for the labels, written at -35°: their length sets the bottom margin and, for
    // the first one, the left one.
    const longest = Math.max(4, ...rows.map((r) => String(r.label).length));
    const padLeft = Math.max(52, Math.round(longest * 4.6)), padTop = 12, padRight = 8;
    const padBottom = Math.min(130, 18 + Math.round(longest * 3.6));
    height += padBottom - 46;
    const groupWidth = Math.max(minGroup, series.length * 12 + 10);
    const width = padLeft + padRight + Math.max(1, rows.length) * groupWidth;
    const values = rows.flatMap((r) => series.map((s) => r.values[s.key])).filter((v) => v !== null && v !== undefined);
    const top = niceMax(Math.max(0, ...values));
    const bottom = Math.min(0, ...values);
    const range = top - bottom || 1;
    const plotH = height - padTop - padBottom;
    const y = (v) => padTop + plotH * (top - v) / range;
    const chart = svg("svg", {
      class: "chart", id, width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": label,
    });
    chart.append(svg("title", {}, label));
    for (let i = 0; i <= 4; i++) {
      const v = bottom + range * i / 4;
      chart.append(
        svg("line", { class: "grid", x1: padLeft, x2: width - padRight, y1: y(v), y2: y(v) }),
        svg("text", { class: "tick", x: padLeft - 4, y: y(v) + 4, "text-anchor": "end" }, number(v, 2)));
    }
    chart.append(svg("text", { class: "unit", x: 4, y: padTop - 2 }, unit || ""));
    rows.forEach((row, i) => {
      const x0 = padLeft + i * groupWidth + 4;
      const barW = (groupWidth - 8) / series.length;
      series.forEach((s, j) => {
        const v = row.values[s.key];
        if (v === null || v === undefined) return;
        const y1 = y(Math.max(v, 0)), y2 = y(Math.min(v, 0));
        chart.append(svg("rect", {
          class: `bar ${s.cls || ""}`, x: x0 + j * barW, y: y1, width: Math.max(1, barW - 1),
          height: Math.max(0.5, y2 - y1), "data-series": s.key, "data-label": row.label, "data-value": v,
        }, svg("title", {}, `${row.label} · ${s.label}: ${number(v, 2)} ${unit || ""}`)));
      });
      const tx = x0 + (groupWidth - 8) / 2;
      chart.append(svg("text", {
        class: "tick", x: tx, y: height - padBottom + 14, "text-anchor": "end",
        transform: `rotate(-35 ${tx} ${height - padBottom + 14})`,
      }, row.label));
    });
    chart.append(svg("line", { class: "axis", x1: padLeft, x2: width - padRight, y1: y(0), y2: y(0) }));
    return chart;
  }

  function legend(series) {
    return cp.el("ul", { class: "legend" }, series.map((s) =>
      cp.el("li", {}, cp.el("span", { class: `swatch ${s.cls || ""}`, "aria-hidden": "true" }), s.label)));
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  window.ops = { svg, syncRows, ago, refreshAges, showError, bindFilters, filterValues, fillOptions, setParam, equipmentLink,
                 number, barChart, legend };
})();
