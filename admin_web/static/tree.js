// The supervision tree and the runtime's health, kept live on the page.
//
//   <ul class="tree" data-live-tree="2000">…</ul>   GET /api/v1/tree every 2 s
//   <dl data-live-health="5000">…</dl>              GET /api/v1/health every 5 s
//
// The server renders both once (the same markup as here), so the page reads without
// scripts; then the tree is polled with its ETag and redrawn only when it changed, and
// health is read again with every change of the tree and at its own interval. Each
// node is an <li data-node-id="…"> whose restart count is in its `.restarts` element.
"use strict";

(function () {
  const cp = window.cp;
  const MAX_EXIT = 160;

  // The first line of a reason, cut to MAX_EXIT characters (the whole of it in a title).
  function shortExit(reason) {
    const line = String(reason).split("\n", 1)[0];
    return line.length > MAX_EXIT ? line.slice(0, MAX_EXIT - 3) + "..." : line;
  }

  function meta(node) {
    const parts = ["restarts ", cp.el("span", { class: "restarts" }, node.restarts)];
    if (node.pid) parts.push(" · pid ", cp.el("span", { class: "pid" }, node.pid));
    // A Ray node id is 56 hex digits: its first 8 tell the nodes of a cluster apart.
    if (node.node) {
      parts.push(" · node ", cp.el("span", { class: "node-name", title: node.node },
                                   String(node.node).slice(0, 8)));
    }
    if (node.entities !== undefined) {
      parts.push(" · ", cp.el("span", { class: "entities" }, node.entities), " entities, ",
                 cp.el("span", { class: "entity-restarts" }, node.entity_restarts ?? 0),
                 " entity restarts");
    }
    return cp.el("span", { class: "meta" }, parts);
  }

  function renderNode(node) {
    const children = node.children || [];
    return cp.el("li", {
      class: "node", id: "node-" + node.id,
      dataset: { nodeId: node.id, status: node.status },
    },
      cp.el("span", { class: "node-id" }, node.id), " ",
      cp.el("span", { class: "kind" }, node.kind), " ",
      cp.el("span", { class: "status status-" + node.status }, node.status), " ",
      meta(node),
      node.last_exit
        ? cp.el("div", { class: "last-exit", title: node.last_exit },
                "last exit: " + shortExit(node.last_exit))
        : null,
      children.length ? cp.el("ul", null, children.map(renderNode)) : null);
  }

  function renderHealth(list, health) {
    const status = list.querySelector("#health-status");
    if (status) {
      status.textContent = health.status;
      status.className = "status status-" + health.status;
    }
    const entities = list.querySelector("#health-entities");
    if (entities) entities.textContent = health.entities;
    const online = list.querySelector("#health-online");
    if (online) online.textContent = health.online;
  }

  function liveHealth(list) {
    const intervalMs = Number(list.dataset.liveHealth) || 5000;
    let timer = null;

    // Health answers 503 while degraded, with the same body: a state to show, not a failure.
    async function read() {
      if (timer !== null) clearTimeout(timer);
      timer = null;
      try {
        if (!document.hidden) renderHealth(list, await cp.api("/health"));
      } catch (error) {
        if (error instanceof cp.ApiError && error.body && error.body.status) {
          renderHealth(list, error.body);
        }
      }
      timer = setTimeout(read, intervalMs);
    }

    read();
    return read;
  }

  function liveTree(list, onChange) {
    const intervalMs = Number(list.dataset.liveTree) || 2000;
    let first = true;
    return cp.poll("/tree", intervalMs, (tree) => {
      cp.replace(list, renderNode(tree));
      list.dataset.updated = String(Date.now());
      // The first answer is what the server rendered; health was read with it.
      if (!first && onChange) onChange();
      first = false;
    });
  }

  function start() {
    const health = document.querySelector("[data-live-health]");
    const readHealth = health ? liveHealth(health) : null;
    document.querySelectorAll("[data-live-tree]").forEach((list) => liveTree(list, readHealth));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
