"""Open311 GeoReport v2: the service catalogue, request validation and the request store.

Citizens' apps report problems through the GeoReport v2 API
(http://wiki.open311.org/GeoReport_v2). This module holds everything of it
that is not HTTP, so that the web layer (``admin_web.open311``) only parses
and formats::

    catalogue = default_catalogue()                  # runtime/data/open311_services.toml
    store = SyncOpen311Store("redis://127.0.0.1:6379/0")
    key = store.issue_key("ondijon")                 # shown once; only its hash is kept
    assert store.check_key(key) == "ondijon"
    new = validate_request({"service_code": "pothole", "lat": "47.3220", "long": "5.0415",
                            "description": "A deep hole"}, catalogue, demo_geography())
    record = store.create(new, app="ondijon")       # status "open", municipality "dijon"
    record.public()                                  # the GeoReport fields, no personal data
    store.update_status(record.service_request_id, "closed", "Filled in.")
    store.list_requests(parse_query({"status": "open"}, now=time.time()))

Refusals are :class:`Open311Error` (a :class:`~runtime.errors.RejectedError`)
carrying the HTTP status the specification asks for: 400 for a missing or
invalid parameter (a location outside the metropolis included), 403 for a
missing or invalid ``api_key``, 404 for something named that does not exist
(a ``service_code``, a ``jurisdiction_id``).

Two stores share keys, scripts and codecs, as :mod:`runtime.store` does:
:class:`Open311Store` (``redis.asyncio``) for the runtime's coordinators and
:class:`SyncOpen311Store` (blocking ``redis``) for the threaded Flask admin.
Each operation is written once, as a generator of Redis command batches
(``_steps_*``); the two stores only run the batches, under the same retry
policy and error mapping as :mod:`runtime.store`. Key layout, under the
store's namespace ``ns``::

    {ns}:o311:seq                  string  the last service_request_id issued (INCR)
    {ns}:o311:req:{id}             hash    one request (ServiceRequest.to_fields)
    {ns}:o311:by_time              zset    id -> requested_ts
    {ns}:o311:by_status:{status}   zset    id -> requested_ts, for open and closed
    {ns}:o311:by_code:{code}       zset    id -> requested_ts
    {ns}:o311:nonce:{nonce}        string  -> id for an hour: a retried create returns it
    {ns}:o311:apps                 hash    client application -> its key id
    {ns}:o311:apikey:{key_id}      hash    app, digest (SHA-256 of the key's secret), issued_ts

An API key is ``{key_id}.{secret}``: the public ``key_id`` finds the stored
record, whose digest is compared with the secret's in constant time. The
secret is 32 random bytes, so a plain SHA-256 (no salt, no stretching)
cannot be reversed; a password would need scrypt, a random token does not.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from runtime.clock import Clock, SystemClock
from runtime.datafile import KeyPath, Locator, field_name, parse_toml, type_name
from runtime.demo_inventory import SERVICE_ROLES
from runtime.errors import ConfigError, DataFileError, RejectedError
from runtime.store import (
    HTTP_DEADLINE_S,
    RetryPolicy,
    StoreKeys,
    _check_url,
    _Guard,
    _redact,
    _text,
)

if TYPE_CHECKING:
    # Only for annotations: a coordinator that just closes requests never loads shapely.
    from runtime.geo import Geography

__all__ = [
    "FIELD_LIMITS",
    "HTTP_RETRY",
    "MAX_APP_NAME",
    "MAX_DESCRIPTION",
    "MAX_RESULTS",
    "PRIVATE_FIELDS",
    "PUBLIC_FIELDS",
    "QUERY_SPAN_S",
    "STATUSES",
    "NewRequest",
    "Open311Error",
    "Open311Keys",
    "Open311Store",
    "RequestQuery",
    "Service",
    "ServiceCatalogue",
    "ServiceRequest",
    "SyncOpen311Store",
    "default_catalogue",
    "format_w3c",
    "parse_catalogue",
    "parse_query",
    "parse_w3c",
    "validate_request",
]

T = TypeVar("T")

STATUSES: Final = ("open", "closed")
#: The specification's cap on one answer of ``GET requests``.
MAX_RESULTS: Final = 1000
#: The specification's default (and widest) ``start_date``/``end_date`` span: 90 days.
QUERY_SPAN_S: Final = 90 * 86_400.0
#: The specification's limit on a description.
MAX_DESCRIPTION: Final = 4000
_DEFAULT_RETRY: Final = RetryPolicy()
#: Retries for a store behind an HTTP request: a prompt 503 beats a 30 s wait.
HTTP_RETRY: Final = RetryPolicy(deadline_s=HTTP_DEADLINE_S)

#: The GeoReport v2 fields of a request, in the specification's order.
PUBLIC_FIELDS: Final = (
    "service_request_id", "status", "status_notes", "service_name", "service_code",
    "description", "agency_responsible", "service_notice", "requested_datetime",
    "updated_datetime", "expected_datetime", "address", "address_id", "zipcode", "lat", "long",
    "media_url",
)
#: What a citizen tells about himself: kept for the agency, never in a public read.
PRIVATE_FIELDS: Final = (
    "email", "first_name", "last_name", "phone", "device_id", "account_id",
)

_CODE_RE: Final = re.compile(r"^[a-z0-9_]{1,64}$")
_REQUEST_ID_RE: Final = re.compile(r"^[1-9][0-9]{0,18}$")
_KEY_RE: Final = re.compile(r"^([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_DECIMAL_RE: Final = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_W3C_RE: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2}))?$"
)
# Control characters other than tabs and the line breaks a description may hold.
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAK_RE: Final = re.compile(r"[\n\r]")

#: Longest accepted value of each POST parameter (the description has its own limit).
FIELD_LIMITS: Final = {
    "jurisdiction_id": 200, "service_code": 64, "lat": 40, "long": 40, "address_string": 500,
    "address_id": 100, "email": 254, "device_id": 200, "account_id": 200, "first_name": 100,
    "last_name": 100, "phone": 40, "description": MAX_DESCRIPTION, "media_url": 2048,
}
MAX_APP_NAME: Final = 100
_NONCE_TTL_S: Final = 3600
_SCAN_CHUNK: Final = 500


# -- errors -------------------------------------------------------------------------------------
class Open311Error(RejectedError):
    """A GeoReport v2 refusal: the HTTP ``status`` and a ``description`` for the citizen.

    The web layer answers ``status`` with :meth:`body`,
    ``[{"code": status, "description": description}]``.
    """

    def __init__(self, status: int, description: str) -> None:
        if status not in (400, 403, 404):
            raise ValueError(f"a GeoReport v2 refusal is 400, 403 or 404, not {status}")
        super().__init__(description, code=f"open311_{status}")
        self.status = status
        self.description = description

    def body(self) -> list[dict[str, Any]]:
        """The specification's error list."""
        return [{"code": self.status, "description": self.description}]


