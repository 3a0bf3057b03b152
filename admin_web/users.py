"""Users and desks under ``/api/v1``: admins manage the people who use the command post.

Admin only, except the desk list (any authenticated user)::

    GET    /users                                 [user, …] ordered by name
    POST   /users  {"name", "role", "municipalities"?, "desks"?, "password"?}
                                                  201 {"user", "password"?, "token"}
    GET    /users/{name}                          user
    PATCH  /users/{name}  {"role"?, "municipalities"?, "desks"?, "disabled"?}
                                                  200 user  (If-Match: "VERSION" → 412 if stale)
    POST   /users/{name}/password  {"password"?}  200 {"password"?}  (sessions end)
    POST   /users/{name}/tokens  {"label"?}       201 {"id", "token"}
    DELETE /users/{name}/tokens/{id}              204 (404 when he holds no such token)
    GET    /desks                                 {"desks": […], "views": […]}

A user is ``{"name", "role", "municipalities", "desks", "disabled", "tokens":
[{"id", "label", "created_ts"}], "created_ts", "changed_ts", "version"}``:
never a hash. A password or token the server generates is in the answer
that creates it, and nowhere else; a password an admin chooses must have 12
characters and not be one of the demo's. Disabling a user ends his sessions
and stops his tokens at once; a change of role, municipalities or desks
holds from his next request. Every change, done or refused, is audited
(``user.add``, ``user.update``, ``user.password``, ``user.token_issue``,
``user.token_revoke``) with no secret in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from flask import Blueprint, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from admin_web.audit import AuditNote, audited
from admin_web.auth import MAX_LABEL_LENGTH, Role, UnknownUserError, User, password_problem
from admin_web.context import services
from admin_web.guards import require
from admin_web.http_errors import ApiError, json_object_body, store_unavailable
from runtime.commands import shown
from runtime.errors import ConfigError, ConflictError, StoreUnavailableError

__all__ = ["ADD_FIELDS", "CHANGE_FIELDS", "IF_MATCH_PATTERN", "MAX_NAMES", "MAX_NAME_LENGTH",
           "users_api"]

ADD_FIELDS: Final = frozenset({"name", "role", "municipalities", "desks", "password"})
CHANGE_FIELDS: Final = frozenset({"role", "municipalities", "desks", "disabled"})
#: The most names a user's ``municipalities`` or ``desks`` may list, and the longest name.
MAX_NAMES: Final = 100
MAX_NAME_LENGTH: Final = 64
#: An ``If-Match`` the API reads (blanks around it aside): ``*``, or the version an ETag
#: gave, quoted (``"7"``, weak ``W/"7"``) or bare (``7``).
IF_MATCH_PATTERN: Final = r'\*|(?:W/)?"([0-9]{1,18})"|([0-9]{1,18})'
_IF_MATCH_RE: Final = re.compile(IF_MATCH_PATTERN)

users_api = Blueprint("users_api", __name__, url_prefix="/api/v1")


def _body(fields: frozenset[str], *, optional: bool = False) -> dict[str, Any]:
    if optional and not request.get_data():
        return {}
    body = json_object_body()
    unknown = next((name for name in body if name not in fields), None)
    if unknown is not None:
        raise ApiError(422, f"unknown field {shown(unknown)}", field=unknown[:64])
    return body


def _names(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) > MAX_NAMES
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_NAME_LENGTH for v in value)):
        raise ApiError(422, f"{name} must be a list of at most {MAX_NAMES} names",
                       field=name)
    return list(dict.fromkeys(value))


def check_desks(desks: list[str] | None) -> None:
    """Refuse (422) desk names the desk file does not have."""
    unknown = services().desks.unknown(desks or [])
    if unknown:
        raise ApiError(422, f"unknown desk {', '.join(map(shown, unknown))} (desks: "
                            f"{', '.join(services().desks.names())})", field="desks")


def check_password(password: object) -> str:
    """``password`` if a person may choose it; else a 422 saying why."""
    if not isinstance(password, str):
        raise ApiError(422, "password must be a string", field="password")
    problem = password_problem(password)
    if problem is not None:
        raise ApiError(422, problem, field="password")
    return password


@contextmanager
def registry_errors(note: AuditNote) -> Iterator[None]:
    """The registry's refusals as API answers (404, 409, 412, 422, 503)."""
    try:
        yield
    except UnknownUserError:
        raise ApiError(404, "unknown user") from None
    except ConflictError as exc:
        note.code = exc.code
        raise ApiError(412 if exc.code == "version_mismatch" else 409, str(exc)) from None
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from None
    except StoreUnavailableError:
        raise store_unavailable("users not changed") from None


def _user_or_404(name: str) -> User:
    try:
        return services().users.get(name)
    except UnknownUserError:
        raise ApiError(404, "unknown user") from None
    except StoreUnavailableError:
        raise store_unavailable("users not readable") from None


