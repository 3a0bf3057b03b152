"""Error responses: JSON under ``/api`` and ``/open311``, HTML pages elsewhere, never a traceback.

API routes signal a refusal by raising :class:`ApiError`; anything else that
escapes a view is logged with its traceback and answered with a bare 500.
Under ``/open311/`` an error the Open311 blueprint did not answer itself (no
route matched, a method not allowed) takes the GeoReport v2 shape,
``[{"code", "description"}]``, as the blueprint's own refusals do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final

from flask import Flask, Response, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from runtime.errors import AuthError, RetryableError, StoreUnavailableError

log: Final = logging.getLogger("commandpost.admin_web")

INTERNAL_ERROR: Final = "internal error"


class ApiError(Exception):
    """An API refusal: answered as ``status`` with ``{"error": error, "field": field}``.

    ``field`` names the offending body or query field of a 400/422, and is
    left out of the body when None; ``headers`` are added to the response
    (``WWW-Authenticate`` for a 401).
    """

    def __init__(
        self,
        status: int,
        error: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        if not 400 <= status <= 599:
            raise ValueError(f"an API error status is 4xx or 5xx, not {status}")
        self.status = status
        self.error = error
        self.field = field
        self.headers = dict(headers or {})


def is_api_request() -> bool:
    """Whether the current request is for the JSON API or Open311 (so errors are JSON)."""
    path = request.path
    return path == "/api" or path.startswith("/api/") or is_open311_request()


def is_open311_request() -> bool:
    """Whether the current request is for Open311 (errors in the specification's shape)."""
    return request.path.startswith("/open311/")


def _json_error(status: int, error: str, field: str | None = None) -> Response:
    if is_open311_request():
        response = jsonify([{"code": status, "description": error}])
        response.status_code = status
        return response
    body: dict[str, str] = {"error": error}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    return response


def _page_error(status: int, message: str) -> tuple[str, int]:
    return render_template("error.html", status=status, message=message), status


def _describe(exc: HTTPException) -> str:
    # Werkzeug's stock descriptions are paragraphs written for browsers; a
    # client of the API gets the short name unless a view chose its own words.
    if exc.description and exc.description != type(exc).description:
        return exc.description
    return (exc.name or "error").lower()


def _handle_api_error(exc: ApiError) -> Response | tuple[str, int]:
    if not is_api_request():
        return _page_error(exc.status, exc.error)
    response = _json_error(exc.status, exc.error, exc.field)
    response.headers.update(exc.headers)
    return response


def _handle_auth_error(exc: AuthError) -> Response | tuple[str, int]:
    if not is_api_request():
        return _page_error(403, "not allowed")
    response = _json_error(401, "authentication required")
    response.headers["WWW-Authenticate"] = 'Bearer realm="commandpost"'
    return response


def _handle_http_exception(exc: HTTPException) -> ResponseReturnValue:
    if exc.code is None:
        # A routing redirect (trailing slash): let Werkzeug answer it.
        return exc
    if not is_api_request():
        return _page_error(exc.code, _describe(exc))
    # Keep the exception's own headers (Allow on a 405), with a JSON body.
    response = exc.get_response()
    body: object = ([{"code": exc.code, "description": _describe(exc)}] if is_open311_request()
                    else {"error": _describe(exc)})
    response.set_data(json.dumps(body))
    response.content_type = "application/json"
    return response


def _handle_retryable(exc: RetryableError) -> Response | tuple[str, int]:
    # The runtime is briefly unavailable (a supervisor restarting, Redis away): ask to retry.
    log.warning("%s %s: %s", request.method, request.path, exc)
    # Redis away before the route got to its own refusal (the user behind a token, say).
    what = ("store unavailable, " + ("try again" if request.method in ("GET", "HEAD")
                                     else "request not accepted")
            if isinstance(exc, StoreUnavailableError) else "temporarily unavailable, try again")
    if not is_api_request():
        return _page_error(503, what)
    response = _json_error(503, what)
    response.headers["Retry-After"] = "1"
    return response


def _handle_unexpected(exc: Exception) -> Response | tuple[str, int]:
    log.exception("unhandled error in %s %s", request.method, request.path)
    if not is_api_request():
        return _page_error(500, INTERNAL_ERROR)
    return _json_error(500, INTERNAL_ERROR)


def install_error_handlers(app: Flask) -> None:
    """Register the JSON/HTML error handlers on ``app``."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(AuthError, _handle_auth_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(RetryableError, _handle_retryable)
    app.register_error_handler(Exception, _handle_unexpected)


def store_unavailable(what: str) -> ApiError:
    """503 for a store out of reach, with ``Retry-After``."""
    # Redis comes back within seconds in the usual failover, so ask for an early retry.
    return ApiError(503, f"store unavailable, {what}", headers={"Retry-After": "1"})


def json_object_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 saying what is wrong with it.

    The app's JSON parser (:mod:`admin_web.strict_json`) refuses ``NaN`` and
    ``Infinity``, which are not JSON, and nesting too deep to parse.
    """
    if not request.is_json:
        raise ApiError(400, "the body must be JSON (Content-Type: application/json)")
    try:
        body = current_app.json.loads(request.get_data(cache=True))
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body
