"""The services one admin-web app is built on, reachable from any request."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Flask, current_app

from admin_web.auth import UserRegistry
from admin_web.backend import AdminBackend
from admin_web.desks import DeskBook, builtin_desks
from admin_web.throttle import LoginThrottle

_EXTENSION: str = "commandpost"


@dataclass(frozen=True)
class Services:
    """The runtime's read model, the user registry, the login throttle and the desks
    behind one app."""

    backend: AdminBackend
    users: UserRegistry
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    desks: DeskBook = field(default_factory=builtin_desks)


def install(app: Flask, services: Services) -> None:
    """Attach ``services`` to ``app`` (once, while building it)."""
    app.extensions[_EXTENSION] = services


def services() -> Services:
    """The services of the app handling the current request."""
    found = current_app.extensions[_EXTENSION]
    assert isinstance(found, Services)
    return found
