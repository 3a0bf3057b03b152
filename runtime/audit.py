"""The audit trail: who did what to which target, when, from where, and how it ended.

Every operator action the admin web serves (a command submitted, an alarm
acknowledged or shelved, a crisis switched, a request handled, a login, a
failed login, a logout, an API key issued) is one :class:`AuditRecord`,
appended to the ``{ns}:audit`` stream (:meth:`runtime.store.SyncStore.append_audit`),
which is append-only and trimmed by age like the event stream::

    record = AuditRecord(user="ana", role="operator", action="command.submit",
                         target="lc-dijon-0001", source="10.0.0.7",
                         params={"dim": 40}, after={"command_id": "c-18f…"})
    store.append_audit(record.to_fields())
    entry = audit_entry(store.page("audit", limit=1)[0][0])   # as the API shows it

``outcome`` is ``ok`` or ``refused``; a refusal carries a ``code`` (the
runtime's own, ``out_of_range``, or an HTTP status, ``403``) and a short
``detail``. ``params``, ``before`` and ``after`` are any JSON values; each is
kept up to :data:`MAX_VALUE_BYTES` encoded and replaced by a note beyond, so
a refused 1 MB request does not become a 1 MB audit entry. Callers pass
values whose size is already bounded (the web records a command's params
only once they passed the limits of every command).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from runtime.errors import RejectedError

__all__ = ["MAX_VALUE_BYTES", "OUTCOMES", "AuditRecord", "action_matches", "audit_entry"]

OUTCOMES: Final = ("ok", "refused")
#: Longest JSON kept for each of params, before and after.
MAX_VALUE_BYTES: Final = 4096
_MAX_NAME: Final = 64  # user, role, action, code
_MAX_TEXT: Final = 200  # target, source, detail
_JSON_FIELDS: Final = ("params", "before", "after")


def _bounded_json(value: Any) -> str:
    """``value`` as compact JSON, or a note when it cannot be or is too long to be kept."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), sort_keys=True,
                          default=str)
    except (TypeError, ValueError, RecursionError) as exc:
        return json.dumps({"omitted": f"not JSON: {str(exc)[:80]}"})
    if len(text) > MAX_VALUE_BYTES:
        return json.dumps({"omitted": f"{len(text)} bytes"})
    return text


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One operator action as the audit trail keeps it.

    ``user`` is who acted (for a failed login, the name that was tried; empty
    when none was given), ``source`` the client's address, ``ts`` seconds since
    the epoch. Names and texts longer than the trail keeps are refused with
    :class:`RejectedError`: the caller cuts what came from a request.
    """

    user: str
    action: str
    ts: float
    target: str = ""
    role: str = ""
    source: str = ""
    params: Any = None
    before: Any = None
    after: Any = None
    outcome: str = "ok"
    code: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.action, str) or not 1 <= len(self.action) <= _MAX_NAME:
            raise RejectedError(f"audit action must be 1-{_MAX_NAME} characters",
                                code="bad_audit")
        for name, limit in (("user", _MAX_NAME), ("role", _MAX_NAME), ("code", _MAX_NAME),
                            ("target", _MAX_TEXT), ("source", _MAX_TEXT),
                            ("detail", _MAX_TEXT)):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > limit:
                raise RejectedError(f"audit {name} must be a string of at most {limit}",
                                    code="bad_audit")
        if self.outcome not in OUTCOMES:
            raise RejectedError(f"audit outcome must be one of {OUTCOMES}", code="bad_audit")
        if (isinstance(self.ts, bool) or not isinstance(self.ts, (int, float))
                or not math.isfinite(self.ts) or self.ts < 0):
            raise RejectedError("audit ts must be seconds since the epoch", code="bad_audit")

    def to_fields(self) -> dict[str, Any]:
        """The record as flat stream fields (params, before and after as JSON text)."""
        return {
            "ts": float(self.ts),
            "user": self.user,
            "role": self.role,
            "source": self.source,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "code": self.code,
            "detail": self.detail,
            **{name: _bounded_json(getattr(self, name)) for name in _JSON_FIELDS},
        }


def audit_entry(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A stored audit entry as the API shows it: ``{"id", "ts", "user", …}``.

    ``fields`` is one decoded stream entry (with its ``event_id``); params,
    before and after come back as JSON values.
    """
    out: dict[str, Any] = {"id": str(fields.get("event_id", ""))}
    for name in ("ts", "user", "role", "source", "action", "target", "outcome", "code",
                 "detail"):
        out[name] = fields.get(name, 0.0 if name == "ts" else "")
    for name in _JSON_FIELDS:
        raw = fields.get(name)
        try:
            out[name] = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            out[name] = raw
    return out


def action_matches(action: object, wanted: str) -> bool:
    """Whether an entry's ``action`` is ``wanted`` or of its family: ``alarm`` matches
    ``alarm`` and ``alarm.ack``, not ``alarms``."""
    return isinstance(action, str) and (action == wanted or action.startswith(wanted + "."))
