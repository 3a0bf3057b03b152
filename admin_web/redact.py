"""Hiding credentials in URLs, and secrets in JSON values, before they leave the admin web.

>>> redact_url("redis://:secret@cache:6379/0")
'redis://***@cache:6379/0'
>>> redact_url("mqtt://user:pw@broker")
'mqtt://***@broker'
>>> redact_url("redis://cache:6379/0?password=secret&db=1")
'redis://cache:6379/0?password=***&db=1'
>>> holds_secret("mqtt://user:pw@broker"), holds_secret("mqtt://user@broker")
(True, False)
>>> redact_secrets({"password": "hunter2", "url": "redis://:pw@cache", "dim": 40})
{'password': '***', 'url': 'redis://***@cache', 'dim': 40}
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar, cast

_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)(.*)", re.DOTALL)
# Query parameters through which redis-py and broker URLs accept secrets.
_SECRET_PARAMS: Final = frozenset(
    {"password", "pass", "passwd", "pwd", "secret", "token", "access_token", "api_key", "apikey"}
)
MASK: Final = "***"

__all__ = ["MASK", "holds_secret", "redact_secrets", "redact_url", "redact_urls"]

# Names of fields that hold a secret, wherever they are in a value.
_SECRET_NAME_RE: Final = re.compile(
    r"password|passwd|passphrase|^pass$|pwd|secret|token|api[_-]?key|authori[sz]ation"
    r"|credential|private[_-]?key|cookie|csrf", re.IGNORECASE)
# Deeper than this, a value is cut rather than walked (request bodies are 32 at most).
_MAX_DEPTH: Final = 64

T = TypeVar("T")


def redact_url(url: str) -> str:
    """``url`` with its user information and secret query parameters replaced by ``***``.

    Strings that are not ``scheme://`` URLs come back unchanged. The whole
    user-info part is hidden, up to the last ``@``: a password holding an
    unescaped ``/`` or ``@`` is hidden too, at the price of hiding a host in
    the rare URL whose path contains ``@``.
    """
    match = _SCHEME_RE.fullmatch(url)
    if match is None:
        return url
    scheme, rest = match.groups()
    at = rest.rfind("@")
    if at >= 0:
        rest = f"{MASK}@{rest[at + 1 :]}"
    return scheme + _redact_query(rest)


def holds_secret(url: str) -> bool:
    """Whether ``url`` carries a password (``scheme://user:pw@…``, ``scheme://:pw@…``)
    or a secret query parameter (``?password=…``); a user name alone is no secret."""
    match = _SCHEME_RE.fullmatch(url)
    if match is None:
        return False
    rest = match.group(2)
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        return True
    return _redact_query(rest) != rest


def _redact_query(rest: str) -> str:
    head, sep, tail = rest.partition("?")
    if not sep:
        return rest
    query, hash_sep, fragment = tail.partition("#")
    pairs = []
    for pair in query.split("&"):
        key, eq, _value = pair.partition("=")
        pairs.append(f"{key}={MASK}" if eq and key.lower() in _SECRET_PARAMS else pair)
    return f"{head}?{'&'.join(pairs)}{hash_sep}{fragment}"


def redact_urls(value: T) -> T:
    """A copy of ``value`` (JSON-like data) with :func:`redact_url` applied to every string.

    Every string rather than only keys named ``url``: a credential in a field
    nobody expected to hold one is still hidden. Tuples come back as lists.
    """
    return cast(T, _redact(value))


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {key: _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    return value


def redact_secrets(value: T) -> T:
    """A copy of ``value`` (JSON-like data) with secrets masked, for the audit trail.

    The value of every field whose name says it holds a secret (``password``,
    ``api_key``, ``token``, ``secret``, ``authorization``, …) becomes ``***``,
    at any depth, and every string goes through :func:`redact_url`. Tuples
    come back as lists.
    """
    return cast(T, _redact_secrets(value, 0))


def _redact_secrets(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_url(value)
    if depth >= _MAX_DEPTH and isinstance(value, dict | list | tuple):
        return MASK
    if isinstance(value, dict):
        return {key: MASK if isinstance(key, str) and _SECRET_NAME_RE.search(key)
                else _redact_secrets(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_secrets(item, depth + 1) for item in value]
    return value
