// Interventions and citizens' requests. Interventions are read every 2 s (filters in the
// URL); the one selected (?intervention=ID) is shown with its timeline. Citizens' requests
// come from the public Open311 list (every 5 s); each links to the intervention dispatch
// made of it. Operators file a request taken on the phone through POST /requests.
"use strict";

(function () {
  const root = document.getElementById("interventions-page");
  if (!root) return;
  const role = root.dataset.role;
  const canOperate = role === "operator" || role === "admin";
  const rowsNode = document.getElementById("intervention-rows");
  const emptyNode = document.getElementById("intervention-empty");
  const summary = document.getElementById("intervention-summary");
  const detail = document.getElementById("intervention-detail");
  const requestRows = document.getElementById("request-rows");
  const requestEmpty = document.getElementById("request-empty");
  const form = document.getElementById("request-form");
  const formError = document.getElementById("request-error");
  const formNotice = document.getElementById("request-notice");
  const MAX_REQUESTS_SHOWN = 200;
  const MISSES = 15;

  let filters = ops.bindFilters(document.getElementById("intervention-filters"), (values) => {
    filters = values;
    list.now();
  });
  let interventions = [];
  const known = new Map(); // request id -> the intervention last seen for it
  let requests = [];
  let selectedId = new URLSearchParams(location.search).get("intervention") || "";
  let detailPoll = null;

  // -- interventions ---------------------------------------------------------------------
  const list = cp.poll(() => cp.withQuery("/interventions", filters), 2000, (data) => {
    interventions = data;
    for (const x of data) if (x.request_id) known.set(String(x.request_id), x);
    renderInterventions();
    renderRequests();
  });

  function renderInterventions() {
    const open = interventions.filter((x) => x.state !== "done" && x.state !== "cancelled").length;
    summary.textContent = `${interventions.length} listed, ${open} open`;
    ops.syncRows(rowsNode, interventions, (x) => x.id, (x) => JSON.stringify([x, x.id === selectedId]), buildIntervention);
    emptyNode.hidden = interventions.length > 0;
  }

  function link(id, text) {
    return cp.el("a", {
      href: `/interventions?intervention=${encodeURIComponent(id)}`, class: "mono",
      "data-action": "select-intervention", "data-intervention-id": id,
      onclick: (event) => { event.preventDefault(); select(id); },
    }, text || id);
  }

  function buildIntervention(x) {
    const equipment = [];
    if (x.equipment) equipment.push(ops.equipmentLink(x.equipment));
    if (x.lamps && x.lamps.length) equipment.push(cp.el("span", { class: "muted small" }, ` lamps ${x.lamps.join(", ")}`));
    const origin = x.request_id
      ? cp.el("span", {}, "request ", cp.el("a", { href: `#request-${x.request_id}`, class: "mono", "data-request-id": x.request_id }, x.request_id))
      : cp.el("span", {}, x.source || "—");
    return cp.el("tr", {
      "data-intervention-id": x.id, "data-state": x.state, "data-request-id": x.request_id || null,
      class: x.id === selectedId ? "selected" : null, "aria-selected": x.id === selectedId ? "true" : null,
    },
      cp.el("td", {}, link(x.id)),
      cp.el("td", {}, cp.el("span", { class: `badge istate istate-${x.state} state` }, x.state)),
      cp.el("td", {}, x.category, cp.el("div", { class: "muted small" }, x.notes || "")),
      cp.el("td", {}, x.municipality),
      cp.el("td", { class: "mono vehicle" }, ops.equipmentLink(x.vehicle)),
      cp.el("td", {}, equipment.length ? equipment : cp.el("span", { class: "muted" }, "—")),
      cp.el("td", {}, origin),
      cp.el("td", {}, ops.ago(x.created_ts)),
      cp.el("td", {}, ops.ago(x.updated_ts)));
  }

  // -- the selected intervention ---------------------------------------------------------
  function select(id) {
    selectedId = id || "";
    ops.setParam("intervention", selectedId);
    if (detailPoll) detailPoll.stop();
    detailPoll = null;
    renderInterventions();
    if (!selectedId) { detail.hidden = true; return; }
    detail.hidden = false;
    document.getElementById("detail-id").textContent = selectedId;
    cp.replace(document.getElementById("detail-fields"), cp.el("dd", { class: "muted" }, "reading…"));
    cp.replace(document.getElementById("detail-timeline"));
    find(selectedId, 0);
    detail.scrollIntoView({ block: "nearest" });
  }

  // The selected intervention, read once, then every 2 s. One just filed may not be
  // published yet: a 404 is asked again every second for a while before it is taken for
  // an intervention the user may not read, or one forgotten.
  function find(id, misses) {
    const path = `/interventions/${encodeURIComponent(id)}`;
    cp.api(path).then((x) => {
      if (id !== selectedId || detailPoll) return;
      renderDetail(x);
      const poll = cp.poll(path, 2000, renderDetail, (error) => {
        if (error.status === 404 && detailPoll === poll) { poll.stop(); detailPoll = null; find(id, 0); }
      });
      detailPoll = poll;
    }, (error) => {
      if (id !== selectedId) return;
      if (error.status === 404 && misses < MISSES) {
        setTimeout(() => { if (id === selectedId && !detailPoll) find(id, misses + 1); }, 1000);
        return;
      }
      cp.replace(document.getElementById("detail-fields"), cp.el("dd", { class: "error" },
        error.status === 404
          ? "No such intervention among those you may read (a closed one is forgotten after a day)."
          : error.message));
    });
  }

  function renderDetail(x) {
    detail.dataset.interventionId = x.id;
    detail.dataset.state = x.state;
    const field = (name, value) => [cp.el("dt", {}, name), cp.el("dd", { "data-field": name }, value)];
    cp.replace(document.getElementById("detail-fields"),
      field("state", cp.el("span", { class: `badge istate istate-${x.state} state` }, x.state)),
      field("category", x.category),
      field("description", x.description || "—"),
      field("municipality", x.municipality),
      field("vehicle", x.vehicle || "—"),
      field("equipment", x.equipment ? `${x.equipment}${x.lamps && x.lamps.length ? ` (lamps ${x.lamps.join(", ")})` : ""}` : "—"),
      field("origin", x.request_id ? `citizen request ${x.request_id}` : (x.source || "—")),
      field("position", x.lat !== null && x.lat !== undefined ? `${ops.number(x.lat, 5)}, ${ops.number(x.lon, 5)}` : "—"),
      field("notes", x.notes || "—"),
      field("opened", ops.ago(x.created_ts)),
      field("assigned", ops.ago(x.assigned_ts)),
      field("changed", ops.ago(x.updated_ts)));
    const steps = Array.isArray(x.timeline) && x.timeline.length ? x.timeline
      : [{ ts: x.created_ts, state: "new", notes: "opened" },
         ...(x.assigned_ts ? [{ ts: x.assigned_ts, state: "assigned", vehicle: x.vehicle }] : []),
         ...(x.updated_ts !== x.created_ts ? [{ ts: x.updated_ts, state: x.state, vehicle: x.vehicle, notes: x.notes }] : [])];
    cp.replace(document.getElementById("detail-timeline"), steps.map((s) =>
      cp.el("li", { "data-state": s.state },
        ops.ago(s.ts), " ", cp.el("span", { class: `badge istate istate-${s.state}` }, s.state),
        s.vehicle ? cp.el("span", { class: "mono" }, ` ${s.vehicle}`) : null,
        s.notes ? cp.el("div", { class: "muted small" }, s.notes) : null)));
  }

  document.getElementById("detail-close").addEventListener("click", () => select(""));
  if (selectedId) select(selectedId);

  // -- citizens' requests (Open311) ------------------------------------------------------
  cp.poll("/open311/v2/requests.json", 5000, (data) => {
    requests = Array.isArray(data) ? data : [];
    renderRequests();
  });

  function renderRequests() {
    const shown = requests.slice(0, MAX_REQUESTS_SHOWN);
    ops.syncRows(requestRows, shown, (r) => r.service_request_id,
      (r) => JSON.stringify([r, interventionOf(r)]), buildRequest);
    requestEmpty.hidden = shown.length > 0;
  }

  // The intervention dispatch made of a request: the one that names it, as last seen
  // (dispatch names it after the request, int-{request id}, which stands in until then).
  function interventionOf(r) {
    const x = known.get(String(r.service_request_id));
    return x ? { id: x.id, state: x.state } : { id: `int-${r.service_request_id}`, state: null };
  }

  function buildRequest(r) {
    const x = interventionOf(r);
    const where = r.address || (r.lat !== null && r.lat !== undefined ? `${ops.number(r.lat, 5)}, ${ops.number(r.long, 5)}` : "—");
    const requested = r.requested_datetime ? Date.parse(r.requested_datetime) / 1000 : null;
    return cp.el("tr", { id: `request-${r.service_request_id}`, "data-request-id": r.service_request_id, "data-status": r.status },
      cp.el("td", { class: "mono" }, r.service_request_id),
      cp.el("td", {}, cp.el("span", { class: `badge status-${r.status}` }, r.status),
        r.status_notes ? cp.el("div", { class: "muted small" }, r.status_notes) : null),
      cp.el("td", {}, r.service_name || r.service_code),
      cp.el("td", { class: "small" }, r.description || ""),
      cp.el("td", { class: "small" }, where),
      cp.el("td", {}, ops.ago(requested)),
      cp.el("td", {}, link(x.id), x.state ? cp.el("span", { class: `badge istate istate-${x.state}` }, x.state) : null));
  }

  // -- the call desk ---------------------------------------------------------------------
  // Municipalities the user reads (the crisis rows name every one), for both selects.
  cp.api("/crisis").then((rows) => {
    const filtersForm = document.getElementById("intervention-filters");
    if (ops.fillOptions(filtersForm.elements.municipality, Object.keys(rows))) {
      filters = ops.filterValues(filtersForm);
      list.now();
    }
    for (const slug of Object.keys(rows)) {
      form.elements.municipality.append(cp.el("option", { value: slug }, slug));
    }
  }).catch(() => {});

  if (canOperate) {
    document.getElementById("call-desk").hidden = false;
    cp.api("/open311/v2/services.json").then((services) => {
      const menu = document.getElementById("request-category");
      for (const s of services) menu.append(cp.el("option", { value: s.service_code }, `${s.service_name} (${s.service_code})`));
    }).catch((error) => ops.showError(formError, error));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    ops.showError(formError, null);
    formNotice.textContent = "";
    for (const field of form.elements) field.removeAttribute("aria-invalid");
    const body = {
      category: form.elements.category.value,
      description: form.elements.description.value.trim(),
      lat: Number(form.elements.lat.value),
      lon: Number(form.elements.lon.value),
    };
    if (form.elements.municipality.value) body.municipality = form.elements.municipality.value;
    const submit = document.getElementById("request-submit");
    submit.disabled = true;
    try {
      const answer = await cp.post("/requests", body);
      formNotice.replaceChildren(`Request ${answer.request_id} filed: intervention `,
        link(answer.intervention_id), ".");
      form.elements.description.value = "";
      known.set(String(answer.request_id), { id: answer.intervention_id, state: "new" });
      list.now();
      select(answer.intervention_id);
    } catch (error) {
      ops.showError(formError, error);
      const field = error.field && form.elements[error.field];
      if (field && field.setAttribute) { field.setAttribute("aria-invalid", "true"); field.focus(); }
    } finally {
      submit.disabled = false;
    }
  });
})();
