"""The admin web of commandpost: JSON API, pages, users and audit.

    users = UserRegistry()
    creds = create_demo_users(users, municipalities=["dijon", "talant"])
    write_credentials("credentials.json", creds)
    server = AdminServer(create_app(StaticBackend(), users), *parse_listen("127.0.0.1:8080"))
    server.start()

It sees the runtime only through :class:`AdminBackend`.
"""

from admin_web.app import create_app
from admin_web.auth import (
    ApiToken,
    Role,
    UnknownUserError,
    User,
    UserRegistry,
    create_demo_users,
    hash_password,
    hash_token,
    parse_role,
    password_problem,
    verify_password,
    write_credentials,
)
from admin_web.backend import AdminBackend, StaticBackend, SwappableBackend
from admin_web.desks import DeskBook, builtin_desks, load_desks
from admin_web.guards import current_user, ensure_scope, require, require_login
from admin_web.http_errors import ApiError
from admin_web.redact import redact_url, redact_urls
from admin_web.server import AdminServer, parse_listen
from admin_web.throttle import LoginThrottle

__all__ = [
    "AdminBackend",
    "AdminServer",
    "ApiError",
    "ApiToken",
    "DeskBook",
    "LoginThrottle",
    "Role",
    "StaticBackend",
    "SwappableBackend",
    "UnknownUserError",
    "User",
    "UserRegistry",
    "builtin_desks",
    "create_app",
    "create_demo_users",
    "current_user",
    "ensure_scope",
    "hash_password",
    "hash_token",
    "load_desks",
    "parse_listen",
    "parse_role",
    "password_problem",
    "redact_url",
    "redact_urls",
    "require",
    "require_login",
    "verify_password",
    "write_credentials",
]
