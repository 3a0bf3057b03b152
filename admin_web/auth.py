"""Users, roles, passwords and API tokens of the admin web.

Passwords are stored as scrypt hashes (``scrypt$n$r$p$salt$hash``, hex salt
and hash), API tokens only as their sha256; every comparison of secrets is
constant-time. Roles are ordered ``viewer < operator < admin``; an operator may
be limited to some municipalities::

    users = UserRegistry()
    password, token = users.add("alice", Role.OPERATOR, municipalities=["dijon"])
    user = users.by_token(token)
    users.can(user, Role.OPERATOR, "dijon")        # True
    users.can(user, Role.OPERATOR, "talant")       # False

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

import dataclasses
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from runtime.errors import AuthError, ConfigError

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

MIN_PASSWORD_LENGTH: Final = 8
MIN_TOKEN_LENGTH: Final = 20
# Longer presented secrets are refused before hashing: no real one is that long.
_MAX_SECRET_LENGTH: Final = 1024

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Names the runtime's own callers use (a command's ``caller``): no user may take one, so
#: that an operator's command never passes for a crisis plan's or a schedule's.
RESERVED_NAMES: Final = frozenset({"crisis", "schedule", "dispatch", "alarms", "journal",
                                   "system", "open311", "phone"})
_SLUG_RE: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")


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
class User:
    """One admin-web user. ``municipalities`` empty means every municipality."""

    name: str
    role: Role
    municipalities: frozenset[str]
    password_hash: str = field(repr=False)
    token_hash: str = field(repr=False)

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
        _parse_scrypt(self.password_hash)
        if not isinstance(self.token_hash, str) or not _HEX64_RE.fullmatch(self.token_hash):
            raise ConfigError(f"user {self.name}: token_hash must be 64 lowercase hex digits")

    def can(self, role: Role, municipality: str | None = None) -> bool:
        """Whether this user holds ``role`` (or above), within ``municipality`` if given."""
        if self.role < role:
            return False
        if municipality is None or self.role is Role.ADMIN or not self.municipalities:
            return True
        return municipality in self.municipalities


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
    if len(password) > _MAX_SECRET_LENGTH:
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
    if not MIN_PASSWORD_LENGTH <= len(password) <= _MAX_SECRET_LENGTH:
        raise ConfigError(
            f"user {name}: password must be {MIN_PASSWORD_LENGTH}-{_MAX_SECRET_LENGTH} long"
        )


@functools.cache
def _dummy_hash() -> str:
    # Checked against when the name is unknown, so that a failed login takes
    # as long whether or not the user exists.
    return hash_password(secrets.token_urlsafe(16))


class UserRegistry:
    """The admin web's users, safe to share between request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        # Each user's current session nonce: sessions carrying another one are over.
        self._session_nonces: dict[str, str] = {}

    def add(
        self,
        name: str,
        role: Role | str,
        municipalities: Iterable[str] = (),
        password: str | None = None,
        token: str | None = None,
    ) -> tuple[str, str]:
        """Add a user; returns ``(password, token)`` in clear.

        A password or token not given is generated (``secrets``); only their
        hashes are kept, so the returned values are the only copy. Raises
        :class:`ConfigError` for a taken name or token, a bad role, slug, or
        a password or token that is too short.
        """
        if isinstance(municipalities, str):
            raise ConfigError("municipalities must be a collection of slugs, not one string")
        if password is None:
            password = secrets.token_urlsafe(16)
        else:
            _check_password_length(name, password)
        if token is None:
            token = secrets.token_urlsafe(32)
        elif len(token) < MIN_TOKEN_LENGTH or len(token) > _MAX_SECRET_LENGTH:
            raise ConfigError(
                f"user {name}: token must be {MIN_TOKEN_LENGTH}-{_MAX_SECRET_LENGTH} long"
            )
        # Hashing is slow on purpose: keep it outside the lock.
        user = User(
            name=name,
            role=parse_role(role),
            municipalities=frozenset(municipalities),
            password_hash=hash_password(password),
            token_hash=hash_token(token),
        )
        with self._lock:
            if name in self._users:
                raise ConfigError(f"user {name!r} already exists")
            if any(u.token_hash == user.token_hash for u in self._users.values()):
                raise ConfigError(f"user {name}: token already in use")
            self._users[name] = user
            self._session_nonces[name] = secrets.token_urlsafe(16)
        return password, token

    def set_password(self, name: str, password: str) -> None:
        """Give ``name`` a new password, and end every session he has open.

        Raises :class:`AuthError` for an unknown user and :class:`ConfigError`
        for a password that is too short or too long.
        """
        _check_password_length(name, password)
        encoded = hash_password(password)
        with self._lock:
            user = self._users.get(name)
            if user is None:
                raise AuthError("unknown user")
            self._users[name] = dataclasses.replace(user, password_hash=encoded)
            self._session_nonces[name] = secrets.token_urlsafe(16)

    def session_nonce(self, name: str) -> str:
        """The nonce a new login session of ``name`` carries; :class:`AuthError` if unknown."""
        with self._lock:
            nonce = self._session_nonces.get(name)
        if nonce is None:
            raise AuthError("unknown user")
        return nonce

    def check_session(self, name: str, nonce: str) -> User:
        """The user of a login session carrying ``nonce``; :class:`AuthError` when the user
        is unknown or his sessions have been ended since (logout, new password)."""
        with self._lock:
            user = self._users.get(name)
            current = self._session_nonces.get(name)
        if user is None or current is None or not hmac.compare_digest(
                current.encode(), nonce.encode()):
            raise AuthError("session ended")
        return user

    def end_sessions(self, name: str) -> None:
        """End every login session of ``name`` (a logout); unknown names are ignored."""
        with self._lock:
            if name in self._session_nonces:
                self._session_nonces[name] = secrets.token_urlsafe(16)

    def get(self, name: str) -> User:
        """The user called ``name``; raises :class:`AuthError` when there is none."""
        with self._lock:
            user = self._users.get(name)
        if user is None:
            raise AuthError("unknown user")
        return user

    def by_token(self, token: str) -> User:
        """The user holding API ``token``; raises :class:`AuthError` otherwise."""
        if not token or len(token) > _MAX_SECRET_LENGTH:
            raise AuthError("invalid token")
        digest = hash_token(token)
        with self._lock:
            users = list(self._users.values())
        found: User | None = None
        # Compare with every user, without stopping at the first match, so the
        # time taken says nothing about which stored hash came close.
        for user in users:
            if hmac.compare_digest(user.token_hash, digest):
                found = user
        if found is None:
            raise AuthError("invalid token")
        return found

    def check_password(self, name: str, password: str) -> User:
        """The user ``name`` if ``password`` is his; raises :class:`AuthError` otherwise.

        The error says the same for an unknown name and a wrong password.
        """
        with self._lock:
            user = self._users.get(name)
        encoded = user.password_hash if user is not None else _dummy_hash()
        if not verify_password(password, encoded) or user is None:
            raise AuthError("invalid name or password")
        return user

    def can(self, user: User, role: Role, municipality: str | None = None) -> bool:
        """Whether ``user`` holds ``role`` or above, within ``municipality`` if given.

        Admins act everywhere; a user with no municipality listed acts on all.
        """
        return user.can(role, municipality)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._users

    def __len__(self) -> int:
        with self._lock:
            return len(self._users)


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
