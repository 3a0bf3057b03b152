"""Users, roles, passwords and API tokens of the admin web.

Passwords are stored as scrypt hashes (``scrypt$n$r$p$salt$hash``, hex salt
and hash), API tokens only as their sha256; every comparison of secrets is
constant-time. Roles are ordered ``viewer < operator < admin``; an operator may
be limited to some municipalities, and to some desks (:mod:`admin_web.desks`)::

    users = UserRegistry()                         # in memory; in Redis, shared and kept:
    users = UserRegistry(RedisUserRecords("redis://127.0.0.1:6379/0"))
    password, token = users.add("alice", Role.OPERATOR, municipalities=["dijon"],
                                desks=["traffic"])
    user = users.by_token(token)
    users.can(user, Role.OPERATOR, "dijon")        # True
    users.can(user, Role.OPERATOR, "talant")       # False
    users.update("alice", role="viewer", expected_version=user.version)
    users.set_disabled("alice")                    # her sessions and tokens stop at once
    token_id, token = users.issue_token("bob", "ci"); users.revoke_token("bob", token_id)

Each user is one record (:mod:`runtime.users`: role, scopes, desks, hashes,
token digests, disabled flag, session nonce, times, a version), changed
atomically: two admins changing the same user both see their change kept.
A password a person chooses must pass :func:`password_problem` (12
characters, not one of the demo's).

Login sessions live in signed cookies, which the server cannot take back; so
each user also has a session nonce kept here, which a login copies into the
cookie and every request compares. :meth:`UserRegistry.end_sessions` (a
logout) and :meth:`UserRegistry.set_password` draw a new one, and every
cookie issued before, stolen copies included, stops working at once::

    nonce = users.session_nonce("alice")            # at login, into the cookie
    users.check_session("alice", nonce)             # each request: the user, or AuthError
    users.end_sessions("alice")                     # logout: every session of alice ends
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from runtime.errors import AuthError, ConfigError, ConflictError
from runtime.users import MemoryUserRecords, UserRecords

# scrypt cost: 16 MiB and some tens of milliseconds per check, the usual
# interactive-login setting; stored with each hash so it can be raised later.
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SALT_BYTES: Final = 16
_KEY_BYTES: Final = 32
# Bounds on what a stored hash may ask for, so a corrupt or hostile entry
# cannot make a login allocate gigabytes.
_MAX_N: Final = 2**20
_MAX_R: Final = 32
_MAX_P: Final = 16

MIN_PASSWORD_LENGTH: Final = 12
MIN_TOKEN_LENGTH: Final = 20
# Longer presented secrets are refused before hashing: no real one is that long.
MAX_SECRET_LENGTH: Final = 1024

#: A user's name: 1 to 64 of ``A-Z a-z 0-9 _ . -`` (a full match).
NAME_PATTERN: Final = r"[A-Za-z0-9_.-]{1,64}"
_NAME_RE: Final = re.compile(NAME_PATTERN)
#: Names the runtime's own callers use (a command's ``caller``): no user may take one, so
#: that an operator's command never passes for a crisis plan's or a schedule's.
RESERVED_NAMES: Final = frozenset({"crisis", "schedule", "dispatch", "alarms", "journal",
                                   "system", "open311", "phone"})
#: A municipality's slug, as a user's scope names it (a full match).
SLUG_PATTERN: Final = r"[a-z0-9]+(?:-[a-z0-9]+)*"
_SLUG_RE: Final = re.compile(SLUG_PATTERN)
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
#: An API token's public id (a full match).
TOKEN_ID_PATTERN: Final = r"[0-9a-f]{8,32}"
_TOKEN_ID_RE: Final = re.compile(TOKEN_ID_PATTERN)
#: Desk names, as the desk file spells them (:mod:`admin_web.desks`; a full match).
DESK_PATTERN: Final = r"[a-z][a-z0-9_]{0,31}"
_DESK_RE: Final = re.compile(DESK_PATTERN)
#: The most API tokens one user may hold at once, and the longest label of one.
MAX_TOKENS: Final = 20
MAX_LABEL_LENGTH: Final = 64

#: Passwords a person must not choose: those the demo, the project's examples and its
#: tests show to everyone, and the usual first guesses. Compared case-insensitively.
DEMO_PASSWORDS: Final = frozenset({
    "admin-password", "operator-password", "viewer-password", "a-new-password",
    "change-me", "changeme", "change-me-now", "password", "password123", "commandpost",
    "commandpost-admin", "admin", "administrator", "123456789012", "qwertyuiopas",
})


class Role(StrEnum):
    """What a user may do; ordered ``viewer < operator < admin``."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Position in the order: viewer 0, operator 1, admin 2."""
        return _RANKS[self]

    # str's own ordering is alphabetical (admin < operator < viewer), the
    # opposite of privilege, so comparisons between roles go by rank.
    def __lt__(self, other: str) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: str) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: str) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: str) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank >= other.rank


