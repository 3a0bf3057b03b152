// The alarm list: ISA-18.2 states, read every second, acted on through the API.
//
// The filters (priority, municipality, state, source) live in the URL. Without a state
// the API lists what needs an operator's eye; flood summaries (condition flood_summary)
// and incidents that grouped others expand in place to their children (?group=ID).
// The counts at the top are the unacknowledged alarms of that default list by priority.
"use strict";

(function () {
  const root = document.getElementById("alarms-page");
  if (!root) return;
  const role = root.dataset.role;
  const canOperate = role === "operator" || role === "admin";
  const isAdmin = role === "admin";
  const rows = document.getElementById("alarm-rows");
  const empty = document.getElementById("alarm-empty");
  const errorBox = document.getElementById("alarm-error");
  const notice = document.getElementById("alarm-notice");
  const ackSelected = document.getElementById("ack-selected");
  const selectAll = document.getElementById("select-all");
  const filtersForm = document.getElementById("alarm-filters");
  const dialog = document.getElementById("shelve-dialog");
  const shelveForm = document.getElementById("shelve-form");
  const shelveError = document.getElementById("shelve-error");

  const STATE_LABELS = {
    unacknowledged: "unacknowledged",
    acknowledged: "acknowledged",
    rtn_unacknowledged: "returned to normal, unacknowledged",
    shelved: "shelved",
    suppressed: "suppressed by design",
    out_of_service: "out of service",
    normal: "normal",
  };
  const NEEDS_ACK = new Set(["unacknowledged", "rtn_unacknowledged"]);
  const DEFAULT_PATH = "/alarms";

  let filters = ops.bindFilters(filtersForm, (values) => { filters = values; restartList(); });
  let list = [];
  const selected = new Set();
  const expanded = new Map(); // summary id -> {poll, children}
  // Alarm id -> {state, until}: an action was sent while it was in that state; its buttons
  // wait until the state changes (or PENDING_MS pass: the coordinator may have refused it).
  const pending = new Map();
  const PENDING_MS = 10000;

  ackSelected.hidden = !canOperate;
  selectAll.disabled = !canOperate;

  function listPath() {
    return cp.withQuery("/alarms", {
      priority: filters.priority, municipality: filters.municipality, state: filters.state,
      source: filters.source,
    });
  }

  // -- reading ---------------------------------------------------------------------------
  const counts = cp.poll(DEFAULT_PATH, 1000, (data) => {
    renderCounts(data);
    if (listPath() === DEFAULT_PATH) { list = data; render(); }
  }, showPollError);
  let listPoll = null;

  function restartList() {
    if (listPoll) listPoll.stop();
    listPoll = null;
    if (listPath() === DEFAULT_PATH) counts.now();
    else listPoll = cp.poll(listPath, 1000, (data) => { list = data; render(); }, showPollError);
  }
  restartList();

  function showPollError(error) {
    if (error && error.status && error.status !== 401) ops.showError(errorBox, error);
  }

  // The municipalities the user reads: those of the crisis rows (one per municipality).
  cp.api("/crisis").then((rows) => {
    if (ops.fillOptions(document.getElementById("alarm-municipality"), Object.keys(rows))) {
      filters = ops.filterValues(filtersForm);
      restartList();
    }
  }).catch(() => {});

  function renderCounts(data) {
    const tally = { critical: 0, high: 0, medium: 0, low: 0 };
    for (const a of data) if (NEEDS_ACK.has(a.state) && a.priority in tally) tally[a.priority] += 1;
    for (const node of document.querySelectorAll("#alarm-counts .count")) {
      node.querySelector(".n").textContent = tally[node.dataset.priority];
      node.classList.toggle("zero", tally[node.dataset.priority] === 0);
    }
  }

  // -- the table -------------------------------------------------------------------------
  function render() {
    // A summary gone from the list (back to normal, filtered out) is closed.
    for (const [id, entry] of Array.from(expanded)) {
      if (!list.some((a) => a.id === id)) { entry.poll.stop(); expanded.delete(id); }
    }
    const flat = [];
    for (const alarm of list) {
      flat.push({ alarm, child: false });
      const open = expanded.get(alarm.id);
      if (open && open.children) {
        for (const c of open.children) if (c.id !== alarm.id) flat.push({ alarm: c, child: true, parent: alarm.id });
      }
    }
    for (const [id, sent] of Array.from(pending)) {
      const now = flat.find((f) => f.alarm.id === id);
      if (!now || now.alarm.state !== sent.state || Date.now() > sent.until) pending.delete(id);
    }
    ops.syncRows(rows, flat, (f) => (f.child ? `${f.parent}/${f.alarm.id}` : f.alarm.id),
      (f) => JSON.stringify([f.alarm, f.child, expanded.has(f.alarm.id), pending.has(f.alarm.id)]), buildRow);
    empty.hidden = flat.length > 0;
    for (const id of Array.from(selected)) {
      if (!flat.some((f) => f.alarm.id === id && NEEDS_ACK.has(f.alarm.state))) selected.delete(id);
    }
    syncSelection();
  }

  function isGroup(alarm) {
    return alarm.condition === "flood_summary" || (alarm.count || 0) > 1;
  }

  function buildRow(f) {
    const a = f.alarm;
    const classes = [`prio-${a.priority}`, `state-${a.state}`];
    if (a.escalated) classes.push("escalated");
    if (f.child) classes.push("child");
    if (a.condition === "flood_summary") classes.push("summary");
    if (pending.has(a.id)) classes.push("pending");
    const ackable = canOperate && NEEDS_ACK.has(a.state);
    const box = cp.el("input", {
      type: "checkbox", class: "select", "aria-label": `select ${a.id}`, disabled: !ackable,
      checked: ackable && selected.has(a.id),
      onchange: (e) => { if (e.target.checked) selected.add(a.id); else selected.delete(a.id); syncSelection(); },
    });
    let condition = cp.el("span", { class: "condition" }, a.condition);
    if (isGroup(a) && !f.child) {
      const open = expanded.has(a.id);
      condition = cp.el("span", { class: "condition" },
        cp.el("button", {
          type: "button", class: "expand", "data-action": "expand", "aria-expanded": open ? "true" : "false",
          "aria-label": `${open ? "collapse" : "expand"} the ${a.count} alarms of ${a.id}`,
          onclick: () => toggle(a.id),
        }, open ? "▾" : "▸"),
        " ", a.condition, " ", cp.el("span", { class: "group-count", title: "alarms grouped" }, `×${a.count}`));
    }
    const message = [cp.el("span", {}, a.message || "")];
    if (Array.isArray(a.steps) && a.steps.length) {
      message.push(cp.el("details", { class: "steps" },
        cp.el("summary", {}, `${a.steps.length} plan step${a.steps.length > 1 ? "s" : ""}`),
        cp.el("ol", {}, a.steps.map((s) => cp.el("li", { class: `step-${s.state}` },
          `${s.step}: ${s.state}${s.detail ? ` — ${s.detail}` : ""}`)))));
    }
    if (a.state === "shelved") {
      message.push(cp.el("div", { class: "muted small" },
        `shelved by ${a.shelved_by || "?"} until ${cp.time(a.shelved_until)}`,
        a.shelve_reason ? ` — ${a.shelve_reason}` : ""));
    }
    if (a.state === "suppressed" && a.suppressed_by) {
      message.push(cp.el("div", { class: "muted small" }, `suppressed by ${a.suppressed_by}`));
    }
    const priority = cp.el("td", {}, cp.el("span", { class: `badge prio-${a.priority}` }, a.priority));
    if (a.escalated) {
      priority.append(" ", cp.el("span", { class: "badge escalated-badge", title: "unacknowledged past its escalation delay at critical" }, "escalated"));
    }
    return cp.el("tr", {
      class: classes.join(" "), "data-alarm-id": a.id, "data-state": a.state,
      "data-priority": a.priority, "data-parent": f.child ? f.parent : null,
      "data-escalated": a.escalated ? "true" : null,
    },
      cp.el("td", {}, box),
      priority,
      cp.el("td", {}, cp.el("span", { class: `state state-${a.state}`, "data-state": a.state, title: STATE_LABELS[a.state] || a.state }, a.state)),
      cp.el("td", { class: "mono" }, ops.equipmentLink(a.source, a.kind || "")),
      cp.el("td", {}, condition),
      cp.el("td", {}, a.municipality === "*" ? (a.municipalities || []).join(", ") : a.municipality),
      cp.el("td", { class: "message" }, message),
      cp.el("td", {}, ops.ago(a.raised_ts)),
      cp.el("td", {}, a.acked_by ? [a.acked_by, " ", ops.ago(a.acked_ts)] : cp.el("span", { class: "muted" }, "—")),
      cp.el("td", { class: "actions" }, actions(a)));
  }

  function actions(a) {
    if (!canOperate) return [];
    const out = [];
    const button = (action, label, handler, title) => cp.el("button", {
      type: "button", "data-action": action, title, disabled: pending.has(a.id),
      "aria-label": `${label} ${a.id}`, onclick: handler,
    }, label);
    if (NEEDS_ACK.has(a.state)) out.push(button("ack", "Ack", () => act([a.id], "ack")));
    if (a.state === "shelved") out.push(button("unshelve", "Unshelve", () => act([a.id], "unshelve")));
    else if (a.state !== "out_of_service") out.push(button("shelve", "Shelve", () => openShelve(a.id)));
    if (isAdmin) {
      if (a.state === "out_of_service") out.push(button("return-to-service", "Return to service", () => act([a.id], "return-to-service")));
      else out.push(button("out-of-service", "Out of service", () => act([a.id], "out-of-service"),
        "stop annunciating this alarm until it is returned to service"));
    }
    return out;
  }

  function toggle(id) {
    const open = expanded.get(id);
    if (open) {
      open.poll.stop();
      expanded.delete(id);
      render();
      return;
    }
    const entry = { children: null, poll: null };
    expanded.set(id, entry);
    entry.poll = cp.poll(cp.withQuery("/alarms", { group: id }), 2000, (children) => {
      entry.children = children;
      render();
    }, showPollError);
    render();
  }

  function syncSelection() {
    ackSelected.disabled = selected.size === 0;
    ackSelected.textContent = selected.size ? `Acknowledge selected (${selected.size})` : "Acknowledge selected";
    const ackable = Array.from(rows.querySelectorAll("input.select:not(:disabled)"));
    selectAll.checked = ackable.length > 0 && ackable.every((b) => b.checked);
  }

  selectAll.addEventListener("change", () => {
    for (const box of rows.querySelectorAll("input.select:not(:disabled)")) {
      box.checked = selectAll.checked;
      const id = box.closest("tr").dataset.alarmId;
      if (box.checked) selected.add(id); else selected.delete(id);
    }
    syncSelection();
  });
  ackSelected.addEventListener("click", () => act(Array.from(selected), "ack"));

  // -- acting ----------------------------------------------------------------------------
  async function act(ids, action, body) {
    ops.showError(errorBox, null);
    const failures = [];
    for (const id of ids) {
      try {
        await cp.post(`/alarms/${encodeURIComponent(id)}/${action}`, body || {});
        const known = list.find((a) => a.id === id)
          || Array.from(expanded.values()).flatMap((e) => e.children || []).find((a) => a.id === id);
        if (known) pending.set(id, { state: known.state, until: Date.now() + PENDING_MS });
        if (action === "ack") selected.delete(id);
      } catch (error) {
        failures.push([id, error]);
      }
    }
    const done = ids.length - failures.length;
    notice.textContent = done ? `${action.replace(/-/g, " ")} sent for ${done} alarm${done > 1 ? "s" : ""}` : "";
    if (failures.length) {
      const [id, error] = failures[0];
      const more = failures.length > 1 ? ` (and ${failures.length - 1} more)` : "";
      ops.showError(errorBox, Object.assign(new Error(`${id}: ${error.message}${more}`),
        { status: error.status, field: error.field }));
    }
    render();
    setTimeout(render, PENDING_MS + 100);
    counts.now();
    if (listPoll) listPoll.now();
    for (const entry of expanded.values()) entry.poll.now();
    return failures;
  }

  let shelving = null;
  function openShelve(id) {
    shelving = id;
    document.getElementById("shelve-alarm").textContent = id;
    ops.showError(shelveError, null);
    dialog.showModal();
    document.getElementById("shelve-reason").focus();
  }
  document.getElementById("shelve-cancel").addEventListener("click", () => dialog.close());
  shelveForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const minutes = Number(shelveForm.elements.minutes.value);
    const reason = shelveForm.elements.reason.value.trim();
    const failures = await act([shelving], "shelve", { minutes, reason });
    if (failures.length) {
      ops.showError(shelveError, failures[0][1]);
      ops.showError(errorBox, null);
    } else {
      shelveForm.elements.reason.value = "";
      dialog.close();
    }
  });
})();
