"""Open311 GeoReport v2 for citizens' apps, under ``/open311/v2`` (CONTRACT.md).

The blueprint is built on an :class:`Open311Backend` and mounted by the
composition root on the admin app::

    backend = Open311Backend(
        store=SyncOpen311Store(redis_url, namespace),   # runtime.open311
        geography=demo_geography(),                     # runtime.geo
        on_request=hand_to_dispatch,                    # called with each new ServiceRequest
    )
    app = create_app(admin_backend, users)
    app.register_blueprint(open311_blueprint(backend))

Routes, ``{fmt}`` being ``json`` or ``xml`` as the specification's URLs have it:

    GET  /open311/v2/services.{fmt}                 the service list
    GET  /open311/v2/services/{service_code}.{fmt}  a service definition (no attributes)
    POST /open311/v2/requests.{fmt}                 form-encoded, ``api_key`` required
    GET  /open311/v2/requests.{fmt}                 ?service_request_id=&service_code=
                                                    &start_date=&end_date=&status=
    GET  /open311/v2/requests/{id}.{fmt}            a list of one request

The routes take no session and no bearer token: reads are public and a POST
is authenticated by its ``api_key`` alone (issued per client application by
an admin, :meth:`~runtime.open311.SyncOpen311Store.issue_key`). Public reads
show the GeoReport fields only, never the citizen's details. A refusal is
answered with the specification's error list ``[{"code", "description"}]``
(or ``<errors>``), the code being the HTTP status: 400 bad or missing
parameter, 403 missing or invalid ``api_key``, 404 unknown service, request
or jurisdiction; 503 with ``Retry-After`` while Redis is unreachable.
Each POST that carries an ``api_key`` is audited (``open311.request_create``,
the user being ``open311:APP``, or none for a key that is not valid) with the
service and the place, never the key or the citizen's details.

A 404 for a path no route matches and a 405 are decided before the blueprint
sees the request, so the app's own handlers answer them; they answer in JSON
only for paths that ``admin_web.http_errors.is_api_request`` covers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol
from xml.etree import ElementTree as ET

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from admin_web.audit import audited
from runtime.errors import RetryableError
from runtime.open311 import (
    NewRequest,
    Open311Error,
    RequestQuery,
    ServiceCatalogue,
    ServiceRequest,
    default_catalogue,
    parse_query,
    validate_request,
)

if TYPE_CHECKING:
    from runtime.geo import Geography

__all__ = ["OPEN311_PREFIX", "Open311Backend", "Open311Requests", "open311_blueprint"]

log: Final = logging.getLogger("commandpost.open311")

OPEN311_PREFIX: Final = "/open311/v2"
FORMATS: Final = ("json", "xml")
FORM_TYPES: Final = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
#: The fields of a citizen's request the audit trail keeps (not his name, email or words).
_AUDITED_FIELDS: Final = ("service_code", "lat", "long", "jurisdiction_id")
_CONTENT_TYPES: Final = {
    "json": "application/json; charset=utf-8",
    "xml": "text/xml; charset=utf-8",
}


class Open311Requests(Protocol):
    """What the routes call on the store: :class:`~runtime.open311.SyncOpen311Store`'s reads."""

    def check_key(self, key: str) -> str | None:
        """The application ``key`` belongs to, or None."""
        ...

    def create(self, new: NewRequest, *, app: str | None = None,
               ts: float | None = None) -> ServiceRequest:
        """Store ``new`` as an open request and return it with its id."""
        ...

    def get(self, request_id: str) -> ServiceRequest:
        """One request; :class:`KeyError` when unknown."""
        ...

    def list_requests(self, query: RequestQuery) -> list[ServiceRequest]:
        """The requests ``query`` selects, newest first."""
        ...


def _no_hand_off(record: ServiceRequest) -> None:
    """The default ``on_request``: nobody is told (the request is stored all the same)."""


@dataclass(frozen=True)
class Open311Backend:
    """What the Open311 routes run on.

    ``on_request`` receives each new request once it is stored, on the
    request's thread, before the client gets its id: it should hand the
    record over (to the dispatch coordinator) and return. If it raises, the
    error is logged and the client still gets its id, since the request is
    stored and stays readable; ``clock`` gives "now" for the default 90 days.
    """

    store: Open311Requests
    geography: Geography
    catalogue: ServiceCatalogue = field(default_factory=default_catalogue)
    on_request: Callable[[ServiceRequest], None] = _no_hand_off
    clock: Callable[[], float] = time.time


# -- formats ------------------------------------------------------------------------------------
def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise Open311Error(404, f"format {fmt!r} is not offered: use json or xml")
    return fmt


def _xml_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _xml_element(tag: str, data: Mapping[str, Any]) -> ET.Element:
    element = ET.Element(tag)
    for name, value in data.items():
        child = ET.SubElement(element, name)
        if isinstance(value, list):
            # The only list is a definition's attributes; ours are always empty.
            continue
        child.text = _xml_text(value)
    return element


def _render(fmt: str, data: Any, root: str, item: str | None, status: int) -> Response:
    """``data`` as JSON, or as XML under ``<root>`` (one ``<item>`` per element of a list)."""
    if fmt == "xml":
        if item is None:
            element = _xml_element(root, data)
        else:
            element = ET.Element(root)
            element.extend(_xml_element(item, entry) for entry in data)
        body = ET.tostring(element, encoding="utf-8", xml_declaration=True)
    else:
        body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    return Response(body, status=status, content_type=_CONTENT_TYPES[fmt])