# -- the service catalogue ----------------------------------------------------------------------
def _nonempty(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a non-empty string")
    return value


@dataclass(frozen=True, slots=True)
class Service:
    """One request type of the catalogue, and the vehicles that can serve it.

    ``vehicle_roles`` are service-vehicle roles (the demo inventory's
    :data:`~runtime.demo_inventory.SERVICE_ROLES`), in order of preference;
    ``expected_hours`` is the service level that sets a request's
    ``expected_datetime``. ``metadata`` is always False and ``type`` always
    ``realtime``: no service asks for extra attributes, and every request
    gets its id at once.
    """

    service_code: str
    service_name: str
    description: str
    group: str
    keywords: tuple[str, ...]
    vehicle_roles: tuple[str, ...]
    agency_responsible: str | None = None
    service_notice: str | None = None
    expected_hours: float | None = None
    metadata: bool = False
    type: str = "realtime"

    def __post_init__(self) -> None:
        if not isinstance(self.service_code, str) or not _CODE_RE.match(self.service_code):
            raise ConfigError(
                f"service_code {self.service_code!r} must be 1-64 of a-z, 0-9 and _"
            )
        for name in ("service_name", "description", "group"):
            _nonempty(name, getattr(self, name))
        for name in ("agency_responsible", "service_notice"):
            if getattr(self, name) is not None:
                _nonempty(name, getattr(self, name))
        if not isinstance(self.keywords, tuple) or not self.keywords:
            raise ConfigError("keywords must be a non-empty list")
        for word in self.keywords:
            if "," in _nonempty("a keyword", word):
                raise ConfigError(f"keyword {word!r} holds a comma (the list is comma-separated)")
        if not isinstance(self.vehicle_roles, tuple) or not self.vehicle_roles:
            raise ConfigError("vehicle_roles must be a non-empty list")
        for role in self.vehicle_roles:
            if role not in SERVICE_ROLES:
                raise ConfigError(
                    f"vehicle role {role!r} is none of the fleet's: {', '.join(SERVICE_ROLES)}"
                )
        if len(set(self.vehicle_roles)) != len(self.vehicle_roles):
            raise ConfigError("vehicle_roles lists a role twice")
        hours = self.expected_hours
        if hours is not None and (
            isinstance(hours, bool) or not isinstance(hours, int | float)
            or not math.isfinite(hours) or hours <= 0
        ):
            raise ConfigError(f"expected_hours must be a positive number, not {hours!r}")
        if self.metadata is not False:
            raise ConfigError("metadata must be false: service attributes are not supported")
        if self.type != "realtime":
            raise ConfigError(f"type must be 'realtime', not {self.type!r}")

    def public(self) -> dict[str, Any]:
        """The service as ``GET services`` lists it."""
        return {
            "service_code": self.service_code,
            "service_name": self.service_name,
            "description": self.description,
            "metadata": self.metadata,
            "type": self.type,
            "keywords": ", ".join(self.keywords),
            "group": self.group,
        }

    def definition(self) -> dict[str, Any]:
        """The service definition (``GET services/{code}``): no attributes."""
        return {"service_code": self.service_code, "attributes": []}


@dataclass(frozen=True, slots=True)
class ServiceCatalogue:
    """The services of one jurisdiction, by code, in file order."""

    jurisdiction_id: str
    services: tuple[Service, ...]
    _by_code: dict[str, Service] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _nonempty("jurisdiction_id", self.jurisdiction_id)
        by_code: dict[str, Service] = {}
        for service in self.services:
            if service.service_code in by_code:
                raise ConfigError(f"service_code {service.service_code!r} appears twice")
            by_code[service.service_code] = service
        if not by_code:
            raise ConfigError("a catalogue needs at least one service")
        object.__setattr__(self, "_by_code", by_code)

    def get(self, service_code: str) -> Service:
        """The service of ``service_code``; :class:`KeyError` when there is none."""
        return self._by_code[service_code]

    def __contains__(self, service_code: object) -> bool:
        return service_code in self._by_code

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services)

    def __len__(self) -> int:
        return len(self.services)

    @property
    def codes(self) -> tuple[str, ...]:
        """Every service code, in file order."""
        return tuple(s.service_code for s in self.services)

    def public(self) -> list[dict[str, Any]]:
        """The service list as ``GET services`` answers it."""
        return [s.public() for s in self.services]


_SERVICE_KEYS: Final = tuple(f.name for f in fields(Service))
_TOP_KEYS: Final = ("jurisdiction_id", "service")


