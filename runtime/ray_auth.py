"""Ray's token authentication, as the runtime meets it when it joins a cluster.

Ray (2.52 and later; the project pins 2.60) authenticates every call to a
cluster's GCS, raylets and agents with one shared token when the cluster runs
with ``RAY_AUTH_MODE=token``. The runtime gives Ray nothing itself:
``ray.init`` reads the same environment as ``ray start``, in this order:

==========================  ==================================================
variable                    meaning
==========================  ==================================================
``RAY_AUTH_MODE``           ``token`` turns authentication on (``disabled``
                            off); read once, when ``ray`` is imported
``RAY_AUTH_TOKEN``          the token itself (Kubernetes: a ``secretKeyRef``)
``RAY_AUTH_TOKEN_PATH``     a file holding it (systemd: ``LoadCredential=``,
                            ``RAY_AUTH_TOKEN_PATH=%d/ray-token``)
``~/.ray/auth_token``       the token file of last resort
==========================  ==================================================

Ray 2.60 sends a token to a cluster given by address (``--ray-address
HOST:PORT``) only when ``RAY_AUTH_MODE=token`` is set: given the token alone,
it connects without one, and the cluster's refusal surfaces 20 s later as
"Failed to connect to Ray cluster". :func:`token_problem` names that mistake
before connecting; :func:`connection_failure` turns a refusal into an
:class:`~runtime.errors.AuthError` that says which token was refused (never the
token itself). ``--ray-address auto`` (a node of this machine) and a local Ray
of the runtime's own need nothing: there Ray turns token mode on by itself
when it finds a token.

    os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/run/credentials/…"}
    problem = token_problem("10.0.0.5:6379", os.environ, token_mode=ray_token_mode())
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from runtime.errors import AuthError, CommandpostError, RetryableError

__all__ = [
    "MODE_ENV",
    "TOKEN_ENV",
    "TOKEN_PATH_ENV",
    "connection_failure",
    "ray_token_mode",
    "token_problem",
    "token_source",
]

MODE_ENV: Final = "RAY_AUTH_MODE"
TOKEN_ENV: Final = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV: Final = "RAY_AUTH_TOKEN_PATH"
#: Addresses for which ``ray.init`` itself turns token mode on when it finds a token.
_SELF_ENABLING: Final = frozenset({"", "local", "auto"})
#: What Ray's GCS client says, in the cause of its ConnectionError, when the cluster
#: refused the call's token (or its lack of one).
_REFUSED: Final = ("InvalidAuthToken", "Authentication token is missing or incorrect")


def token_source(env: Mapping[str, str]) -> str | None:
    """The variable Ray would take the token from (its order: the token, then its file)."""
    for name in (TOKEN_ENV, TOKEN_PATH_ENV):
        if env.get(name):
            return name
    return None


def ray_token_mode() -> bool:
    """Whether this process's Ray runs in token mode (the setting Ray read at import)."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    return bool(is_token_auth_enabled())


def token_problem(address: str | None, env: Mapping[str, str], *,
                  token_mode: bool) -> str | None:
    """Why joining ``address`` would send no token although one is given, or None.

    ``token_mode`` is :func:`ray_token_mode`: ``RAY_AUTH_MODE`` set after ``ray``
    was imported does not count, and the message says so.
    """
    source = token_source(env)
    if source is None or token_mode or (address or "") in _SELF_ENABLING:
        return None
    mode = env.get(MODE_ENV)
    if mode is not None and mode.lower() == "token":
        why = f"{MODE_ENV}=token was set after Ray read its settings"
    else:
        why = f"{MODE_ENV} is {mode!r}" if mode is not None else f"{MODE_ENV} is not set"
    return (f"a Ray token is given ({source}), but Ray sends none to {address}: {why}; "
            f"set {MODE_ENV}=token in the environment the service starts with")


def connection_failure(address: str | None, exc: BaseException, env: Mapping[str, str], *,
                       token_mode: bool) -> CommandpostError:
    """The project's error for ``ray.init``'s failure ``exc`` to join ``address``.

    A refused token (or a token the cluster wanted and did not get) needs a person:
    :class:`AuthError`. Anything else may pass (a cluster still starting):
    :class:`RetryableError`.
    """
    from ray.exceptions import AuthenticationError

    chain = _chain(exc)
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, AuthenticationError) for e in chain) or \
            any(m in text for m in _REFUSED):
        source = token_source(env)
        if not token_mode:
            hint = (f"this process sent no token: set {MODE_ENV}=token and the cluster's "
                    f"token in {TOKEN_PATH_ENV} (a file) or {TOKEN_ENV}")
        elif source is None:
            hint = (f"neither {TOKEN_ENV} nor {TOKEN_PATH_ENV} is set, and ~/.ray/auth_token "
                    f"is missing or not the cluster's token")
        else:
            hint = f"the token in {source} is not the cluster's"
        return AuthError(f"Ray at {address} refused this process: {hint}")
    return RetryableError(f"cannot reach Ray at {address}: {exc}")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (``raise … from``) and contexts, each once."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen
