"""Open311 requests follow their interventions: only changes written, a restart rewrites nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from runtime.envelope import pack
from runtime.open311 import ServiceRequest
from runtime.request_sync import RequestStatusSync, request_status


class FakeStore:
    """Requests in memory, counting writes."""

    def __init__(self, ids: list[str]) -> None:
        self.records = {rid: ServiceRequest(service_request_id=rid, status="open",
                                            service_code="pothole", service_name="Pothole",
                                            requested_ts=1.0, updated_ts=1.0) for rid in ids}
        self.writes: list[tuple[str, str, str | None]] = []

    def get(self, request_id: str) -> ServiceRequest:
        return self.records[request_id]

    def update_status(self, request_id: str, status: str, notes: str | None = None, *,
                      ts: float | None = None) -> ServiceRequest:
        rec = replace(self.records[request_id], status=status, status_notes=notes)
        self.records[request_id] = rec
        self.writes.append((request_id, status, notes))
        return rec


def model(*items: dict[str, Any]) -> bytes:
    return pack({"ts": 1.0, "interventions": list(items)})


def item(rid: str | None, state: str, notes: str) -> dict[str, Any]:
    return {"id": f"int-{rid}", "request_id": rid, "state": state, "notes": notes}


@pytest.mark.parametrize(("state", "status"), [("new", "open"), ("assigned", "open"),
                                                ("on_site", "open"), ("done", "closed"),
                                                ("cancelled", "closed")])
def test_the_status_of_each_state(state: str, status: str) -> None:
    assert request_status({"state": state, "notes": "n"}) == (status, "n")


def test_only_changes_are_written_and_a_restart_rewrites_nothing() -> None:
    store = FakeStore(["1", "2"])
    blob = {"v": model(item("1", "new", "Received; waiting for a crew."),
                       item(None, "new", "a lamp fault: no request"))}
    sync = RequestStatusSync(lambda: blob["v"], store)
    assert sync.sync_once() == 1
    assert sync.sync_once() == 0  # the same read model: nothing read again
    blob["v"] = model(item("1", "done", "Done by crew v1."), item("2", "assigned", "Assigned."))
    assert sync.sync_once() == 2
    assert store.records["1"].status == "closed" and store.records["2"].status == "open"
    writes = len(store.writes)
    again = RequestStatusSync(lambda: blob["v"], store)  # a restarted bridge
    assert again.sync_once() == 0 and len(store.writes) == writes


def test_a_request_the_store_lacks_is_skipped() -> None:
    store = FakeStore([])
    sync = RequestStatusSync(lambda: model(item("9", "done", "Done.")), store)
    assert sync.sync_once() == 0