def parse_catalogue(text: str, source: str = "<catalogue>") -> ServiceCatalogue:
    """Validate catalogue TOML ``text``; ``source`` names it in messages.

    Every problem is collected before raising :class:`ConfigError`, one
    ``"{source}:{line}: {field}: {message}"`` line each, sorted by line.
    """
    doc = parse_toml(text, source)
    where = Locator(text)
    issues: list[tuple[int, int, str]] = []

    def issue(path: KeyPath, message: str) -> None:
        line = where.line(path)
        issues.append((line, len(issues), f"{source}:{line}: {field_name(path)}: {message}"))

    for key in doc:
        if key not in _TOP_KEYS:
            issue((key,), f"unknown key (expected one of {', '.join(_TOP_KEYS)})")
    jurisdiction = doc.get("jurisdiction_id")
    if not isinstance(jurisdiction, str) or not jurisdiction.strip():
        issue(("jurisdiction_id",), "required, a non-empty string")
    raw_services = doc.get("service", [])
    if not isinstance(raw_services, list) or not raw_services:
        issue(("service",), "at least one [[service]] table is required")
        raw_services = []
    services: list[Service] = []
    first_line: dict[str, int] = {}
    for i, raw in enumerate(raw_services):
        path: KeyPath = ("service", i)
        if not isinstance(raw, dict):
            issue(path, f"expected a table, got {type_name(raw)}")
            continue
        service = _parse_service(raw, path, issue)
        if service is None:
            continue
        code = service.service_code
        if code in first_line:
            issue((*path, "service_code"),
                  f"duplicate service_code {code!r} (first at line {first_line[code]})")
            continue
        first_line[code] = where.line((*path, "service_code"))
        services.append(service)
    if issues:
        raise DataFileError([text for _, _, text in sorted(issues)])
    assert isinstance(jurisdiction, str)
    return ServiceCatalogue(jurisdiction, tuple(services))


def _parse_service(
    raw: Mapping[str, Any], path: KeyPath, issue: Callable[[KeyPath, str], None]
) -> Service | None:
    """One ``[[service]]`` table as a :class:`Service`, or None after reporting its issues."""
    problems = 0

    def report(at: KeyPath, message: str) -> None:
        nonlocal problems
        problems += 1
        issue(at, message)

    for key in raw:
        if key not in _SERVICE_KEYS:
            report((*path, key), f"unknown key (expected one of {', '.join(_SERVICE_KEYS)})")
    values: dict[str, Any] = {}
    for key in ("service_code", "service_name", "description", "group"):
        value = raw.get(key)
        if not isinstance(value, str):
            report((*path, key), "required, a string" if value is None
                   else f"expected a string, got {type_name(value)}")
        values[key] = value
    for key in ("agency_responsible", "service_notice", "type"):
        if key in raw:
            if not isinstance(raw[key], str):
                report((*path, key), f"expected a string, got {type_name(raw[key])}")
            values[key] = raw[key]
    for key in ("keywords", "vehicle_roles"):
        value = raw.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            report((*path, key), "required, an array of strings")
            value = []
        values[key] = tuple(value)
    if "metadata" in raw:
        if not isinstance(raw["metadata"], bool):
            report((*path, "metadata"), f"expected a boolean, got {type_name(raw['metadata'])}")
        values["metadata"] = raw["metadata"]
    if "expected_hours" in raw:
        values["expected_hours"] = raw["expected_hours"]
    if problems:
        return None
    try:
        return Service(**values)
    except ConfigError as exc:
        report(path, str(exc))
        return None


@functools.cache
def default_catalogue() -> ServiceCatalogue:
    """The packaged catalogue, ``runtime/data/open311_services.toml`` (read once)."""
    name = "data/open311_services.toml"
    text = resources.files("runtime").joinpath(name).read_text("utf-8")
    return parse_catalogue(text, f"runtime/{name}")


# -- records ------------------------------------------------------------------------------------
def format_w3c(ts: float) -> str:
    """``ts`` (seconds since the epoch) as a W3C datetime in UTC: ``2010-01-01T00:00:00Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_w3c(text: str) -> float:
    """Seconds since the epoch of a W3C datetime.

    The specification requires a timezone (``Z`` or ``±hh:mm``) on a
    datetime; a bare date (``2010-01-01``) is taken as midnight UTC. Raises
    :class:`ValueError` for anything else.
    """
    if not _W3C_RE.match(text):
        raise ValueError(f"{text!r} is not a W3C datetime with a timezone")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A validated service request, before the store gives it an id.

    Built by :func:`validate_request`: the service's name, agency, notice and
    service level are copied from the catalogue, and ``municipality`` is the
    slug the location falls in (None when only an address was given).
    """

    service_code: str
    service_name: str
    description: str | None = None
    lat: float | None = None
    long: float | None = None
    address: str | None = None
    address_id: str | None = None
    zipcode: str | None = None
    media_url: str | None = None
    municipality: str | None = None
    agency_responsible: str | None = None
    service_notice: str | None = None
    expected_hours: float | None = None
    email: str | None = field(default=None, repr=False)
    first_name: str | None = field(default=None, repr=False)
    last_name: str | None = field(default=None, repr=False)
    phone: str | None = field(default=None, repr=False)
    device_id: str | None = field(default=None, repr=False)
    account_id: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.lat is None) != (self.long is None):
            raise ConfigError("lat and long go together")
        if self.lat is None and self.address is None and self.address_id is None:
            raise ConfigError("a request needs lat and long, an address or an address_id")


