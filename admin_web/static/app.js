// The pages' access to the JSON API, with the login session.
//
//   cp.api("/tree")                      -> Promise of the JSON answer (throws cp.ApiError)
//   const stop = cp.poll("/alarms", 1000, (alarms) => render(alarms))
//   cp.post("/alarms/al-1/ack", {note: "seen"})  -> Promise of the JSON answer
//   cp.el("td", {class: "num"}, "42")    -> an element, its children as text or nodes
//
// Reads carry the session cookie; changes also carry the page's CSRF token in the
// X-CSRF-Token header (the API refuses a session's change without it). A poll sends
// back the ETag of the last answer: an unchanged read costs a 304 without a body, and
// its callback is not called again. A poll pauses while the page is hidden and waits
// longer after a failure, never two requests at once.
"use strict";

(function () {
  const API = "/api/v1";

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
      this.field = body && body.field;
    }
  }

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function url(path) {
    return path.startsWith("/api/") || path.startsWith("/open311/") ? path : API + path;
  }

  async function answer(response) {
    const text = await response.text();
    let body = null;
    if (text) {
      try { body = JSON.parse(text); } catch (e) { body = { error: text.slice(0, 200) }; }
    }
    if (response.status === 401) {
      // The session ended (logout elsewhere, new password): back to the login form.
      window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  async function api(path, opts = {}) {
    const init = { credentials: "same-origin", cache: "no-store", ...opts };
    init.headers = { Accept: "application/json", ...(opts.headers || {}) };
    const method = (init.method || "GET").toUpperCase();
    if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = csrfToken();
    if (opts.json !== undefined) {
      init.body = JSON.stringify(opts.json);
      init.headers["Content-Type"] = "application/json";
      delete init.json;
    }
    return answer(await fetch(url(path), init));
  }

  function post(path, body) {
    return api(path, { method: "POST", json: body === undefined ? {} : body });
  }

  function del(path) {
    return api(path, { method: "DELETE" });
  }

  function poll(path, intervalMs, onData, onError) {
    let etag = null;
    let stopped = false;
    let timer = null;
    let failures = 0;
    const target = typeof path === "function" ? path : () => path;

    async function once() {
      timer = null;
      if (stopped) return;
      if (document.hidden) { schedule(intervalMs); return; }
      const current = target();
      try {
        const headers = { Accept: "application/json" };
        if (etag && etag.path === current) headers["If-None-Match"] = etag.value;
        const response = await fetch(url(current), {
          credentials: "same-origin", cache: "no-store", headers,
        });
        if (response.status !== 304) {
          const body = await answer(response);
          etag = { path: current, value: response.headers.get("ETag") };
          if (!stopped) onData(body, response);
        }
        failures = 0;
        setStatus(true);
      } catch (error) {
        failures += 1;
        setStatus(false, error);
        if (onError) onError(error);
      }
      schedule(failures ? Math.min(intervalMs * 2 ** failures, 30000) : intervalMs);
    }

    function schedule(ms) {
      if (!stopped && timer === null) timer = setTimeout(once, ms);
    }

    const control = {
      stop() { stopped = true; if (timer !== null) clearTimeout(timer); timer = null; },
      // Read now (after a change the page made), whatever the interval.
      now() { etag = null; if (timer !== null) { clearTimeout(timer); timer = null; } once(); },
    };
    once();
    return control;
  }

  // The banner saying the page's data is stale: shown while a poll fails.
  function setStatus(ok, error) {
    const banner = document.getElementById("live-status");
    if (!banner) return;
    banner.hidden = ok;
    if (!ok) banner.textContent = "Connection lost: " + (error && error.message ? error.message : "retrying") + " — retrying";
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on") && typeof value === "function") {
        node.addEventListener(name.slice(2), value);
      } else if (name === "dataset") {
        Object.assign(node.dataset, value);
      } else {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replace(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  }

  // "12 s ago", "3 min ago" from seconds since the epoch.
  function age(ts) {
    if (ts === null || ts === undefined) return "—";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 129600) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function time(ts) {
    if (ts === null || ts === undefined) return "—";
    return new Date(ts * 1000).toLocaleString();
  }

  // The page's query string as an object, and back.
  function query() {
    return Object.fromEntries(new URLSearchParams(location.search));
  }

  function withQuery(path, params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
    const s = q.toString();
    return s ? `${path}?${s}` : path;
  }

  window.cp = { ApiError, api, post, del, poll, el, replace, age, time, query, withQuery, csrfToken };
})();
