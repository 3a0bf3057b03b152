// One equipment's page: GET /api/v1/equipment/ID every 2 s (twin, schedule and layers in
// force, alarms, events, commands), and one form per command the user may send, as
// GET /api/v1/equipment/ID/actions describes them (the kind's own validation).
//
// A form posts {action, params, idempotency_key} to /equipment/ID/commands, then follows
// the command through GET /api/v1/commands/CID until the device acked it or it failed.
// A refusal shows the API's error next to the form, on the field it names.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const FOLLOW_MS = 500;
  const FOLLOW_FOR_MS = 60000;
  const TERMINAL = new Set(["acked", "failed", "expired", "superseded"]);

  function shown(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // A reported block (a list of records: a cabinet's lamps, a controller's plan table)
  // as one line saying what its records hold, their table folded under it.
  function block(list, open) {
    const keys = [...new Set(list.flatMap((r) => Object.keys(r)))].sort();
    const said = keys.map((k) => {
      const counts = new Map();
      for (const r of list) counts.set(shown(r[k]), (counts.get(shown(r[k])) || 0) + 1);
      const top = [...counts].sort((a, b) => b[1] - a[1]);
      if (top.length === 1) return `${k} ${top[0][0]}`;
      return `${k} ${top.slice(0, 3).map(([v, n]) => `${v}×${n}`).join(" ")}${top.length > 3 ? " …" : ""}`;
    });
    return cp.el("details", { class: "block", open },
      cp.el("summary", {}, `${list.length} × `, said.slice(0, 6).join(", "),
        said.length > 6 ? ` … (${said.length} fields)` : ""),
      cp.el("div", { class: "table-wrap" }, cp.el("table", { class: "grid" },
        cp.el("thead", {}, cp.el("tr", {}, cp.el("th", { scope: "col" }, "#"),
          keys.map((k) => cp.el("th", { scope: "col" }, k)))),
        cp.el("tbody", {}, list.map((r, n) => cp.el("tr", {}, cp.el("td", {}, n + 1),
          keys.map((k) => cp.el("td", {}, shown(r[k])))))))));
  }

  function reading(value, open) {
    const records = Array.isArray(value) && value.length
      && value.every((v) => v && typeof v === "object" && !Array.isArray(v));
    return records ? block(value, open) : shown(value);
  }

  function when(ts) {
    return cp.el("span", { title: ts ? cp.time(ts) : null, class: "age",
                           "data-ts": ts ? String(ts) : null }, cp.age(ts));
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // -- what the equipment reports ------------------------------------------------------

  function facts(item) {
    const status = item.status || "unknown";
    cp.replace(document.getElementById("fact-status"),
      cp.el("span", { class: `status status-${status}` }, status));
    cp.replace(document.getElementById("fact-online"),
      cp.el("span", { class: item.online ? "online-yes" : "online-no" },
        cp.el("span", { class: item.online ? "dot dot-online" : "dot dot-offline", "aria-hidden": "true" }),
        item.online ? "online" : "offline"));
    const conditions = (item.conditions || []).join(", ");
    cp.replace(document.getElementById("fact-alarm"), item.in_alarm
      ? cp.el("span", { class: "in-alarm" }, "in alarm", conditions ? ` (${conditions})` : "")
      : (conditions || "none"));
    document.getElementById("fact-host").textContent = item.host || "—";
    const pos = item.position && typeof item.position.lat === "number" ? item.position : item;
    document.getElementById("fact-position").textContent =
      typeof pos.lat === "number" ? `${pos.lat.toFixed(5)}, ${pos.lon.toFixed(5)}`
        + (item.position && item.position.stale ? " (stale)" : "")
        + (item.municipality_in ? ` in ${item.municipality_in}` : "") : "—";
  }

  function twin(item) {
    const reported = item.reported || {};
    const desired = item.desired || {};
    const control = (item.control && item.control.fields) || {};
    const names = [...new Set([...Object.keys(reported), ...Object.keys(desired)])].sort();
    const body = document.getElementById("twin-rows");
    // A block unfolded stays so across refreshes.
    const unfolded = new Set([...body.querySelectorAll("tr[data-field] > td > details[open]")]
      .map((d) => d.closest("tr").dataset.field));
    const rows = names.map((name) => {
      const r = reported[name];
      const d = Object.prototype.hasOwnProperty.call(desired, name) ? desired[name] : undefined;
      const c = control[name];
      const differs = r && d !== undefined && JSON.stringify(r.value) !== JSON.stringify(d);
      const quality = r ? (r.quality || "—") : "—";
      const by = c ? [c.source || "command", c.by ? `(${c.by})` : "",
        c.until ? `until ${cp.time(c.until)}` : ""].filter(Boolean).join(" ") : "";
      return cp.el("tr", { "data-field": name, class: differs ? "differs" : null },
        cp.el("td", { class: "mono" }, name),
        cp.el("td", { class: "reported" }, r ? reading(r.value, unfolded.has(name)) : "—"),
        cp.el("td", { class: `quality quality-${quality}` }, quality),
        cp.el("td", {}, r ? when(r.received_ts || r.source_ts) : "—"),
        cp.el("td", { class: "desired" }, d === undefined ? "" : shown(d)),
        cp.el("td", { class: "set-by" }, by));
    });
    if (!rows.length) {
      rows.push(cp.el("tr", {}, cp.el("td", { colspan: 6, class: "muted" }, "Nothing reported yet.")));
    }
    cp.replace(body, rows);
  }

  function schedule(item) {
    const parts = [];
    const s = item.schedule;
    if (s) {
      parts.push(cp.el("dl", { class: "facts", id: "schedule-facts" },
        cp.el("dt", {}, "Schedule"), cp.el("dd", { class: "schedule-name" }, s.name),
        cp.el("dt", {}, "Step in force"), cp.el("dd", { class: "schedule-step" }, s.step || "—",
          s.since ? [" since ", cp.el("span", { title: cp.time(s.since) }, cp.time(s.since))] : ""),
        cp.el("dt", {}, "Next"), cp.el("dd", { class: "schedule-next" },
          s.next ? [s.next.step, " at ", cp.time(s.next.at)] : "—")));
    }
    const control = item.control;
    if (control && control.fields && Object.keys(control.fields).length) {
      const rows = Object.entries(control.fields).map(([name, f]) =>
        cp.el("tr", { "data-field": name },
          cp.el("td", { class: "mono" }, name),
          cp.el("td", {}, shown(f.value)),
          cp.el("td", { class: "source" }, f.source || "command (no layer)"),
          cp.el("td", {}, f.by || "—"),
          cp.el("td", {}, f.until ? cp.el("span", { title: cp.time(f.until) }, cp.time(f.until)) : "—")));
      parts.push(cp.el("p", { class: "layers muted" },
        `In force by precedence: ${(control.precedence || []).join(" over ")}.`));
      parts.push(cp.el("table", { class: "grid", id: "control-table" },
        cp.el("thead", {}, cp.el("tr", {}, ["Field", "Value", "Set by layer", "By", "Until"]
          .map((h) => cp.el("th", { scope: "col" }, h)))),
        cp.el("tbody", {}, rows)));
    }
    if ("pedestrian" in item || item.bollard_by || item.passage) {
      parts.push(cp.el("dl", { class: "facts" },
        "pedestrian" in item ? [cp.el("dt", {}, "Pedestrian hours"), cp.el("dd", {}, item.pedestrian ? "yes" : "no")] : "",
        item.bollard_by ? [cp.el("dt", {}, "Bollard set by"), cp.el("dd", {}, item.bollard_by)] : "",
        item.passage ? [cp.el("dt", {}, "Passage"), cp.el("dd", {}, shown(item.passage))] : ""));
    }
    if (!parts.length) {
      const desired = Object.keys(item.desired || {});
      parts.push(cp.el("p", { class: "muted" }, "Follows no schedule: ",
        desired.length ? `the desired values (${desired.join(", ")}) come from the commands below.`
          : "nothing has been asked of it."));
    }
    cp.replace(document.getElementById("schedule-body"), parts);
  }

  function alarms(item) {
    const list = item.alarms || [];
    const out = list.length ? cp.el("table", { class: "grid" },
      cp.el("thead", {}, cp.el("tr", {}, ["Raised", "Condition", "Priority", "State", "Message"]
        .map((h) => cp.el("th", { scope: "col" }, h)))),
      cp.el("tbody", {}, list.map((a) => cp.el("tr", { "data-alarm-id": a.id },
        cp.el("td", {}, when(a.raised_ts)),
        cp.el("td", { class: "mono" }, a.condition),
        cp.el("td", { class: `prio-${a.priority}` }, a.priority),
        cp.el("td", { class: "state" }, a.state),
        cp.el("td", {}, a.message || ""))))) : cp.el("p", { class: "muted" }, "No active alarm.");
    cp.replace(document.getElementById("alarm-list"), out, list.length
      ? cp.el("p", {}, cp.el("a", { href: cp.withQuery("/alarms", { source: item.id }) },
        "Handle alarms")) : null);
  }

  function commands(item) {
    const rows = (item.commands || []).map((c) => cp.el("tr", { "data-command-id": c.command_id },
      cp.el("td", {}, when(c.created_ts)),
      cp.el("td", { class: "mono" }, c.action),
      cp.el("td", { class: "mono" }, shown(c.params)),
      cp.el("td", {}, c.caller || "—"),
      cp.el("td", { class: `command-status status-${c.status}` }, c.status,
        c.error ? cp.el("span", { class: "muted" }, ` (${c.error})`) : "")));
    if (!rows.length) rows.push(cp.el("tr", {}, cp.el("td", { colspan: 5, class: "muted" }, "No command yet.")));
    cp.replace(document.getElementById("command-rows"), rows);
  }

  function events(item) {
    const skip = new Set(["ts", "event", "entity", "event_id", "kind", "municipality"]);
    const rows = (item.events || []).map((e) => cp.el("tr", { "data-event": e.event },
      cp.el("td", {}, when(e.ts)),
      cp.el("td", { class: "mono" }, e.event),
      cp.el("td", { class: "mono" }, Object.entries(e).filter(([k]) => !skip.has(k))
        .map(([k, v]) => `${k}=${shown(v)}`).join("  "))));
    if (!rows.length) rows.push(cp.el("tr", {}, cp.el("td", { colspan: 3, class: "muted" }, "No event kept.")));
    cp.replace(document.getElementById("event-rows"), rows);
  }

  // -- command forms -------------------------------------------------------------------

  function hint(spec) {
    const bits = [];
    if (spec.type === "array" && spec.items) {
      bits.push(`numbers ${spec.items.min ?? ""}–${spec.items.max ?? ""}, comma-separated`);
    } else if (!spec.enum && (spec.min !== undefined || spec.max !== undefined)) {
      const unit = spec.unit ? ` ${spec.unit}` : "";
      const long = spec.unit === "s" && spec.max >= 86400 ? ` (${spec.max / 86400} d)` : "";
      bits.push(spec.exclusive_min
        ? `more than ${spec.min}, at most ${spec.max}${unit}${long}`
        : `${spec.min ?? "…"}–${spec.max ?? "…"}${unit}${long}`);
    }
    if (spec.names) bits.push(`or a name: ${Object.keys(spec.names).join(", ")}`);
    if (spec.description) bits.push(spec.description);
    return bits.join("; ");
  }

  function input(formId, name, spec) {
    const id = `${formId}-${name}`;
    const attrs = { id, name, "data-param": name, "aria-describedby": `${id}-hint` };
    if (spec.required) { attrs.required = true; attrs["aria-required"] = "true"; }
    let control;
    if (spec.type === "boolean") {
      control = cp.el("select", attrs, cp.el("option", { value: "" }, "—"),
        cp.el("option", { value: "true" }, "true"), cp.el("option", { value: "false" }, "false"));
    } else if (spec.enum) {
      control = cp.el("select", attrs, cp.el("option", { value: "" }, "—"),
        spec.enum.map((v) => cp.el("option", { value: String(v) }, String(v))));
    } else if (spec.names) {
      // A number, or one of the names it also takes.
      const list = `${id}-names`;
      control = [cp.el("input", { ...attrs, type: "text", list, autocomplete: "off",
                                  inputmode: "numeric" }),
                 cp.el("datalist", { id: list }, Object.entries(spec.names).map(([label, n]) =>
                   cp.el("option", { value: label }, `${label} (${n})`)))];
    } else if (spec.type === "integer" || spec.type === "number") {
      control = cp.el("input", { ...attrs, type: "number", min: spec.min, max: spec.max,
                                 step: spec.type === "integer" ? 1 : "any" });
    } else if (spec.type === "array") {
      control = cp.el("input", { ...attrs, type: "text", inputmode: "numeric", placeholder: "1, 2, 3" });
    } else {
      control = cp.el("input", { ...attrs, type: "text", maxlength: spec.max_length });
    }
    const text = hint(spec);
    return cp.el("label", { for: id },
      cp.el("span", { class: spec.required ? "name req" : "name" }, name, spec.unit ? ` (${spec.unit})` : ""),
      control,
      cp.el("span", { class: "hint", id: `${id}-hint` }, text));
  }

  // The value of a form control as the parameter takes it; undefined when left empty.
  function value(spec, raw) {
    const text = raw.trim();
    if (text === "") return undefined;
    if (spec.type === "boolean") return text === "true";
    if (spec.type === "integer" || spec.type === "number") return Number(text);
    if (spec.names) return /^-?\d+$/.test(text) ? Number(text) : text;
    if (spec.type === "array") {
      return text.split(/[\s,;]+/).filter(Boolean).map((n) => (/^\d+$/.test(n) ? Number(n) : n));
    }
    return raw;
  }

  // The parameters in the order a form shows them: the fields a set needs one of, the
  // required ones, then the rest, each group in the order the API gave.
  function ordered(action) {
    const params = action.params || {};
    const names = Object.keys(params);
    const first = (action.requires_one_of || []).filter((n) => n in params);
    const required = names.filter((n) => !first.includes(n) && params[n].required);
    const rest = names.filter((n) => !first.includes(n) && !required.includes(n));
    return Object.fromEntries([...first, ...required, ...rest].map((n) => [n, params[n]]));
  }

  function form(entityId, action, n, onSent) {
    const formId = `action-${n}`;
    const params = ordered(action);
    const error = cp.el("p", { class: "form-error", role: "alert", hidden: true });
    const outcome = cp.el("p", { class: "outcome", "aria-live": "polite" });
    const button = cp.el("button", { type: "submit" }, `Send ${action.action}`);
    const node = cp.el("form", { class: "action-form", id: formId, "data-action": action.action,
                                 novalidate: true, "aria-label": `Command ${action.action}` },
      cp.el("h2", {}, action.action),
      action.requires_one_of ? cp.el("p", { class: "muted" },
        `Give at least one of ${action.requires_one_of.join(", ")}.`) : "",
      Object.entries(params).map(([name, spec]) => input(formId, name, spec)),
      error,
      cp.el("div", { class: "buttons" }, button, outcome));

    // A parameter required when another takes some values (a manual mode's reason).
    for (const [name, spec] of Object.entries(params)) {
      if (!spec.required_when) continue;
      const target = node.querySelector(`[data-param="${name}"]`);
      const label = target.closest("label").querySelector(".name");
      const check = () => {
        const needed = Object.entries(spec.required_when).some(([other, values]) => {
          const field = node.querySelector(`[data-param="${other}"]`);
          return field && values.map(String).includes(field.value);
        });
        target.required = needed;
        target.setAttribute("aria-required", String(needed));
        label.classList.toggle("req", needed);
      };
      for (const other of Object.keys(spec.required_when)) {
        const field = node.querySelector(`[data-param="${other}"]`);
        if (field) field.addEventListener("change", check);
      }
      check();
    }

    let pending = null; // {body, key}: a submission that got no answer, retried with its key

    function fail(message, field) {
      error.textContent = message;
      error.hidden = false;
      const name = field && field.startsWith("params.") ? field.slice(7) : null;
      const target = name && node.querySelector(`[data-param="${CSS.escape(name)}"]`);
      if (target) {
        target.setAttribute("aria-invalid", "true");
        target.focus();
      }
    }

    node.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      for (const el of node.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
      const body = { action: action.action, params: {} };
      for (const [name, spec] of Object.entries(params)) {
        const control = node.querySelector(`[data-param="${CSS.escape(name)}"]`);
        const v = value(spec, control.value);
        if (v === undefined) {
          if (control.required) { fail(`${name} is required`, `params.${name}`); return; }
          continue;
        }
        if (typeof v === "number" && !Number.isFinite(v)) { fail(`${name} must be a number`, `params.${name}`); return; }
        body.params[name] = v;
      }
      const same = pending && JSON.stringify(pending.body) === JSON.stringify(body);
      const key = same ? pending.key : randomKey();
      pending = { body, key };
      button.disabled = true;
      // What the form shows from now on is this submission's outcome.
      delete outcome.dataset.commandId;
      outcome.dataset.status = "";
      outcome.textContent = "sending…";
      let accepted;
      try {
        accepted = await cp.post(`/equipment/${encodeURIComponent(entityId)}/commands`,
                                 { ...body, idempotency_key: key });
      } catch (err) {
        button.disabled = false;
        outcome.textContent = "";
        if (err instanceof cp.ApiError && err.status < 500) pending = null; // refused: a new try
        fail(err.message || "not sent", err.field);
        return;
      }
      pending = null;
      button.disabled = false;
      outcome.dataset.commandId = accepted.command_id;
      follow(accepted.command_id, outcome, onSent);
    });
    return node;
  }

  // Read the command until it is acked, failed, expired or superseded (or a minute passed).
  async function follow(commandId, outcome, onSent) {
    const until = Date.now() + FOLLOW_FOR_MS;
    const mine = () => outcome.dataset.commandId === commandId;
    let status = "queued";
    outcome.dataset.status = status;
    outcome.textContent = status;
    onSent();
    while (Date.now() < until) {
      try {
        const c = await cp.api(`/commands/${encodeURIComponent(commandId)}`);
        if (!mine()) return; // the form has sent another since
        status = c.status;
        outcome.dataset.status = status;
        outcome.textContent = status + (c.error ? `: ${c.error}` : "");
        if (TERMINAL.has(status)) { onSent(); return; }
      } catch (err) {
        if (!mine()) return;
        outcome.textContent = `${status} (cannot read the command now: ${err.message})`;
      }
      await new Promise((resolve) => setTimeout(resolve, FOLLOW_MS));
    }
    if (mine()) outcome.textContent = `still ${status} after ${FOLLOW_FOR_MS / 1000} s`;
  }

  async function forms(entityId, onSent) {
    const note = document.getElementById("actions-note");
    const box = document.getElementById("action-forms");
    let answer;
    try {
      answer = await cp.api(`/equipment/${encodeURIComponent(entityId)}/actions`);
    } catch (err) {
      note.textContent = `Commands cannot be offered now: ${err.message}`;
      return;
    }
    if (!answer.actions.length) {
      const why = answer.refusal || "no command to offer";
      note.textContent = why.charAt(0).toUpperCase() + why.slice(1) + ".";
      return;
    }
    note.textContent = "Each command is checked by the equipment's kind before it is queued, then followed until the device answers.";
    cp.replace(box, answer.actions.map((a, n) => form(entityId, a, n, onSent)));
  }

  function start() {
    const section = document.getElementById("equipment-detail");
    if (!section) return;
    const entityId = section.dataset.entityId;
    const error = document.getElementById("detail-error");
    const poll = cp.poll(`/equipment/${encodeURIComponent(entityId)}`, REFRESH_MS, (item) => {
      error.hidden = true;
      facts(item);
      schedule(item);
      twin(item);
      alarms(item);
      commands(item);
      events(item);
    }, (err) => {
      error.textContent = err.message;
      error.hidden = false;
    });
    forms(entityId, () => poll.now());
    setInterval(() => {
      for (const span of document.querySelectorAll("span.age[data-ts]")) {
        span.textContent = cp.age(Number(span.dataset.ts));
      }
    }, 5000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
