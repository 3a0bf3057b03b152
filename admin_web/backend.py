"""What the admin web asks of the runtime.

The admin web never imports Ray or the supervisors: it receives an
:class:`AdminBackend` and calls only these few read methods on it, so tests
(and ``commandpost`` while the runtime is still starting) hand it a
:class:`StaticBackend`::

    backend = SwappableBackend(StaticBackend())      # health "starting"
    app = create_app(backend, users)
    ...                                              # runtime comes up
    backend.swap(runtime_backend)
"""

from __future__ import annotations

import copy
import os
import threading
from importlib import metadata
from typing import Any, Final, Protocol

from runtime.errors import ConfigError

HEALTH_STATUSES: Final = frozenset({"ok", "degraded", "starting"})


class AdminBackend(Protocol):
    """The runtime's read model as the admin web sees it.

    Every method returns plain JSON-ready data (dicts, lists, str, int, float,
    bool, None); the shapes are those of CONTRACT.md's HTTP API.
    """

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded" | "starting", "entities": int, "online": int}``."""
        ...

    def tree(self) -> dict[str, Any]:
        """The root node of the supervision tree (CONTRACT.md ``/api/v1/tree``)."""
        ...

    def system(self) -> dict[str, Any]:
        """``{"version", "ray": {...}, "redis": {...}, "mqtt": {...}, "simulators": [...]}``."""
        ...


def package_version() -> str:
    """The installed commandpost version, or ``0+unknown`` outside an install."""
    try:
        return metadata.version("commandpost")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _default_health() -> dict[str, Any]:
    return {"status": "starting", "entities": 0, "online": 0}


def _default_tree() -> dict[str, Any]:
    return {
        "id": "commandpost",
        "kind": "supervisor",
        "status": "starting",
        "restarts": 0,
        "pid": os.getpid(),
        "node": None,
        "children": [],
    }


def _default_system() -> dict[str, Any]:
    return {
        "version": package_version(),
        "ray": {"address": None, "nodes": 0},
        "redis": {"url": None, "status": "starting"},
        "mqtt": {"url": None, "status": "starting"},
        "simulators": [],
    }


class StaticBackend:
    """An :class:`AdminBackend` answering with the dicts given to its constructor.

    Omitted parts default to a runtime that is starting: health ``starting``
    with no entity, a childless root supervisor, no Ray/Redis/broker yet.
    Each call returns a deep copy, so callers may not alter the stored data.
    """

    def __init__(
        self,
        health: dict[str, Any] | None = None,
        tree: dict[str, Any] | None = None,
        system: dict[str, Any] | None = None,
    ) -> None:
        self._health = copy.deepcopy(health) if health is not None else _default_health()
        self._tree = copy.deepcopy(tree) if tree is not None else _default_tree()
        self._system = copy.deepcopy(system) if system is not None else _default_system()
        status = self._health.get("status")
        if status not in HEALTH_STATUSES:
            raise ConfigError(f"health status must be one of {sorted(HEALTH_STATUSES)}: {status!r}")

    def health(self) -> dict[str, Any]:
        return copy.deepcopy(self._health)

    def tree(self) -> dict[str, Any]:
        return copy.deepcopy(self._tree)

    def system(self) -> dict[str, Any]:
        return copy.deepcopy(self._system)


class SwappableBackend:
    """An :class:`AdminBackend` forwarding to another one that can be replaced.

    The admin web starts before the runtime (so that health says ``starting``)
    and keeps its app object; the composition root swaps the real backend in
    once the runtime is up, and back to a static one while shutting down.
    """

    def __init__(self, backend: AdminBackend) -> None:
        self._lock = threading.Lock()
        self._backend = backend

    def swap(self, backend: AdminBackend) -> None:
        """Forward every later call to ``backend``."""
        with self._lock:
            self._backend = backend

    @property
    def current(self) -> AdminBackend:
        """The backend calls are forwarded to now."""
        with self._lock:
            return self._backend

    def health(self) -> dict[str, Any]:
        return self.current.health()

    def tree(self) -> dict[str, Any]:
        return self.current.tree()

    def system(self) -> dict[str, Any]:
        return self.current.system()
