"""The JSON API under ``/api/v1`` (CONTRACT.md "HTTP API")."""

from __future__ import annotations

from typing import Final

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from admin_web.auth import Role
from admin_web.backend import HEALTH_STATUSES
from admin_web.context import services
from admin_web.guards import require
from admin_web.redact import redact_urls

API_PREFIX: Final = "/api/v1"

api = Blueprint("api", __name__, url_prefix=API_PREFIX)


@api.get("/health")
def health() -> ResponseReturnValue:
    """Runtime health, without authentication: 200 when ok or starting, 503 when degraded."""
    body = services().backend.health()
    status = body.get("status")
    if status not in HEALTH_STATUSES:
        raise ValueError(f"backend health status {status!r} is not one of the contract's")
    return jsonify(body), 503 if status == "degraded" else 200


@api.get("/tree")
@require(Role.VIEWER)
def tree() -> ResponseReturnValue:
    """The root node of the supervision tree."""
    return jsonify(services().backend.tree())


@api.get("/system")
@require(Role.ADMIN)
def system() -> ResponseReturnValue:
    """Versions and connections; every URL has its credentials redacted here."""
    return jsonify(redact_urls(services().backend.system()))