@dataclass(frozen=True, slots=True)
class ServiceRequest:
    """One stored service request: its GeoReport v2 fields and what stays private.

    ``requested_ts``, ``updated_ts`` and ``expected_ts`` are seconds since the
    epoch (the public view formats them as W3C datetimes); ``municipality``
    and ``app`` (the client application that posted it) are for the command
    post; :data:`PRIVATE_FIELDS` are the citizen's own details.
    """

    service_request_id: str
    status: str
    service_code: str
    service_name: str
    requested_ts: float
    updated_ts: float
    status_notes: str | None = None
    description: str | None = None
    agency_responsible: str | None = None
    service_notice: str | None = None
    expected_ts: float | None = None
    address: str | None = None
    address_id: str | None = None
    zipcode: str | None = None
    lat: float | None = None
    long: float | None = None
    media_url: str | None = None
    municipality: str | None = None
    app: str | None = None
    # Personal details stay out of repr(), so that a logged record does not spread them.
    email: str | None = field(default=None, repr=False)
    first_name: str | None = field(default=None, repr=False)
    last_name: str | None = field(default=None, repr=False)
    phone: str | None = field(default=None, repr=False)
    device_id: str | None = field(default=None, repr=False)
    account_id: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError(f"request status {self.status!r} is not one of {STATUSES}")

    def public(self) -> dict[str, Any]:
        """The request as ``GET requests`` shows it: :data:`PUBLIC_FIELDS` only, in order."""
        out: dict[str, Any] = {}
        for name in PUBLIC_FIELDS:
            if name == "requested_datetime":
                out[name] = format_w3c(self.requested_ts)
            elif name == "updated_datetime":
                out[name] = format_w3c(self.updated_ts)
            elif name == "expected_datetime":
                out[name] = None if self.expected_ts is None else format_w3c(self.expected_ts)
            else:
                out[name] = getattr(self, name)
        return out

    def to_fields(self) -> dict[str, str]:
        """The Redis hash of this request (absent values are left out)."""
        return _encode(self)

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> ServiceRequest:
        """Rebuild a request from its Redis hash; unknown fields are ignored."""
        got = {_text(k): _text(v) for k, v in raw.items()}
        values: dict[str, Any] = {}
        for name, kind in _FIELD_KINDS.items():
            if name in got:
                values[name] = float(got[name]) if kind is float else got[name]
        return cls(**values)


_FLOAT_FIELDS: Final = frozenset({"requested_ts", "updated_ts", "expected_ts", "lat", "long"})
_FIELD_KINDS: Final = {
    f.name: float if f.name in _FLOAT_FIELDS else str for f in fields(ServiceRequest)
}


def _encode(record: ServiceRequest | Mapping[str, Any]) -> dict[str, str]:
    items = (
        record.items() if isinstance(record, Mapping)
        else ((name, getattr(record, name)) for name in _FIELD_KINDS)
    )
    return {
        name: repr(float(value)) if name in _FLOAT_FIELDS else str(value)
        for name, value in items
        if value is not None
    }


def _opened_fields(new: NewRequest, ts: float, app: str | None) -> dict[str, str]:
    """The hash of a request ``new`` opened at ``ts``, all but its id."""
    expected = None if new.expected_hours is None else ts + new.expected_hours * 3600.0
    values: dict[str, Any] = {
        "status": "open", "service_code": new.service_code, "service_name": new.service_name,
        "requested_ts": ts, "updated_ts": ts, "description": new.description,
        "agency_responsible": new.agency_responsible, "service_notice": new.service_notice,
        "expected_ts": expected, "address": new.address, "address_id": new.address_id,
        "zipcode": new.zipcode, "lat": new.lat, "long": new.long, "media_url": new.media_url,
        "municipality": new.municipality, "app": app,
        **{name: getattr(new, name) for name in PRIVATE_FIELDS},
    }
    return _encode(values)


# -- validation ---------------------------------------------------------------------------------
def _param(form: Mapping[str, str], name: str) -> str | None:
    """``form[name]`` stripped, None when absent or empty (the specification's "optional")."""
    value = form.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    limit = FIELD_LIMITS.get(name)
    if limit is not None and len(value) > limit:
        raise Open311Error(400, f"{name} is longer than {limit} characters")
    if _CONTROL_RE.search(value) or (name != "description" and _LINE_BREAK_RE.search(value)):
        raise Open311Error(400, f"{name} holds control characters")
    return value


def _coordinate(name: str, text: str, bound: float) -> float:
    if not _DECIMAL_RE.match(text):
        raise Open311Error(400, f"{name} must be a decimal number of degrees (WGS84)")
    value = float(text)
    if not -bound <= value <= bound:
        raise Open311Error(400, f"{name} {text} is outside -{bound:g}..{bound:g}")
    return value


