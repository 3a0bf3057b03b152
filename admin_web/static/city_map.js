// The overview's city map: the municipalities' areas and the equipment in them, from
// GET /api/v1/city, polled every few seconds (an unchanged map costs a 304).
//
// Longitude and latitude are projected equirectangularly, longitudes scaled by the
// cosine of the map's middle latitude: over a metropolis some 20 km across this is
// within a fraction of a pixel of a conformal projection. Each municipality is a link
// to the equipment list filtered on it; each dot (an SVG circle, red in alarm, grey
// offline, green online) a link to its equipment's page.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 1000;
  const MARGIN = 12;
  const REFRESH_MS = 3000;

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // The projection of a bbox [west, south, east, north] onto the map's viewBox.
  function projection(bbox) {
    const [west, south, east, north] = bbox;
    const k = Math.cos(((south + north) / 2) * Math.PI / 180);
    const spanX = Math.max((east - west) * k, 1e-9);
    const spanY = Math.max(north - south, 1e-9);
    const scale = (WIDTH - 2 * MARGIN) / spanX;
    const height = Math.round(spanY * scale + 2 * MARGIN);
    return {
      height,
      x: (lon) => MARGIN + (lon - west) * k * scale,
      y: (lat) => MARGIN + (north - lat) * scale,
    };
  }

  function ringPath(ring, proj) {
    return ring.map(([lon, lat], i) =>
      `${i ? "L" : "M"}${proj.x(lon).toFixed(1)},${proj.y(lat).toFixed(1)}`).join("") + "Z";
  }

  function summary(name, c) {
    return `${name}: ${c.total} equipment, ${c.online} online, ${c.offline} offline, ${c.in_alarm} in alarm`;
  }

  function kindsText(c) {
    return Object.entries(c.kinds || {}).sort()
      .map(([kind, k]) => `${kind} ${k.total} (${k.online} online, ${k.in_alarm} in alarm)`)
      .join("\n");
  }

  function listHref(slug) {
    return cp.withQuery("/equipment", { municipality: slug });
  }

  function start() {
    const map = document.getElementById("city-map");
    if (!map) return;
    const rows = document.getElementById("city-rows");
    let shape = null; // what the drawing was made for: municipalities and dots
    const dots = new Map(); // entity id -> circle
    const areas = new Map(); // slug -> {path, tip, link, sub, name}
    let alarmLayer = null;
    let quietLayer = null;

    function draw(city) {
      const title = map.querySelector("title");
      cp.replace(map, title);
      dots.clear();
      areas.clear();
      if (!city.bbox) {
        map.append(svg("text", { x: WIDTH / 2, y: 60, class: "label" },
          "No municipality to show."));
        return;
      }
      const proj = projection(city.bbox);
      map.setAttribute("viewBox", `0 0 ${WIDTH} ${proj.height}`);
      const areaLayer = svg("g", { class: "areas" });
      const dotLayer = svg("g", { class: "dots" });
      const labelLayer = svg("g", { class: "labels" });
      // Equipment in alarm above the names, the rest below them.
      alarmLayer = svg("g", { class: "dots dots-alarm" });
      quietLayer = dotLayer;
      for (const m of city.municipalities) {
        const link = svg("a", { href: listHref(m.slug), "data-municipality": m.slug,
                                "aria-label": summary(m.name, m.counts) });
        const tip = svg("title", {}, summary(m.name, m.counts));
        link.append(tip);
        let path = null;
        if (m.polygon) {
          path = svg("path", { class: "area", d: m.polygon.map((r) => ringPath(r, proj)).join(""),
                               "fill-rule": "evenodd" });
          link.append(path);
        }
        areaLayer.append(link);
        let sub = null;
        if (m.centre) {
          const [lon, lat] = m.centre;
          sub = svg("tspan", { x: proj.x(lon).toFixed(1), dy: "1.15em", class: "sub" });
          labelLayer.append(svg("text", { class: "label", x: proj.x(lon).toFixed(1),
                                          y: proj.y(lat).toFixed(1) },
            svg("tspan", {}, m.name), sub));
        }
        areas.set(m.slug, { path, tip, link, sub, name: m.name });
        for (const d of m.equipment) {
          const circle = svg("circle", { cx: proj.x(d.lon).toFixed(1), cy: proj.y(d.lat).toFixed(1),
                                         r: 3.2, class: d.state, "data-entity-id": d.id,
                                         "data-state": d.state });
          const dotTip = svg("title", {}, `${d.id} (${d.kind}): ${d.state}`);
          circle.append(dotTip);
          const link = svg("a", { href: `/equipment/${encodeURIComponent(d.id)}`,
                                  "aria-label": `${d.id}, ${d.kind}, ${d.state}` }, circle);
          dots.set(d.id, { circle, tip: dotTip, link, state: d.state });
        }
      }
      for (const d of dots.values()) (d.state === "alarm" ? alarmLayer : dotLayer).append(d.link);
      map.append(areaLayer, dotLayer, labelLayer, alarmLayer);
    }

    function update(city) {
      for (const m of city.municipalities) {
        const area = areas.get(m.slug);
        if (!area) continue;
        const c = m.counts;
        area.tip.textContent = summary(m.name, c) + (c.total ? "\n" + kindsText(c) : "");
        area.link.setAttribute("aria-label", summary(m.name, c));
        if (area.path && area.path.classList.contains("has-alarm") !== c.in_alarm > 0) {
          area.path.classList.toggle("has-alarm", c.in_alarm > 0);
          // Its red outline above its neighbours' grey ones.
          if (c.in_alarm > 0) area.link.parentNode.append(area.link);
        }
        if (area.sub) {
          area.sub.textContent = c.in_alarm ? `${c.total} · ${c.in_alarm} in alarm` : `${c.total}`;
          area.sub.setAttribute("class", c.in_alarm ? "sub sub-alarm" : "sub");
        }
        for (const d of m.equipment) {
          const dot = dots.get(d.id);
          if (!dot || dot.circle.dataset.state === d.state) continue;
          dot.circle.setAttribute("class", d.state);
          dot.circle.dataset.state = d.state;
          dot.tip.textContent = `${d.id} (${d.kind}): ${d.state}`;
          dot.link.setAttribute("aria-label", `${d.id}, ${d.kind}, ${d.state}`);
          (d.state === "alarm" ? alarmLayer : quietLayer).append(dot.link);
        }
      }
    }

    function table(city) {
      const out = city.municipalities.map((m) => {
        const c = m.counts;
        return cp.el("tr", { "data-municipality": m.slug, title: kindsText(c) },
          cp.el("td", {}, cp.el("a", { href: listHref(m.slug) }, m.name)),
          cp.el("td", { class: "num count-total" }, c.total),
          cp.el("td", { class: "num count-online" }, c.online),
          cp.el("td", { class: "num count-offline" }, c.offline),
          cp.el("td", { class: c.in_alarm ? "num count-alarm in-alarm" : "num count-alarm" },
            c.in_alarm));
      });
      if (!out.length) {
        out.push(cp.el("tr", {}, cp.el("td", { colspan: 5, class: "muted" },
          "No municipality you may read.")));
      }
      cp.replace(rows, out);
      const t = city.totals;
      for (const [id, value] of [["city-total", t.total], ["city-online", t.online],
                                 ["city-offline", t.offline], ["city-in-alarm", t.in_alarm]]) {
        document.getElementById(id).textContent = value;
      }
    }

    cp.poll("/city", REFRESH_MS, (city) => {
      const next = JSON.stringify([city.bbox, city.municipalities.map(
        (m) => [m.slug, m.equipment.map((d) => d.id)])]);
      if (next !== shape) {
        draw(city);
        shape = next;
      }
      update(city);
      table(city);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