def _expected_version() -> int | None:
    """The version an ``If-Match`` header names (``"7"``, ``W/"7"`` or ``7``), or None
    (no header, or ``*``); a 400 for anything else."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    match = _IF_MATCH_RE.fullmatch(raw.strip())
    if match is None:
        raise ApiError(400, "If-Match must be the user's version, as its ETag gives it")
    digits = match[1] or match[2]
    return int(digits) if digits else None


def _stale(name: str, version: int, expected: int) -> ConflictError:
    return ConflictError(f"user {name} was changed meanwhile (version {version}, not "
                         f"{expected}); read it again", names=[name], code="version_mismatch")


def _with_etag(user: User, status: int = 200) -> ResponseReturnValue:
    response = jsonify(user.public())
    response.status_code = status
    response.headers["ETag"] = f'"{user.version}"'
    return response


@users_api.get("/users")
@require(Role.ADMIN)
def list_users() -> ResponseReturnValue:
    """Every user, ordered by name."""
    try:
        return jsonify([u.public() for u in services().users.all()])
    except StoreUnavailableError:
        raise store_unavailable("users not readable") from None


@users_api.get("/users/<name>")
@require(Role.ADMIN)
def get_user(name: str) -> ResponseReturnValue:
    """One user, with his version as ``ETag``."""
    return _with_etag(_user_or_404(name))


@users_api.post("/users")
@require(Role.ADMIN)
def add_user() -> ResponseReturnValue:
    """Add a user: 201 with his generated token (and password, when none was given)."""
    with audited("user.add") as note:
        body = _body(ADD_FIELDS)
        name, role = body.get("name"), body.get("role")
        if not isinstance(name, str) or not name:
            raise ApiError(422, "name must be a user name", field="name")
        note.target = name[:64]
        if not isinstance(role, str):
            raise ApiError(422, f"role must be one of {', '.join(r.value for r in Role)}",
                           field="role")
        towns, desks = _names(body, "municipalities"), _names(body, "desks")
        note.params = {"name": name[:64], "role": role[:64], "municipalities": towns,
                       "desks": desks, "password": "given" if "password" in body else None}
        check_desks(desks)
        password = check_password(body["password"]) if "password" in body else None
        with registry_errors(note):
            generated, token = services().users.add(
                name, role, municipalities=towns or (), password=password, desks=desks or ())
            user = services().users.get(name)
        note.after = user.public()
    answer: dict[str, Any] = {"user": user.public(), "token": token}
    if password is None:
        answer["password"] = generated
    response = jsonify(answer)
    response.status_code = 201
    response.headers["Location"] = url_for("users_api.get_user", name=name)
    return response


@users_api.patch("/users/<name>")
@require(Role.ADMIN)
def change_user(name: str) -> ResponseReturnValue:
    """Change a user's role, municipalities or desks, or disable or enable him."""
    with audited("user.update", name[:64]) as note:
        body = _body(CHANGE_FIELDS)
        note.params = dict(body)
        role, disabled = body.get("role"), body.get("disabled")
        if role is not None and not isinstance(role, str):
            raise ApiError(422, "role must be a string", field="role")
        if disabled is not None and not isinstance(disabled, bool):
            raise ApiError(422, "disabled must be true or false", field="disabled")
        towns, desks = _names(body, "municipalities"), _names(body, "desks")
        check_desks(desks)
        expected = _expected_version()
        users = services().users
        with registry_errors(note):
            user = users.get(name)
            note.before = user.public()
            # The precondition holds for the whole request, a change asked for or not;
            # each change checks it again as it lands, so that none is lost in between.
            if expected is not None and user.version != expected:
                raise _stale(name, user.version, expected)
            if role is not None or towns is not None or desks is not None:
                user = users.update(name, role=role, municipalities=towns, desks=desks,
                                    expected_version=expected)
                if expected is not None:
                    expected = user.version
            if disabled is not None and disabled != user.disabled:
                user = users.set_disabled(name, disabled, expected_version=expected)
        note.after = user.public()
    return _with_etag(user)


@users_api.post("/users/<name>/password")
@require(Role.ADMIN)
def reset_password(name: str) -> ResponseReturnValue:
    """Set a user's password (``password`` given) or reset it to a generated one (shown
    once); every session of his ends."""
    with audited("user.password", name[:64]) as note:
        body = _body(frozenset({"password"}), optional=True)
        note.params = {"password": "given" if "password" in body else "generated"}
        password = check_password(body["password"]) if "password" in body else None
        _user_or_404(name)
        with registry_errors(note):
            generated = services().users.reset_password(name, password)
        note.after = {"sessions": "ended"}
    return jsonify({} if password is not None else {"password": generated})


@users_api.post("/users/<name>/tokens")
@require(Role.ADMIN)
def issue_token(name: str) -> ResponseReturnValue:
    """Issue a user a new API token: 201 ``{"id", "token"}``, the token shown once."""
    with audited("user.token_issue", name[:64]) as note:
        body = _body(frozenset({"label"}), optional=True)
        label = body.get("label", "")
        if not isinstance(label, str) or len(label) > MAX_LABEL_LENGTH:
            raise ApiError(422, f"label must be a string of at most {MAX_LABEL_LENGTH} "
                                "characters", field="label")
        note.params = {"label": label}
        _user_or_404(name)
        with registry_errors(note):
            token_id, token = services().users.issue_token(name, label)
        note.after = {"id": token_id}
    response = jsonify({"id": token_id, "token": token})
    response.status_code = 201
    response.headers["Location"] = url_for("users_api.get_user", name=name)
    return response


@users_api.delete("/users/<name>/tokens/<token_id>")
@require(Role.ADMIN)
def revoke_token(name: str, token_id: str) -> ResponseReturnValue:
    """Revoke one API token of a user at once: 204, or 404 when he holds no such token."""
    with audited("user.token_revoke", f"{name[:64]}/{token_id[:64]}") as note:
        _user_or_404(name)
        with registry_errors(note):
            revoked = services().users.revoke_token(name, token_id)
        if not revoked:
            raise ApiError(404, f"{name[:64]} holds no token {token_id[:64]!r}")
        note.after = {"revoked": revoked}
    return "", 204


@users_api.get("/desks")
@require(Role.VIEWER)
def desks() -> ResponseReturnValue:
    """The control room's desks and the sensitive views they read."""
    return jsonify(services().desks.public())