def validate_request(
    form: Mapping[str, str], catalogue: ServiceCatalogue, geography: Geography
) -> NewRequest:
    """Check the parameters of ``POST requests`` (all but ``api_key``) into a :class:`NewRequest`.

    ``form`` maps each parameter to its (first) value. Raises
    :class:`Open311Error`: 404 for an unknown ``service_code`` or
    ``jurisdiction_id`` (the specification's "not found"); 400 for a missing
    ``service_code``, no location (``lat`` and ``long``, ``address_string``
    or ``address_id``), a ``lat`` without ``long``, a point outside the
    metropolis, and any value too long, malformed or with control
    characters. ``attribute[…]`` parameters are ignored: no service has any.
    """
    jurisdiction = _param(form, "jurisdiction_id")
    if jurisdiction is not None and jurisdiction != catalogue.jurisdiction_id:
        raise Open311Error(404, f"jurisdiction_id {jurisdiction!r} was not found")
    code = _param(form, "service_code")
    if code is None:
        raise Open311Error(400, "service_code was not provided")
    if code not in catalogue:
        raise Open311Error(404, f"service_code {code!r} was not found")
    service = catalogue.get(code)
    lat_text, long_text = _param(form, "lat"), _param(form, "long")
    address, address_id = _param(form, "address_string"), _param(form, "address_id")
    lat: float | None = None
    long: float | None = None
    municipality: str | None = None
    if (lat_text is None) != (long_text is None):
        raise Open311Error(400, "lat and long must be sent together")
    if lat_text is not None and long_text is not None:
        lat = _coordinate("lat", lat_text, 90.0)
        long = _coordinate("long", long_text, 180.0)
        municipality = geography.municipality_at(lat, long)
        if municipality is None:
            raise Open311Error(
                400, f"the location {lat_text}, {long_text} is outside the metropolis: "
                "requests are taken only within its municipalities"
            )
    elif address is None and address_id is None:
        raise Open311Error(
            400, "a location is required: lat and long, address_string or address_id"
        )
    media_url = _param(form, "media_url")
    if media_url is not None:
        parts = urlsplit(media_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Open311Error(400, "media_url must be an http or https URL")
    email = _param(form, "email")
    if email is not None:
        local, at, domain = email.rpartition("@")
        if not (local and at and domain) or any(c.isspace() for c in email):
            raise Open311Error(400, "email is not an e-mail address")
    return NewRequest(
        service_code=code,
        service_name=service.service_name,
        description=_param(form, "description"),
        lat=lat,
        long=long,
        address=address,
        address_id=address_id,
        media_url=media_url,
        municipality=municipality,
        agency_responsible=service.agency_responsible,
        service_notice=service.service_notice,
        expected_hours=service.expected_hours,
        email=email,
        first_name=_param(form, "first_name"),
        last_name=_param(form, "last_name"),
        phone=_param(form, "phone"),
        device_id=_param(form, "device_id"),
        account_id=_param(form, "account_id"),
    )


@dataclass(frozen=True, slots=True)
class RequestQuery:
    """What ``GET requests`` asks for; an empty set means "any".

    ``ids``, when given, overrides every other criterion (as the specification
    says). ``start_ts``/``end_ts`` bound ``requested_ts``, both inclusive.
    Results are the newest first, at most ``limit``.
    """

    ids: tuple[str, ...] = ()
    service_codes: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    start_ts: float = -math.inf
    end_ts: float = math.inf
    limit: int = MAX_RESULTS

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_RESULTS:
            raise ConfigError(f"limit must be within 1..{MAX_RESULTS}, not {self.limit}")
        unknown = self.statuses - set(STATUSES)
        if unknown:
            raise ConfigError(f"unknown request status {sorted(unknown)[0]!r}")

    def matches(self, record: ServiceRequest) -> bool:
        """Whether ``record`` meets every criterion but ``ids``."""
        return (
            (not self.statuses or record.status in self.statuses)
            and (not self.service_codes or record.service_code in self.service_codes)
            and self.start_ts <= record.requested_ts <= self.end_ts
        )


def _comma_list(value: str | None) -> list[str]:
    if value is None:
        return []
    out: list[str] = []
    for part in value.split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out


def parse_query(args: Mapping[str, str], now: float) -> RequestQuery:
    """The query of ``GET requests`` from its parameters, as the specification reads them.

    Lists are comma-delimited (the web layer joins a repeated parameter with
    commas). Without dates the span is the 90 days up to ``now``; with one
    date, the 90 days after ``start_date`` or before ``end_date``; two dates
    may span at most 90 days. Raises :class:`Open311Error` 400 for an unknown
    ``status``, a date that is not a W3C datetime, an end before the start, a
    span over 90 days or more than :data:`MAX_RESULTS` ids.
    """
    ids = _comma_list(args.get("service_request_id"))
    if ids:
        if len(ids) > MAX_RESULTS:
            raise Open311Error(400, f"at most {MAX_RESULTS} service_request_id at once")
        return RequestQuery(ids=tuple(ids))
    statuses = _comma_list(args.get("status"))
    for status in statuses:
        if status not in STATUSES:
            raise Open311Error(400, f"status {status!r} is neither open nor closed")
    dates: dict[str, float] = {}
    for name in ("start_date", "end_date"):
        text = (args.get(name) or "").strip()
        if text:
            try:
                dates[name] = parse_w3c(text)
            except ValueError:
                raise Open311Error(
                    400, f"{name} must be a W3C datetime with a timezone, "
                    "e.g. 2010-01-01T00:00:00Z"
                ) from None
    start, end = dates.get("start_date"), dates.get("end_date")
    if start is not None and end is not None:
        if end < start:
            raise Open311Error(400, "end_date is before start_date")
        if end - start > QUERY_SPAN_S:
            raise Open311Error(400, "start_date and end_date may not span more than 90 days")
    elif start is not None:
        end = start + QUERY_SPAN_S
    elif end is not None:
        start = end - QUERY_SPAN_S
    else:
        start, end = now - QUERY_SPAN_S, math.inf
    return RequestQuery(
        service_codes=frozenset(_comma_list(args.get("service_code"))),
        statuses=frozenset(statuses),
        start_ts=start,
        end_ts=end,
    )


# -- keys and scripts ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Open311Keys:
    """Redis key names of the Open311 data under one store namespace."""

    namespace: str = "cp"

    def __post_init__(self) -> None:
        StoreKeys(self.namespace)  # the same namespace rules as the store's

    @property
    def _base(self) -> str:
        return f"{self.namespace}:o311:"

    @property
    def sequence(self) -> str:
        return self._base + "seq"

    @property
    def request_prefix(self) -> str:
        return self._base + "req:"

    def request(self, request_id: str) -> str:
        return self.request_prefix + request_id

    @property
    def by_time(self) -> str:
        return self._base + "by_time"

    def by_status(self, status: str) -> str:
        return self._base + f"by_status:{status}"

    def by_code(self, service_code: str) -> str:
        return self._base + f"by_code:{service_code}"

    def nonce(self, nonce: str) -> str:
        return self._base + f"nonce:{nonce}"

    @property
    def apps(self) -> str:
        return self._base + "apps"

    @property
    def api_key_prefix(self) -> str:
        return self._base + "apikey:"

    def api_key(self, key_id: str) -> str:
        return self.api_key_prefix + key_id


# KEYS: seq, by_time, by_status:open, by_code:{code}, nonce.
# ARGV: request key prefix, requested_ts, nonce ttl, then field/value pairs. Reply: the id.
CREATE_LUA: Final = """
local known = redis.call('GET', KEYS[5])
if known then return known end
local id = tostring(redis.call('INCR', KEYS[1]))
redis.call('HSET', ARGV[1] .. id, 'service_request_id', id, unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], id)
redis.call('ZADD', KEYS[3], ARGV[2], id)
redis.call('ZADD', KEYS[4], ARGV[2], id)
redis.call('SET', KEYS[5], id, 'EX', ARGV[3])
return id
"""

# KEYS: the request, by_status:open, by_status:closed.
# ARGV: id, status, updated_ts, notes, "1" to set the notes ("0" clears them).
# Reply: the request's fields after the update, or {} when there is no such request.
UPDATE_STATUS_LUA: Final = """
local requested = redis.call('HGET', KEYS[1], 'requested_ts')
if not requested then return {} end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_ts', ARGV[3])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'status_notes', ARGV[4])
else
  redis.call('HDEL', KEYS[1], 'status_notes')
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] == 'open' then
  redis.call('ZADD', KEYS[2], requested, ARGV[1])
else
  redis.call('ZADD', KEYS[3], requested, ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: apps, the new key's hash. ARGV: app, key_id, digest, issued_ts, api key prefix.
# The app's previous key, if any, stops working in the same step.
ISSUE_KEY_LUA: Final = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and old ~= ARGV[2] then redis.call('DEL', ARGV[5] .. old) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'app', ARGV[1], 'digest', ARGV[3], 'issued_ts', ARGV[4])
return 1
"""

# KEYS: apps. ARGV: app, api key prefix. Reply: 1 revoked, 0 the app had no key.
REVOKE_KEY_LUA: Final = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('DEL', ARGV[2] .. old)
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


# -- operations, written once as batches of commands --------------------------------------------
_Cmd = tuple[Any, ...]
_Steps = Generator[list[_Cmd], list[Any], T]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _check_app(app: str) -> str:
    if not isinstance(app, str) or not app.strip() or len(app) > MAX_APP_NAME:
        raise RejectedError(
            f"an application name is 1-{MAX_APP_NAME} characters", code="bad_request"
        )
    if _CONTROL_RE.search(app) or _LINE_BREAK_RE.search(app):
        raise RejectedError("an application name holds no control characters", code="bad_request")
    return app


def _steps_issue_key(keys: Open311Keys, app: str, ts: float) -> _Steps[str]:
    app = _check_app(app)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    yield [("EVAL", ISSUE_KEY_LUA, 2, keys.apps, keys.api_key(key_id),
            app, key_id, _digest(secret), repr(ts), keys.api_key_prefix)]
    return f"{key_id}.{secret}"


def _steps_check_key(keys: Open311Keys, key: str) -> _Steps[str | None]:
    match = _KEY_RE.match(key) if isinstance(key, str) else None
    if match is None:
        return None
    key_id, secret = match.groups()
    (raw,) = yield [("HGETALL", keys.api_key(key_id))]
    stored = {_text(k): _text(v) for k, v in (raw or {}).items()}
    digest, app = stored.get("digest"), stored.get("app")
    if digest is None or app is None or not hmac.compare_digest(digest, _digest(secret)):
        return None
    return app


def _steps_revoke(keys: Open311Keys, app: str) -> _Steps[bool]:
    (reply,) = yield [("EVAL", REVOKE_KEY_LUA, 1, keys.apps, _check_app(app),
                       keys.api_key_prefix)]
    return bool(reply)


def _steps_apps(keys: Open311Keys) -> _Steps[list[str]]:
    (reply,) = yield [("HKEYS", keys.apps)]
    return sorted(_text(name) for name in reply or ())


def _steps_create(keys: Open311Keys, new: NewRequest, ts: float,
                  app: str | None) -> _Steps[ServiceRequest]:
    if not isinstance(new, NewRequest):
        raise RejectedError("create takes a NewRequest (see validate_request)", code="bad_request")
    if app is not None:
        _check_app(app)
    values = _opened_fields(new, ts, app)
    pairs = [part for item in values.items() for part in item]
    nonce = uuid.uuid4().hex
    (reply,) = yield [(
        "EVAL", CREATE_LUA, 5, keys.sequence, keys.by_time, keys.by_status("open"),
        keys.by_code(new.service_code), keys.nonce(nonce),
        keys.request_prefix, repr(ts), _NONCE_TTL_S, *pairs,
    )]
    return ServiceRequest.from_fields({**values, "service_request_id": _text(reply)})


def _steps_get(keys: Open311Keys, request_id: str) -> _Steps[ServiceRequest]:
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.match(request_id):
        raise KeyError(request_id)
    (raw,) = yield [("HGETALL", keys.request(request_id))]
    if not raw:
        raise KeyError(request_id)
    return ServiceRequest.from_fields(raw)


def _score(value: float) -> str:
    if value == math.inf:
        return "+inf"
    if value == -math.inf:
        return "-inf"
    return repr(value)


def _newest_first(records: list[ServiceRequest]) -> list[ServiceRequest]:
    return sorted(records, key=lambda r: (r.requested_ts, int(r.service_request_id)),
                  reverse=True)


def _steps_list(keys: Open311Keys, query: RequestQuery) -> _Steps[list[ServiceRequest]]:
    if query.ids:
        wanted = [i for i in query.ids if _REQUEST_ID_RE.match(i)]
        if not wanted:
            return []
        rows = yield [("HGETALL", keys.request(i)) for i in wanted]
        return _newest_first([ServiceRequest.from_fields(r) for r in rows if r])[: query.limit]
    # The narrowest index that answers the query; what it does not filter is checked per row.
    if query.service_codes:
        indexes = [keys.by_code(c) for c in sorted(query.service_codes)]
    elif len(query.statuses) == 1:
        indexes = [keys.by_status(next(iter(query.statuses)))]
    else:
        indexes = [keys.by_time]
    found: dict[str, ServiceRequest] = {}
    for index in indexes:
        matched = 0
        offset = 0
        while matched < query.limit:
            (ids,) = yield [("ZREVRANGEBYSCORE", index, _score(query.end_ts),
                             _score(query.start_ts), "LIMIT", offset, _SCAN_CHUNK)]
            if not ids:
                break
            offset += len(ids)
            rows = yield [("HGETALL", keys.request(_text(i))) for i in ids]
            for row in rows:
                if not row:
                    continue
                record = ServiceRequest.from_fields(row)
                # A request opened during the scan shifts the offsets: it may come twice.
                if query.matches(record) and record.service_request_id not in found:
                    found[record.service_request_id] = record
                    matched += 1
            if len(ids) < _SCAN_CHUNK:
                break
    return _newest_first(list(found.values()))[: query.limit]


def _steps_update_status(keys: Open311Keys, request_id: str, status: str, notes: str | None,
                         ts: float) -> _Steps[ServiceRequest]:
    if status not in STATUSES:
        raise RejectedError(f"status {status!r} is neither open nor closed", code="bad_status")
    if notes is not None and (not isinstance(notes, str) or len(notes) > MAX_DESCRIPTION):
        raise RejectedError(f"status notes are a string of at most {MAX_DESCRIPTION} characters",
                            code="bad_request")
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.match(request_id):
        raise KeyError(request_id)
    (reply,) = yield [(
        "EVAL", UPDATE_STATUS_LUA, 3, keys.request(request_id), keys.by_status("open"),
        keys.by_status("closed"), request_id, status, repr(ts), notes or "",
        "1" if notes else "0",
    )]
    if not reply:
        raise KeyError(request_id)
    return ServiceRequest.from_fields(
        {reply[i]: reply[i + 1] for i in range(0, len(reply) - 1, 2)}
    )


@dataclass(frozen=True, slots=True)
class _Done(Generic[T]):
    """What an operation's steps returned once they needed no more replies."""

    value: T


def _advance(steps: _Steps[T], replies: list[Any] | None) -> list[_Cmd] | _Done[T]:
    """Feed ``replies`` (None at first) to ``steps``: their next batch, or their result."""
    try:
        return next(steps) if replies is None else steps.send(replies)
    except StopIteration as done:
        return _Done(done.value)


# -- Redis, async -------------------------------------------------------------------------------
class Open311Store:
    """Service requests and API keys on Redis through ``redis.asyncio``.

    For the runtime's coordinators (dispatch closes a request when its
    intervention is done). Connection-level failures are retried under
    ``retry`` and then raise :class:`~runtime.errors.StoreUnavailableError`;
    the client is created in the running loop on first use and released by
    :meth:`close`.
    """

    def __init__(self, url: str, namespace: str = "cp", retry: RetryPolicy = _DEFAULT_RETRY,
                 clock: Clock | None = None, *, socket_timeout: float = 1.0,
                 connect_timeout: float = 1.0) -> None:
        _check_url(url)
        if socket_timeout <= 0 or connect_timeout <= 0:
            raise ConfigError("store timeouts must be > 0")
        self.url = url
        self.keys = Open311Keys(namespace)
        self._clock: Clock = clock or SystemClock()
        self._guard = _Guard(_redact(url), retry)
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._redis: aioredis.Redis | None = None

    @property
    def healthy(self) -> bool:
        """True when the last contact with Redis succeeded."""
        return self._guard.healthy

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self.url, socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._connect_timeout, decode_responses=False,
                # The retry policy is the only retry layer: redis-py's own would multiply it.
                retry=AsyncRetry(NoBackoff(), 0),
            )
        return self._redis

    async def close(self) -> None:
        """Release the connections; the store may be used again later."""
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(rex.RedisError, OSError):
                await client.aclose()

    async def _batch(self, op: str, batch: Sequence[_Cmd]) -> list[Any]:
        client = self._client()
        started = self._clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                pipe = client.pipeline(transaction=False)
                for cmd in batch:
                    pipe.execute_command(*cmd)
                replies = await pipe.execute()
            except (rex.RedisError, OSError) as exc:
                elapsed = self._clock.monotonic() - started
                await self._clock.sleep(self._guard.backoff(exc, op, attempt, elapsed))
                continue
            self._guard.succeeded()
            return list(replies)

    async def _run(self, op: str, steps: _Steps[T]) -> T:
        replies: list[Any] | None = None
        while True:
            step = _advance(steps, replies)
            if isinstance(step, _Done):
                return step.value
            replies = await self._batch(op, step)

    async def issue_key(self, app: str) -> str:
        """A new API key for client application ``app``, replacing its previous one.

        The plaintext is returned once; the store keeps only its digest.
        """
        return await self._run("issue_key", _steps_issue_key(self.keys, app, self._clock.time()))

    async def check_key(self, key: str) -> str | None:
        """The application ``key`` belongs to, or None when it is not a live key."""
        return await self._run("check_key", _steps_check_key(self.keys, key))

    async def revoke(self, app: str) -> bool:
        """Revoke ``app``'s key at once; whether it had one."""
        return await self._run("revoke", _steps_revoke(self.keys, app))

    async def apps(self) -> list[str]:
        """The applications that hold a key, sorted."""
        return await self._run("apps", _steps_apps(self.keys))

    async def create(self, new: NewRequest, *, app: str | None = None,
                     ts: float | None = None) -> ServiceRequest:
        """Store ``new`` as an open request; the stored record, with its ``service_request_id``.

        Ids are 1, 2, 3…; a create retried after a lost reply returns the
        first id instead of opening a second request.
        """
        when = self._clock.time() if ts is None else ts
        return await self._run("create", _steps_create(self.keys, new, when, app))

    async def get(self, request_id: str) -> ServiceRequest:
        """The request ``request_id``; :class:`KeyError` when there is none."""
        return await self._run("get", _steps_get(self.keys, request_id))

    async def list_requests(self, query: RequestQuery) -> list[ServiceRequest]:
        """The requests ``query`` selects, newest first, at most ``query.limit``."""
        return await self._run("list_requests", _steps_list(self.keys, query))

    async def update_status(self, request_id: str, status: str, notes: str | None = None, *,
                            ts: float | None = None) -> ServiceRequest:
        """Set a request's status and notes (None clears them); the updated record.

        :class:`KeyError` when there is no such request.
        """
        when = self._clock.time() if ts is None else ts
        return await self._run(
            "update_status", _steps_update_status(self.keys, request_id, status, notes, when)
        )