_RANKS: Final = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def parse_role(value: str | Role) -> Role:
    """``value`` as a :class:`Role`; raises :class:`ConfigError` when unknown."""
    try:
        return Role(value)
    except ValueError:
        raise ConfigError(
            f"unknown role {value!r}; expected one of {[r.value for r in Role]}"
        ) from None


@dataclass(frozen=True)
class ApiToken:
    """One API token of a user: its public ``id`` (to list and revoke it) and the SHA-256
    of the secret, never the secret."""

    id: str
    digest: str = field(repr=False)
    label: str = ""
    created_ts: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _TOKEN_ID_RE.fullmatch(self.id):
            raise ConfigError(f"token id must be 8-32 lowercase hex digits: {self.id!r}")
        if not isinstance(self.digest, str) or not _HEX64_RE.fullmatch(self.digest):
            raise ConfigError(f"token {self.id}: digest must be 64 lowercase hex digits")
        if not isinstance(self.label, str) or len(self.label) > MAX_LABEL_LENGTH:
            raise ConfigError(f"token {self.id}: label must be at most {MAX_LABEL_LENGTH} "
                              "characters")

    def public(self) -> dict[str, Any]:
        """What the API shows of it: never the digest."""
        return {"id": self.id, "label": self.label, "created_ts": self.created_ts}