def _requested_format() -> str:
    fmt = (request.view_args or {}).get("fmt")
    return "xml" if fmt == "xml" else "json"


def _errors(status: int, description: str) -> Response:
    body = [{"code": status, "description": description}]
    return _render(_requested_format(), body, "errors", "error", status)


# -- error handlers: every refusal in the specification's shape ---------------------------------
def _refused(exc: Open311Error) -> Response:
    return _errors(exc.status, exc.description)


def _unavailable(exc: RetryableError) -> Response:
    log.warning("%s %s: %s", request.method, request.path, exc)
    response = _errors(503, "temporarily unavailable, try again")
    # Redis comes back within seconds in the usual failover: ask for an early retry.
    response.headers["Retry-After"] = "1"
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = _errors(status, (exc.name or "error").lower())
    for name, value in exc.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.path)
    return _errors(500, "internal error")


# -- the blueprint ------------------------------------------------------------------------------
def _query_args() -> dict[str, str]:
    # A parameter "can be declared multiple times": repeated values join the comma list.
    return {name: ",".join(request.args.getlist(name)) for name in request.args}


def _check_jurisdiction(args: Mapping[str, str], catalogue: ServiceCatalogue) -> None:
    given = (args.get("jurisdiction_id") or "").strip()
    if given and given != catalogue.jurisdiction_id:
        raise Open311Error(404, f"jurisdiction_id {given!r} was not found")


def open311_blueprint(backend: Open311Backend) -> Blueprint:
    """The GeoReport v2 routes on ``backend``, to mount under :data:`OPEN311_PREFIX`."""
    bp = Blueprint("open311", __name__, url_prefix=OPEN311_PREFIX)
    catalogue = backend.catalogue

    @bp.get("/services.<fmt>")
    def services(fmt: str) -> Response:
        """The service list."""
        _check_format(fmt)
        _check_jurisdiction(_query_args(), catalogue)
        return _render(fmt, catalogue.public(), "services", "service", 200)

    @bp.get("/services/<service_code>.<fmt>")
    def service_definition(service_code: str, fmt: str) -> Response:
        """A service's definition: no service has attributes (``metadata`` is false)."""
        _check_format(fmt)
        _check_jurisdiction(_query_args(), catalogue)
        if service_code not in catalogue:
            raise Open311Error(404, f"service_code {service_code!r} was not found")
        return _render(fmt, catalogue.get(service_code).definition(),
                       "service_definition", None, 200)

    @bp.post("/requests.<fmt>")
    def post_request(fmt: str) -> Response:
        """Open a request: 201 ``[{"service_request_id", "service_notice", "account_id"}]``."""
        _check_format(fmt)
        if request.mimetype not in FORM_TYPES:
            raise Open311Error(
                400, "the body must be form-encoded (application/x-www-form-urlencoded)"
            )
        form = request.form.to_dict()  # the first value of each parameter
        key = (form.get("api_key") or "").strip()
        if not key:
            raise Open311Error(403, "api_key was not provided")
        # Audited as the application's act (``open311:APP``), never with the key nor the
        # citizen's own details: the service and the place only.
        params = {name: form[name][:100] for name in _AUDITED_FIELDS if name in form}
        with audited("open311.request_create", params=params) as note:
            app_name = backend.store.check_key(key)
            if app_name is None:
                raise Open311Error(403, "invalid api_key: can't proceed with create_request")
            note.user, note.role = f"open311:{app_name}", "open311"
            record = backend.store.create(
                validate_request(form, catalogue, backend.geography), app=app_name
            )
            note.target = record.service_request_id
            note.after = {"service_request_id": record.service_request_id,
                          "municipality": record.municipality}
        log.info("open311 request %s opened: %s in %s by %s", record.service_request_id,
                 record.service_code, record.municipality or "an address", app_name)
        try:
            backend.on_request(record)
        except Exception:
            log.exception("open311 request %s is stored, but its hand-off failed",
                          record.service_request_id)
        body = [{
            "service_request_id": record.service_request_id,
            "service_notice": record.service_notice,
            "account_id": None,
        }]
        response = _render(fmt, body, "service_requests", "request", 201)
        response.headers["Location"] = (
            f"{request.script_root}{OPEN311_PREFIX}/requests/{record.service_request_id}.{fmt}"
        )
        return response

    @bp.get("/requests.<fmt>")
    def requests(fmt: str) -> Response:
        """Requests by id list, or by service, dates and status (90 days, 1000 at most)."""
        _check_format(fmt)
        args = _query_args()
        _check_jurisdiction(args, catalogue)
        found = backend.store.list_requests(parse_query(args, backend.clock()))
        return _render(fmt, [r.public() for r in found], "service_requests", "request", 200)

    @bp.get("/requests/<request_id>.<fmt>")
    def one_request(request_id: str, fmt: str) -> Response:
        """One request, as a list of one (the specification's shape)."""
        _check_format(fmt)
        _check_jurisdiction(_query_args(), catalogue)
        try:
            record = backend.store.get(request_id)
        except KeyError:
            raise Open311Error(404, f"service_request_id {request_id!r} was not found") from None
        return _render(fmt, [record.public()], "service_requests", "request", 200)

    bp.register_error_handler(Open311Error, _refused)
    bp.register_error_handler(RetryableError, _unavailable)
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(Exception, _unexpected)
    return bp