# -- Redis, sync (the Flask admin) --------------------------------------------------------------
class SyncOpen311Store:
    """:class:`Open311Store`'s operations over a blocking ``redis.Redis``, for Flask's threads.

    Same keys, scripts, codecs and error mapping; safe to share between
    threads. Retries default to :data:`HTTP_RETRY`, so that an HTTP caller
    gets a prompt :class:`~runtime.errors.StoreUnavailableError` (a 503).
    """

    def __init__(self, url: str, namespace: str = "cp", retry: RetryPolicy = HTTP_RETRY, *,
                 socket_timeout: float = 1.0, connect_timeout: float = 1.0,
                 city_clock: Clock | None = None) -> None:
        _check_url(url)
        self.url = url
        self.keys = Open311Keys(namespace)
        # Requests are stamped on the city's clock (retries keep the machine's).
        self._city_clock: Clock = city_clock or SystemClock()
        self._guard = _Guard(_redact(url), retry)
        self._redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
            decode_responses=False, retry=SyncRetry(NoBackoff(), 0),
        )

    @property
    def healthy(self) -> bool:
        """True when the last contact with Redis succeeded."""
        return self._guard.healthy

    def close(self) -> None:
        """Release the connection pool."""
        with contextlib.suppress(rex.RedisError, OSError):
            self._redis.close()

    def _batch(self, op: str, batch: Sequence[_Cmd]) -> list[Any]:
        # Real time here: the admin's threads cannot await an injected clock.
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                pipe = self._redis.pipeline(transaction=False)
                for cmd in batch:
                    # redis-py's sync pipeline leaves this one method unannotated.
                    pipe.execute_command(*cmd)  # type: ignore[no-untyped-call]
                replies = pipe.execute()
            except (rex.RedisError, OSError) as exc:
                time.sleep(self._guard.backoff(exc, op, attempt, time.monotonic() - started))
                continue
            self._guard.succeeded()
            return list(replies)

    def _run(self, op: str, steps: _Steps[T]) -> T:
        replies: list[Any] | None = None
        while True:
            step = _advance(steps, replies)
            if isinstance(step, _Done):
                return step.value
            replies = self._batch(op, step)

    def issue_key(self, app: str) -> str:
        """As :meth:`Open311Store.issue_key`."""
        return self._run("issue_key", _steps_issue_key(self.keys, app, time.time()))

    def check_key(self, key: str) -> str | None:
        """As :meth:`Open311Store.check_key`."""
        return self._run("check_key", _steps_check_key(self.keys, key))

    def revoke(self, app: str) -> bool:
        """As :meth:`Open311Store.revoke`."""
        return self._run("revoke", _steps_revoke(self.keys, app))

    def apps(self) -> list[str]:
        """As :meth:`Open311Store.apps`."""
        return self._run("apps", _steps_apps(self.keys))

    def create(self, new: NewRequest, *, app: str | None = None,
               ts: float | None = None) -> ServiceRequest:
        """As :meth:`Open311Store.create`."""
        when = self._city_clock.time() if ts is None else ts
        return self._run("create", _steps_create(self.keys, new, when, app))

    def get(self, request_id: str) -> ServiceRequest:
        """As :meth:`Open311Store.get`."""
        return self._run("get", _steps_get(self.keys, request_id))

    def list_requests(self, query: RequestQuery) -> list[ServiceRequest]:
        """As :meth:`Open311Store.list_requests`."""
        return self._run("list_requests", _steps_list(self.keys, query))

    def update_status(self, request_id: str, status: str, notes: str | None = None, *,
                      ts: float | None = None) -> ServiceRequest:
        """As :meth:`Open311Store.update_status`."""
        when = self._city_clock.time() if ts is None else ts
        return self._run(
            "update_status", _steps_update_status(self.keys, request_id, status, notes, when)
        )

