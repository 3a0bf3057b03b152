"""The services one admin-web app is built on, reachable from any request."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Flask, current_app

from admin_web.auth import UserRegistry
from admin_web.backend import AdminBackend
from admin_web.throttle import LoginThrottle

_EXTENSION: str = "commandpost"


@dataclass(frozen=True)
class Services:
    """The runtime's read model, the user registry and the login throttle behind one app."""

    backend: AdminBackend
    users: UserRegistry
    throttle: LoginThrottle = field(default_factory=LoginThrottle)


def install(app: Flask, services: Services) -> None:
    """Attach ``services`` to ``app`` (once, while building it)."""
    app.extensions[_EXTENSION] = services


def services() -> Services:
    """The services of the app handling the current request."""
    found = current_app.extensions[_EXTENSION]
    assert isinstance(found, Services)
    return found
