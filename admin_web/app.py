"""The admin web application: JSON API, pages, auth, audit.

Built once by the composition root and served by :class:`AdminServer`::

    users = UserRegistry()
    creds = create_demo_users(users)
    app = create_app(StaticBackend(), users)
    server = AdminServer(app, port=8080)
    server.start()
"""

from __future__ import annotations

import logging
import secrets
from typing import Final

from flask import Flask, Response, g, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from admin_web.api import API_PREFIX, api
from admin_web.audit import MUTATING_METHODS, audit_unrecorded
from admin_web.auth import Role, User, UserRegistry
from admin_web.backend import AdminBackend
from admin_web.city_pages import city_pages
from admin_web.context import Services, install
from admin_web.desks import DeskBook, builtin_desks
from admin_web.guards import CSRF_FIELD, SESSION_COOKIE, csrf_token
from admin_web.history import history
from admin_web.http_errors import install_error_handlers
from admin_web.interventions import interventions
from admin_web.keys import keys
from admin_web.openapi import openapi
from admin_web.ops_pages import ops_pages
from admin_web.pages import pages
from admin_web.strict_json import StrictJSONProvider
from admin_web.throttle import LoginThrottle
from admin_web.user_pages import user_pages
from admin_web.users import users_api
from runtime.errors import ConfigError

audit: Final = logging.getLogger("commandpost.audit")

MAX_BODY_BYTES: Final = 1024 * 1024

# No inline script or style anywhere, so the policy can be this strict.
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


#: The pages in the bar: path, label, and the role that sees the link.
NAV_PAGES: Final = (
    ("/", "City", Role.VIEWER),
    ("/tree", "Supervision", Role.VIEWER),
    ("/equipment", "Equipment", Role.VIEWER),
    ("/alarms", "Alarms", Role.VIEWER),
    ("/crisis", "Crisis", Role.VIEWER),
    ("/interventions", "Interventions", Role.VIEWER),
    ("/priority", "Bus priority", Role.VIEWER),
    ("/energy", "Energy", Role.VIEWER),
    ("/audit", "Audit", Role.ADMIN),
    ("/users", "Users", Role.ADMIN),
)


class _SessionCookies(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, the cookie marked ``Secure`` when configured
    (``SESSION_COOKIE_SECURE``: served behind a TLS proxy) or when the request came
    over TLS itself, so that a browser never sends it over plain HTTP."""

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = bool(app.config["SESSION_COOKIE_SECURE"])
        return configured or (has_request_context() and request.is_secure)


def create_app(
    backend: AdminBackend, users: UserRegistry, *, secret_key: bytes | None = None,
    secure_cookies: bool = False, login_throttle: LoginThrottle | None = None,
    trusted_proxies: int = 0, desks: DeskBook | None = None,
) -> Flask:
    """Build the admin web on ``backend`` (the runtime's read model) and ``users``.

    ``secret_key`` signs the session cookies; when None a random one is drawn,
    so sessions end with the process. The session cookie is ``HttpOnly`` and
    ``SameSite=Lax``, and ``Secure`` when ``secure_cookies`` (the app is served
    to browsers through HTTPS) or the request came over TLS. Failed logins are
    counted by ``login_throttle`` (a default :class:`LoginThrottle` when None).

    ``trusted_proxies`` is how many reverse proxies stand in front of the app:
    the client's address (audited, throttled) and scheme are then taken from
    the ``X-Forwarded-For`` and ``X-Forwarded-Proto`` entries they added. With
    0, the default, those headers are ignored: any client could write them.

    ``desks`` says what each desk of the control room commands and reads
    (:mod:`admin_web.desks`; the shipped ``desks.toml`` when None).
    """
    if not 0 <= trusted_proxies <= 10:
        raise ConfigError(f"trusted proxies must be 0-10: {trusted_proxies}")
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key if secret_key is not None else secrets.token_bytes(32),
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
    )
    app.session_interface = _SessionCookies()
    if trusted_proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=trusted_proxies, x_proto=trusted_proxies)
    app.json = StrictJSONProvider(app)
    install(app, Services(backend=backend, users=users,
                          throttle=login_throttle or LoginThrottle(),
                          desks=desks if desks is not None else builtin_desks()))
    install_error_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(interventions)
    app.register_blueprint(keys)
    app.register_blueprint(history)
    app.register_blueprint(users_api)
    app.register_blueprint(openapi)
    app.register_blueprint(pages)
    app.register_blueprint(user_pages)
    app.register_blueprint(city_pages)
    app.register_blueprint(ops_pages)
    app.jinja_env.globals.update(csrf_token=csrf_token, csrf_field=CSRF_FIELD,
                                 nav_pages=NAV_PAGES)
    app.after_request(_conditional)
    app.after_request(_secure_headers)
    app.after_request(_audit)
    return app


def _conditional(response: Response) -> Response:
    # A page polling a read sends back the ETag it has, and an unchanged answer costs it a
    # 304 with no body. Answers that carry a version of their own (a user's) keep it.
    if (request.method == "GET" and response.status_code == 200
            and request.path.startswith(API_PREFIX + "/") and response.is_json
            and not response.is_streamed):
        if "ETag" not in response.headers:
            response.add_etag()
        response.make_conditional(request)
    return response


def _secure_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "static":
        # Answers depend on who asks: no shared or browser cache may keep them.
        response.headers["Cache-Control"] = "no-store"
    return response


def _audit(response: Response) -> Response:
    # The record is the audit stream: one per change asked for, whether or not the view
    # recorded it (admin_web.audit). A log line besides, for whoever reads the logs.
    audit_unrecorded(response)
    if request.method in MUTATING_METHODS:
        user = g.get("user")
        if isinstance(user, User):
            audit.info(
                "user=%s role=%s method=%s path=%r status=%d",
                user.name,
                user.role,
                request.method,
                request.path,
                response.status_code,
            )
    return response
