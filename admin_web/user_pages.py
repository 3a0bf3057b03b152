"""The users page (admin): list, add, change, disable, reset passwords, issue tokens.

Each form posts with the session's CSRF token and does what the users API
does (:mod:`admin_web.users`), audited under the same action names. A
generated password or token is shown once, in the page that answers the form
(never in a redirect, a cookie or the trail).
"""

from __future__ import annotations

from typing import Any, Final

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from admin_web.audit import audited
from admin_web.auth import Role
from admin_web.context import services
from admin_web.guards import check_csrf, require_login
from admin_web.http_errors import ApiError
from admin_web.users import check_desks, check_password, registry_errors
from runtime.errors import StoreUnavailableError

__all__ = ["user_pages"]

_MAX_FIELD: Final = 1024

user_pages = Blueprint("user_pages", __name__)


def _split(text: str) -> list[str]:
    """A comma- or space-separated list of names."""
    return [p for p in text.replace(",", " ").split() if p]


def _render(status: int = 200, *, error: str | None = None,
            issued: dict[str, Any] | None = None) -> ResponseReturnValue:
    try:
        users = services().users.all()
    except StoreUnavailableError:
        users = []
        error = error or "the users cannot be read now; try again"
    return render_template("users.html", users=users, roles=[r.value for r in Role],
                           desks=services().desks, error=error, issued=issued), status


@user_pages.get("/users")
@require_login(Role.ADMIN)
def users_page() -> ResponseReturnValue:
    """Every user, with the forms that change them."""
    return _render()


def _form(name: str) -> str:
    value = request.form.get(name, "")
    if len(value) > _MAX_FIELD:
        raise ApiError(422, f"{name} is too long", field=name)
    return value


@user_pages.post("/users")
@require_login(Role.ADMIN)
def add_user() -> ResponseReturnValue:
    """Add a user; his generated password and token are shown once."""
    check_csrf()
    try:
        with audited("user.add") as note:
            name, role = _form("name").strip(), _form("role")
            towns, desks = _split(_form("municipalities")), request.form.getlist("desks")
            note.target = name[:64]
            note.params = {"name": name[:64], "role": role[:64], "municipalities": towns,
                           "desks": desks, "password": None}
            check_desks(desks)
            with registry_errors(note):
                password, token = services().users.add(name, role, municipalities=towns,
                                                        desks=desks)
                note.after = services().users.get(name).public()
    except ApiError as exc:
        return _render(exc.status, error=exc.error)
    return _render(201, issued={"name": name, "password": password, "token": token})


@user_pages.post("/users/<name>")
@require_login(Role.ADMIN)
def change_user(name: str) -> ResponseReturnValue:
    """One form's change: ``op`` is ``update``, ``disable``, ``enable``, ``password`` or
    ``token``."""
    check_csrf()
    op = _form("op")
    issued: dict[str, Any] | None = None
    users = services().users
    try:
        if op == "update":
            with audited("user.update", name[:64]) as note:
                towns, desks = _split(_form("municipalities")), request.form.getlist("desks")
                note.params = {"role": _form("role"), "municipalities": towns, "desks": desks}
                check_desks(desks)
                with registry_errors(note):
                    note.before = users.get(name).public()
                    note.after = users.update(name, role=_form("role"), municipalities=towns,
                                              desks=desks).public()
        elif op in ("disable", "enable"):
            with audited("user.update", name[:64]) as note:
                note.params = {"disabled": op == "disable"}
                with registry_errors(note):
                    note.before = users.get(name).public()
                    note.after = users.set_disabled(name, op == "disable").public()
        elif op == "password":
            with audited("user.password", name[:64]) as note:
                chosen = _form("password")
                note.params = {"password": "given" if chosen else "generated"}
                password = check_password(chosen) if chosen else None
                with registry_errors(note):
                    users.get(name)
                    generated = users.reset_password(name, password)
                note.after = {"sessions": "ended"}
            issued = {"name": name, "password": generated if password is None else None}
        elif op == "token":
            with audited("user.token_issue", name[:64]) as note:
                label = _form("label")[:64]
                note.params = {"label": label}
                with registry_errors(note):
                    token_id, token = users.issue_token(name, label)
                note.after = {"id": token_id}
            issued = {"name": name, "token": token}
        else:
            raise ApiError(400, f"unknown operation {op[:32]!r}")
    except ApiError as exc:
        return _render(exc.status, error=exc.error)
    return _render(issued=issued)