@dataclass(frozen=True)
class User:
    """One admin-web user. ``municipalities`` empty means every municipality; ``desks``
    empty means no desk (the role and the municipalities alone say what he may do)."""

    name: str
    role: Role
    municipalities: frozenset[str]
    password_hash: str = field(repr=False)
    tokens: tuple[ApiToken, ...] = ()
    desks: frozenset[str] = frozenset()
    disabled: bool = False
    created_ts: float = 0.0
    changed_ts: float = 0.0
    version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ConfigError(f"user name must be 1-64 of A-Z a-z 0-9 _ . -: {self.name!r}")
        if self.name.lower() in RESERVED_NAMES:
            raise ConfigError(f"user name {self.name!r} is reserved for the runtime's own "
                              "callers")
        if not isinstance(self.role, Role):
            raise ConfigError(f"user {self.name}: role must be a Role, not {self.role!r}")
        if not isinstance(self.municipalities, frozenset):
            raise ConfigError(f"user {self.name}: municipalities must be a frozenset")
        for slug in self.municipalities:
            if not isinstance(slug, str) or not _SLUG_RE.fullmatch(slug):
                raise ConfigError(f"user {self.name}: bad municipality slug {slug!r}")
        if not isinstance(self.desks, frozenset):
            raise ConfigError(f"user {self.name}: desks must be a frozenset")
        for desk in self.desks:
            if not isinstance(desk, str) or not _DESK_RE.fullmatch(desk):
                raise ConfigError(f"user {self.name}: bad desk name {desk!r}")
        _parse_scrypt(self.password_hash)
        if not all(isinstance(t, ApiToken) for t in self.tokens):
            raise ConfigError(f"user {self.name}: tokens must be ApiTokens")
        if len({t.id for t in self.tokens}) != len(self.tokens):
            raise ConfigError(f"user {self.name}: two tokens share an id")
        if len(self.tokens) > MAX_TOKENS:
            raise ConfigError(f"user {self.name}: at most {MAX_TOKENS} API tokens")

    @property
    def token_hash(self) -> str:
        """The digest of the user's first API token ("" when he holds none)."""
        return self.tokens[0].digest if self.tokens else ""

    def can(self, role: Role, municipality: str | None = None) -> bool:
        """Whether this user holds ``role`` (or above), within ``municipality`` if given."""
        if self.disabled or self.role < role:
            return False
        if municipality is None or self.role is Role.ADMIN or not self.municipalities:
            return True
        return municipality in self.municipalities

    def public(self) -> dict[str, Any]:
        """The user as the API shows him: no hash, no nonce."""
        return {
            "name": self.name,
            "role": self.role.value,
            "municipalities": sorted(self.municipalities),
            "desks": sorted(self.desks),
            "disabled": self.disabled,
            "tokens": [t.public() for t in self.tokens],
            "created_ts": self.created_ts,
            "changed_ts": self.changed_ts,
            "version": self.version,
        }

    def to_record(self, nonce: str) -> dict[str, Any]:
        """The stored record (:mod:`runtime.users`): hashes and digests, never a secret."""
        return {
            "name": self.name,
            "role": self.role.value,
            "municipalities": sorted(self.municipalities),
            "desks": sorted(self.desks),
            "password_hash": self.password_hash,
            "tokens": [{"id": t.id, "digest": t.digest, "label": t.label,
                        "created_ts": t.created_ts} for t in self.tokens],
            "disabled": self.disabled,
            "nonce": nonce,
            "created_ts": self.created_ts,
            "changed_ts": self.changed_ts,
            "version": self.version,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> User:
        """The user of a stored record; :class:`ConfigError` when it is not one."""
        try:
            tokens = tuple(ApiToken(id=t["id"], digest=t["digest"], label=t.get("label", ""),
                                    created_ts=float(t.get("created_ts", 0.0)))
                           for t in record.get("tokens") or ())
            return cls(
                name=record["name"], role=parse_role(record["role"]),
                municipalities=frozenset(record.get("municipalities") or ()),
                password_hash=record["password_hash"], tokens=tokens,
                desks=frozenset(record.get("desks") or ()),
                disabled=bool(record.get("disabled", False)),
                created_ts=float(record.get("created_ts", 0.0)),
                changed_ts=float(record.get("changed_ts", 0.0)),
                version=int(record.get("version", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"stored user {record.get('name')!r} is malformed: "
                              f"{type(exc).__name__}: {exc}") from None


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password`` as ``scrypt$n$r$p$salt$hash``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, _KEY_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${key.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the scrypt hash ``encoded`` (constant-time compare).

    Raises :class:`ConfigError` when ``encoded`` is not a valid hash.
    """
    n, r, p, salt, expected = _parse_scrypt(encoded)
    if len(password) > MAX_SECRET_LENGTH:
        return False
    key = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(key, expected)


def hash_token(token: str) -> str:
    """The stored form of an API token: its sha256 as lowercase hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # OpenSSL needs about 128*r*(n+p) bytes; the margin covers its bookkeeping.
    maxmem = 128 * r * (n + p + 2) + 2**20
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen
    )


def _parse_scrypt(encoded: object) -> tuple[int, int, int, bytes, bytes]:
    if not isinstance(encoded, str):
        raise ConfigError("password hash must be a string")
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ConfigError("password hash must look like scrypt$n$r$p$salt$hash")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError:
        raise ConfigError("password hash has a non-numeric cost or non-hex salt/hash") from None
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0):
        raise ConfigError(f"scrypt n must be a power of two in 2..{_MAX_N}: {n}")
    if not (1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ConfigError(f"scrypt r must be in 1..{_MAX_R} and p in 1..{_MAX_P}")
    if len(salt) < 8 or len(key) < 16:
        raise ConfigError("scrypt salt or hash too short")
    return n, r, p, salt, key


def _check_password_length(name: str, password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_SECRET_LENGTH:
        raise ConfigError(
            f"user {name}: password must be {MIN_PASSWORD_LENGTH}-{MAX_SECRET_LENGTH} long"
        )


def password_problem(password: str, known: Iterable[str] = ()) -> str | None:
    """Why ``password`` may not be chosen by a person, or None.

    Refused: fewer than :data:`MIN_PASSWORD_LENGTH` characters (or more than
    the longest accepted), one of :data:`DEMO_PASSWORDS`, or one of ``known``
    (the passwords of a demo's credentials file).
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_SECRET_LENGTH:
        return f"a password has at most {MAX_SECRET_LENGTH} characters"
    if password.lower() in DEMO_PASSWORDS or password in set(known):
        return "that password is one of the demo's, known to everyone; choose another"
    return None


def _check_token_length(name: str, token: str) -> None:
    if not MIN_TOKEN_LENGTH <= len(token) <= MAX_SECRET_LENGTH:
        raise ConfigError(
            f"user {name}: token must be {MIN_TOKEN_LENGTH}-{MAX_SECRET_LENGTH} long")


@functools.cache
def _dummy_hash() -> str:
    # Checked against when the name is unknown, so that a failed login takes
    # as long whether or not the user exists.
    return hash_password(secrets.token_urlsafe(16))


class UnknownUserError(AuthError):
    """No user of that name (an API answers 404)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown user {name!r}")
        self.name = name


def _new_token_id() -> str:
    return secrets.token_hex(8)


def _new_nonce() -> str:
    return secrets.token_urlsafe(16)


class UserRegistry:
    """The admin web's users, kept by ``records`` (:mod:`runtime.users`): in memory by
    default, in Redis (:class:`runtime.users.RedisUserRecords`) so that they outlive the
    process and every admin-web process sees the same ones. Safe to share between
    request threads; each change is atomic (no change of another admin is lost), and a
    disabled user's sessions and tokens stop working at the next request."""

    def __init__(self, records: UserRecords | None = None) -> None:
        self._records: UserRecords = records if records is not None else MemoryUserRecords()

    @property
    def records(self) -> UserRecords:
        """Where the users are kept."""
        return self._records

    # -- reading ---------------------------------------------------------------------------

    def _record(self, name: str) -> dict[str, Any]:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise UnknownUserError(str(name)[:64])
        record = self._records.get(name)
        if record is None:
            raise UnknownUserError(name)
        return record

    def get(self, name: str) -> User:
        """The user called ``name``; raises :class:`UnknownUserError` when there is none."""
        return User.from_record(self._record(name))

    def all(self) -> list[User]:
        """Every user, ordered by name."""
        return [User.from_record(r) for r in self._records.all()]

    def has_admin(self) -> bool:
        """Whether some admin is enabled (``commandpost run`` needs one)."""
        return any(u.role is Role.ADMIN and not u.disabled for u in self.all())

    def by_token(self, token: str) -> User:
        """The enabled user holding API ``token``; raises :class:`AuthError` otherwise."""
        if not token or len(token) > MAX_SECRET_LENGTH:
            raise AuthError("invalid token")
        digest = hash_token(token)
        record = self._records.record_of_token(digest)
        if record is None:
            raise AuthError("invalid token")
        user = User.from_record(record)
        # The index says who; the record must agree (a revoked token's index entry goes
        # with the same write, but a record is the authority).
        if user.disabled or not any(hmac.compare_digest(t.digest, digest)
                                    for t in user.tokens):
            raise AuthError("invalid token")
        return user

    def check_password(self, name: str, password: str) -> User:
        """The user ``name`` if ``password`` is his and he is enabled; raises
        :class:`AuthError` otherwise, saying the same whatever was wrong."""
        try:
            user: User | None = self.get(name)
        except (UnknownUserError, ConfigError):
            user = None
        encoded = user.password_hash if user is not None else _dummy_hash()
        if not verify_password(password, encoded) or user is None or user.disabled:
            raise AuthError("invalid name or password")
        return user

    def session_nonce(self, name: str) -> str:
        """The nonce a new login session of ``name`` carries; :class:`AuthError` if unknown
        or disabled."""
        record = self._record(name)
        nonce = record.get("nonce")
        if record.get("disabled") or not isinstance(nonce, str) or not nonce:
            raise AuthError("unknown user")
        return nonce

    def check_session(self, name: str, nonce: str) -> User:
        """The user of a login session carrying ``nonce``; :class:`AuthError` when the user
        is unknown or disabled, or his sessions have been ended since (logout, new
        password)."""
        try:
            record = self._record(name)
        except UnknownUserError:
            raise AuthError("session ended") from None
        current = record.get("nonce")
        if not isinstance(current, str) or not hmac.compare_digest(
                current.encode(), nonce.encode()):
            raise AuthError("session ended")
        user = User.from_record(record)
        if user.disabled:
            raise AuthError("session ended")
        return user

    def can(self, user: User, role: Role, municipality: str | None = None) -> bool:
        """Whether ``user`` holds ``role`` or above, within ``municipality`` if given.

        Admins act everywhere; a user with no municipality listed acts on all.
        """
        return user.can(role, municipality)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(_NAME_RE.fullmatch(name)) and \
            self._records.get(name) is not None

    def __len__(self) -> int:
        return len(self._records.all())

    # -- changing --------------------------------------------------------------------------

    def _change(self, name: str, edit: Callable[[User], User], *, new_nonce: bool = False,
                expected_version: int | None = None, bump: bool = True) -> User:
        """Apply ``edit`` to ``name`` atomically; its version goes up by one when the edit
        changed him (and ``bump``: a logout changes nothing an admin sees), so that a change
        that changes nothing (revoking a token he does not hold) leaves his ETag as it was."""
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise UnknownUserError(str(name)[:64])
        nonce = _new_nonce() if new_nonce else None
        now = time.time()

        def update(record: dict[str, Any] | None) -> dict[str, Any]:
            if record is None:
                raise UnknownUserError(name)
            user = User.from_record(record)
            if expected_version is not None and user.version != expected_version:
                raise ConflictError(
                    f"user {name} was changed meanwhile (version {user.version}, not "
                    f"{expected_version}); read it again", names=[name],
                    code="version_mismatch")
            changed = edit(user)
            if bump and changed != user:
                changed = dataclasses.replace(changed, changed_ts=now, version=user.version + 1)
            return changed.to_record(nonce or str(record.get("nonce") or _new_nonce()))

        return User.from_record(self._records.change(name, update))

    def add(
        self,
        name: str,
        role: Role | str,
        municipalities: Iterable[str] = (),
        password: str | None = None,
        token: str | None = None,
        *,
        desks: Iterable[str] = (),
        with_token: bool = True,
    ) -> tuple[str, str]:
        """Add a user; returns ``(password, token)`` in clear.

        A password or token not given is generated (``secrets``); only their
        hashes are kept, so the returned values are the only copy. With
        ``with_token`` False and no ``token``, the user gets no API token (the
        token returned is ""). Raises :class:`ConfigError` for a taken name or
        token, a bad role, slug or desk name, or a password or token that is
        too short.
        """
        for what, values in (("municipalities", municipalities), ("desks", desks)):
            if isinstance(values, str):
                raise ConfigError(f"{what} must be a collection of names, not one string")
        if password is None:
            password = secrets.token_urlsafe(16)
        else:
            _check_password_length(name, password)
        if token is None and with_token:
            token = secrets.token_urlsafe(32)
        elif token is not None:
            _check_token_length(name, token)
        now = time.time()
        # Hashing is slow on purpose: before the change, not inside it.
        tokens = (ApiToken(id=_new_token_id(), digest=hash_token(token), label="initial",
                           created_ts=now),) if token else ()
        user = User(name=name, role=parse_role(role), municipalities=frozenset(municipalities),
                    password_hash=hash_password(password), tokens=tokens,
                    desks=frozenset(desks), created_ts=now, changed_ts=now, version=1)
        nonce = _new_nonce()

        def create(record: dict[str, Any] | None) -> dict[str, Any]:
            if record is not None:
                raise ConfigError(f"user {name!r} already exists")
            return user.to_record(nonce)

        self._records.change(name, create)
        return password, token or ""

    def set_password(self, name: str, password: str) -> None:
        """Give ``name`` a new password, and end every session he has open.

        Raises :class:`UnknownUserError` for an unknown user and :class:`ConfigError`
        for a password that is too short or too long.
        """
        _check_password_length(name, password)
        encoded = hash_password(password)
        self._change(name, lambda u: dataclasses.replace(u, password_hash=encoded),
                     new_nonce=True)

    def reset_password(self, name: str, password: str | None = None) -> str:
        """Set ``name``'s password to ``password``, or to a generated one when None, and end
        his sessions; returns the password (the only copy of a generated one)."""
        if password is None:
            password = secrets.token_urlsafe(16)
        self.set_password(name, password)
        return password

    def end_sessions(self, name: str) -> None:
        """End every login session of ``name`` (a logout); unknown names are ignored."""
        with contextlib.suppress(UnknownUserError):
            self._change(name, lambda u: u, new_nonce=True, bump=False)

    def update(self, name: str, *, role: Role | str | None = None,
               municipalities: Iterable[str] | None = None, desks: Iterable[str] | None = None,
               expected_version: int | None = None) -> User:
        """Change ``name``'s role, municipalities or desks (those given); returns the user.

        ``expected_version`` (the ``version`` the caller read) refuses the change
        with :class:`ConflictError` (``version_mismatch``) if another landed since.
        Demoting the last enabled admin is refused (:class:`ConflictError`).
        """
        for what, values in (("municipalities", municipalities), ("desks", desks)):
            if isinstance(values, str):
                raise ConfigError(f"{what} must be a collection of names, not one string")
        new_role = parse_role(role) if role is not None else None
        if new_role is not None and new_role is not Role.ADMIN:
            self._keep_an_admin(name)
        towns = frozenset(municipalities) if municipalities is not None else None
        new_desks = frozenset(desks) if desks is not None else None

        def edit(user: User) -> User:
            return dataclasses.replace(
                user, role=new_role or user.role,
                municipalities=user.municipalities if towns is None else towns,
                desks=user.desks if new_desks is None else new_desks)

        # A change of role or scope takes effect at the next request; open sessions stay.
        return self._change(name, edit, expected_version=expected_version)

    def set_disabled(self, name: str, disabled: bool = True, *,
                     expected_version: int | None = None) -> User:
        """Disable ``name`` (every session and token of his stops working at once) or enable
        him again. Disabling the last enabled admin is refused (:class:`ConflictError`), and
        so is a change of a user no longer at ``expected_version`` (``version_mismatch``)."""
        if disabled:
            self._keep_an_admin(name)
        return self._change(name, lambda u: dataclasses.replace(u, disabled=disabled),
                            new_nonce=disabled, expected_version=expected_version)

    def issue_token(self, name: str, label: str = "") -> tuple[str, str]:
        """A new API token for ``name``: ``(token id, token)``, the token in clear once."""
        token = secrets.token_urlsafe(32)
        item = ApiToken(id=_new_token_id(), digest=hash_token(token), label=label,
                        created_ts=time.time())

        def edit(user: User) -> User:
            if any(t.id == item.id for t in user.tokens):
                return user  # the same change, tried again after a lost reply
            if len(user.tokens) >= MAX_TOKENS:
                raise ConfigError(f"user {name} holds {MAX_TOKENS} tokens already; revoke one")
            return dataclasses.replace(user, tokens=(*user.tokens, item))

        self._change(name, edit)
        return item.id, token

    def revoke_token(self, name: str, token_id: str | None = None) -> int:
        """Revoke ``name``'s token ``token_id`` (every token of his when None) at once;
        returns how many were revoked."""
        revoked = 0

        def edit(user: User) -> User:
            nonlocal revoked
            kept = tuple(t for t in user.tokens if token_id is not None and t.id != token_id)
            revoked = len(user.tokens) - len(kept)
            return dataclasses.replace(user, tokens=kept)

        self._change(name, edit)
        return revoked

    def _keep_an_admin(self, name: str) -> None:
        """Refuse to take the admin role from ``name`` if no other admin would be left."""
        admins = [u.name for u in self.all() if u.role is Role.ADMIN and not u.disabled]
        if admins == [name]:
            raise ConflictError(f"{name} is the last enabled admin; make another admin first",
                                names=[name], code="last_admin")


DEMO_USERS: Final = (("admin", Role.ADMIN), ("operator", Role.OPERATOR), ("viewer", Role.VIEWER))


def create_demo_users(
    registry: UserRegistry, municipalities: Iterable[str] = ()
) -> dict[str, dict[str, str]]:
    """Add ``admin``, ``operator`` and ``viewer`` with generated credentials.

    The operator is scoped to ``municipalities`` (the demo's; empty means all).
    Returns ``{"admin": {"password": …, "token": …}, "operator": {…}, "viewer": {…}}``.
    """
    scope = list(municipalities)
    creds: dict[str, dict[str, str]] = {}
    for name, role in DEMO_USERS:
        password, token = registry.add(
            name, role, municipalities=scope if role is Role.OPERATOR else ()
        )
        creds[name] = {"password": password, "token": token}
    return creds


def write_credentials(path: str | os.PathLike[str], creds: Mapping[str, Mapping[str, str]]) -> None:
    """Write ``creds`` as JSON to ``path``, readable by its owner only (mode 0600).

    The file is created with that mode (never wider, not even for a moment)
    under a temporary name and renamed over ``path``, so an existing file with
    a wider mode is replaced rather than reused. Raises :class:`ConfigError`
    when it cannot be written.
    """
    target = os.fspath(path)
    tmp = f"{target}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    data = (json.dumps(creds, indent=2, sort_keys=True) + "\n").encode("utf-8")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write credentials file {target}: {exc.strerror}") from exc
