"""Citizen requests follow their interventions: Open311 ``status`` and ``status_notes``.

The dispatch coordinator has no handle on the Open311 store: it publishes its
interventions as a read model, and this bridge of the composition root copies
each request's state into its Open311 record (``closed`` once the
intervention is done or cancelled, ``open`` before; the notes are the
intervention's ``notes``)::

    sync = RequestStatusSync(lambda: store.get_blob("view:interventions"), open311_store)
    sync.start()          # a thread polling the read model every half second
    ...
    sync.stop()

Only changes are written: the bridge remembers what it last wrote, and on
first sight of a request (a fresh start) it reads the record and writes only
if it differs, so a restart rewrites nothing. A store out of reach is retried
at the next round. A request whose intervention the coordinator has already
forgotten (closed for a day) before the bridge saw it closed keeps its last
status: the bridge runs beside the admin web, so that takes a day's outage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

from runtime.envelope import unpack
from runtime.errors import CommandpostError, MalformedMessageError
from runtime.open311 import ServiceRequest

__all__ = ["CLOSED_STATES", "RequestStatusSync", "request_status"]

log: Final = logging.getLogger("commandpost.request_sync")

#: Intervention states that close their request.
CLOSED_STATES: Final = frozenset({"done", "cancelled"})


class RequestWriter(Protocol):
    """What the bridge needs of :class:`~runtime.open311.SyncOpen311Store`."""

    def get(self, request_id: str) -> ServiceRequest:
        """One request; :class:`KeyError` when unknown."""
        ...

    def update_status(self, request_id: str, status: str, notes: str | None = None, *,
                      ts: float | None = None) -> ServiceRequest:
        """Set a request's status and notes."""
        ...


def request_status(intervention: dict[str, Any]) -> tuple[str, str | None]:
    """``(status, status_notes)`` of the request an intervention serves."""
    status = "closed" if intervention.get("state") in CLOSED_STATES else "open"
    notes = intervention.get("notes")
    return status, str(notes) if notes else None


class RequestStatusSync:
    """Copies interventions' states into their Open311 requests (see the module doc).

    ``read`` returns the ``interventions`` read model as published (msgpack,
    None before the first); ``store`` is written from this object's thread.
    """

    def __init__(self, read: Callable[[], bytes | None], store: RequestWriter, *,
                 interval_s: float = 0.5) -> None:
        self._read = read
        self._store = store
        self._interval_s = interval_s
        self._synced: dict[str, tuple[str, str | None]] = {}
        self._last_blob: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.updates = 0

    def sync_once(self) -> int:
        """One round: the requests whose record changed (raises the store's errors)."""
        blob = self._read()
        if blob is None or blob == self._last_blob:
            return 0
        try:
            doc = unpack(blob, max_size=256 << 20)
        except MalformedMessageError as exc:
            log.error("interventions read model unreadable: %s", exc)
            self._last_blob = blob
            return 0
        items = doc.get("interventions") if isinstance(doc, dict) else None
        changed = 0
        for rec in items or ():
            if not isinstance(rec, dict) or not rec.get("request_id"):
                continue  # an equipment fault: no citizen to tell
            rid = str(rec["request_id"])
            want = request_status(rec)
            if self._synced.get(rid) == want:
                continue
            try:
                if rid not in self._synced:
                    current = self._store.get(rid)
                    if (current.status, current.status_notes) == want:
                        self._synced[rid] = want
                        continue
                self._store.update_status(rid, want[0], want[1])
            except KeyError:
                log.warning("intervention %s serves request %s, which the store does not hold",
                            rec.get("id"), rid)
            else:
                changed += 1
            self._synced[rid] = want
        self._last_blob = blob
        self.updates += changed
        return changed

    def start(self) -> None:
        """Poll in a daemon thread of its own until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="request-status-sync",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread (after its current round)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._interval_s):
            try:
                self.sync_once()
            except CommandpostError as exc:
                # Logged once per outage: the next rounds retry until it is over.
                if not failing:
                    log.warning("request statuses wait for the store: %s", exc)
                failing = True
            else:
                if failing:
                    log.info("request statuses are written again")
                failing = False
