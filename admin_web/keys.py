"""Open311 API keys of citizens' apps, issued and revoked by an admin.

Under ``/api/v1`` (admin only)::

    GET    /open311/keys                   {"applications": ["…"]}
    POST   /open311/keys  {"application"}  201 {"application", "api_key"}
    DELETE /open311/keys/{application}     204 (404 when it holds no key)

A key is shown once, in the answer that issues it: the store keeps only its
digest (:mod:`runtime.open311`), and issuing again for the same application
replaces its key. Each issue and revocation is audited without the key.
"""

from __future__ import annotations

from typing import Final

from flask import Blueprint, jsonify, url_for
from flask.typing import ResponseReturnValue

from admin_web.audit import audited
from admin_web.auth import Role
from admin_web.context import services
from admin_web.guards import require
from admin_web.http_errors import ApiError, json_object_body, store_unavailable
from runtime.errors import RejectedError, StoreUnavailableError

__all__ = ["keys"]

_FIELDS: Final = frozenset({"application"})

keys = Blueprint("open311_keys", __name__, url_prefix="/api/v1/open311")


@keys.get("/keys")
@require(Role.ADMIN)
def applications() -> ResponseReturnValue:
    """The applications that hold a key (never the keys)."""
    try:
        return jsonify({"applications": services().backend.open311_apps()})
    except StoreUnavailableError:
        raise store_unavailable("keys not readable") from None


@keys.post("/keys")
@require(Role.ADMIN)
def issue() -> ResponseReturnValue:
    """Issue ``application`` a key: 201 ``{"application", "api_key"}``, the key shown once."""
    with audited("open311.key_issue") as note:
        body = json_object_body()
        unknown = next((name for name in body if name not in _FIELDS), None)
        if unknown is not None:
            raise ApiError(422, f"unknown field {unknown[:64]!r}", field=unknown[:64])
        application = body.get("application")
        if not isinstance(application, str):
            raise ApiError(422, "application must be a name", field="application")
        note.target = application[:64]
        note.params = {"application": application[:64]}
        try:
            key = services().backend.issue_open311_key(application)
        except RejectedError as exc:
            raise ApiError(422, str(exc), field="application") from None
        except StoreUnavailableError:
            raise store_unavailable("no key issued") from None
        note.after = {"application": application}
    response = jsonify({"application": application, "api_key": key})
    response.status_code = 201
    response.headers["Location"] = url_for("open311_keys.applications")
    return response


@keys.delete("/keys/<application>")
@require(Role.ADMIN)
def revoke(application: str) -> ResponseReturnValue:
    """Revoke ``application``'s key at once: 204, or 404 when it holds none."""
    with audited("open311.key_revoke", application[:64]) as note:
        try:
            had = services().backend.revoke_open311_key(application)
        except RejectedError as exc:
            raise ApiError(422, str(exc), field="application") from None
        except StoreUnavailableError:
            raise store_unavailable("key not revoked") from None
        if not had:
            raise ApiError(404, f"{application[:64]!r} holds no key")
        note.after = {"revoked": True}
    return "", 204
