"""How ``run`` meets a Ray cluster that wants a token, without a cluster: the token Ray
would not send is named before connecting, and a refusal becomes an AuthError that says
which token was refused and never shows it. ``test_ray_token_e2e.py`` does it for real."""

from __future__ import annotations

import pytest
from ray.exceptions import AuthenticationError

from runtime.errors import AuthError, RetryableError
from runtime.ray_auth import connection_failure, token_problem, token_source

ADDRESS = "10.0.0.5:6379"
TOKEN = "5f0c1e9a7d3b4c2e8a6f0d1b3c5e7a9f"
#: What Ray 2.60's ray.init raises when the cluster refused the call's token.
REFUSAL = ("Failed to connect to GCS. Last connection error: Traceback (most recent call "
           "last): ... Failed to get cluster ID from GCS server: Unauthenticated: RPC error: "
           "InvalidAuthToken: Authentication token is missing or incorrect.")


def refused() -> ConnectionError:
    try:
        try:
            raise RuntimeError(REFUSAL)
        except RuntimeError as cause:
            raise ConnectionError(f"Failed to connect to Ray cluster at {ADDRESS}") from cause
    except ConnectionError as exc:
        return exc


def test_the_token_comes_from_the_variable_ray_reads_first() -> None:
    assert token_source({}) is None
    assert token_source({"RAY_AUTH_TOKEN_PATH": "/run/credentials/x/ray-token"}) == \
        "RAY_AUTH_TOKEN_PATH"
    assert token_source({"RAY_AUTH_TOKEN_PATH": "/p", "RAY_AUTH_TOKEN": TOKEN}) == \
        "RAY_AUTH_TOKEN"
    assert token_source({"RAY_AUTH_TOKEN": ""}) is None


@pytest.mark.parametrize("env,why", [
    ({"RAY_AUTH_TOKEN_PATH": "/etc/commandpost/ray-token"}, "RAY_AUTH_MODE is not set"),
    ({"RAY_AUTH_TOKEN": TOKEN, "RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE is 'disabled'"),
    ({"RAY_AUTH_TOKEN": TOKEN, "RAY_AUTH_MODE": "token"}, "set after Ray read its settings"),
])
def test_a_token_ray_would_not_send_to_an_address_is_named_before_connecting(
        env: dict[str, str], why: str) -> None:
    problem = token_problem(ADDRESS, env, token_mode=False)
    assert problem is not None
    assert why in problem and ADDRESS in problem and "RAY_AUTH_MODE=token" in problem
    assert TOKEN not in problem


def test_no_problem_when_ray_sends_the_token_or_finds_it_itself() -> None:
    env = {"RAY_AUTH_TOKEN_PATH": "/etc/commandpost/ray-token"}
    assert token_problem(ADDRESS, {**env, "RAY_AUTH_MODE": "token"}, token_mode=True) is None
    assert token_problem(ADDRESS, {}, token_mode=False) is None  # no token: nothing to send
    # A node of this machine, or a Ray of our own: ray.init turns token mode on itself.
    for address in ("auto", None, "local"):
        assert token_problem(address, env, token_mode=False) is None


@pytest.mark.parametrize("env,token_mode,hint", [
    ({}, False, "this process sent no token: set RAY_AUTH_MODE=token"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}, True,
     "the token in RAY_AUTH_TOKEN is not the cluster's"),
    ({"RAY_AUTH_MODE": "token"}, True, "~/.ray/auth_token is missing or not the cluster's"),
])
def test_a_refused_token_is_an_auth_error_that_names_its_source(
        env: dict[str, str], token_mode: bool, hint: str) -> None:
    err = connection_failure(ADDRESS, refused(), env, token_mode=token_mode)
    assert isinstance(err, AuthError)
    assert str(err).startswith(f"Ray at {ADDRESS} refused this process: ") and hint in str(err)
    assert TOKEN not in str(err)


def test_a_token_not_found_before_connecting_is_an_auth_error() -> None:
    exc = AuthenticationError("Token authentication is enabled but no authentication token "
                              "was found")
    err = connection_failure(ADDRESS, exc, {"RAY_AUTH_MODE": "token"}, token_mode=True)
    assert isinstance(err, AuthError) and "RAY_AUTH_TOKEN_PATH" in str(err)


def test_a_cluster_not_there_yet_is_worth_a_retry() -> None:
    exc = ConnectionError(f"Failed to connect to Ray cluster at {ADDRESS}")
    err = connection_failure(ADDRESS, exc, {}, token_mode=False)
    assert type(err) is RetryableError and ADDRESS in str(err)
