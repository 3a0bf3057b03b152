"""``commandpost``: the command line, and the composition root of the runtime.

Exit codes: 0 success, 1 bad input or failed check, 2 usage error. Errors are
printed to stderr as one readable line.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from runtime.clock import CITY_TZ, MAX_SPEED
from runtime.errors import CommandpostError, DataFileError, InventoryError

log = logging.getLogger("commandpost")

#: Where ``demo`` and ``run`` write the users' passwords and tokens unless told
#: (in the working directory; ``.gitignore`` keeps it, and its temporary, out of git).
DEFAULT_CREDENTIALS_FILE = "commandpost-credentials.json"

#: The environment variables ``run`` reads its Redis and broker URLs from when the
#: options are not given: a password there is not on the process's command line,
#: which every local user can read (``ps``, ``/proc/PID/cmdline``).
REDIS_URL_ENV = "COMMANDPOST_REDIS_URL"
MQTT_URL_ENV = "COMMANDPOST_MQTT_URL"
#: The bootstrap admin's password, when ``run`` finds no admin in the store (or give
#: ``--admin-password-file``); the admin is called :data:`BOOTSTRAP_ADMIN`.
ADMIN_PASSWORD_ENV = "COMMANDPOST_ADMIN_PASSWORD"
BOOTSTRAP_ADMIN = "admin"


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"commandpost: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def cli(log_level: str) -> None:
    """Actor-based control runtime of a metropolitan command post."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- inventory ---------------------------------------------------------------
@cli.group()
def inventory() -> None:
    """Validate or generate inventory files."""


@inventory.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def inventory_check(file: str) -> None:
    """Validate FILE: exit 0, or exit 1 with one line per error.

    Besides the file itself, each record is checked by its kind's behaviour (a
    schedule it names must be one of its kind's).
    """
    from actors.registry import check_record
    from runtime.inventory import load_inventory

    try:
        inv = load_inventory(file, check=check_record)
    except InventoryError as exc:
        for issue in exc.issues:
            click.echo(issue, err=True)
        sys.exit(1)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(inv.count_by_kind().items()))
    lines = f", {len(inv.bus_lines)} bus lines" if inv.bus_lines else ""
    click.echo(f"{file}: ok — {len(inv.equipment)} entities in "
               f"{len(inv.municipalities)} municipalities ({counts}){lines}")


@inventory.command("demo")
@click.option("--scale", type=click.FloatRange(min=0.0, min_open=True, max=10.0), default=1.0,
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def inventory_demo(scale: float, seed: int) -> None:
    """Write the demo metropolis as an inventory file to standard output."""
    from runtime.demo_inventory import generate_demo

    sys.stdout.write(generate_demo(scale=scale, seed=seed))


# -- plans -------------------------------------------------------------------
@cli.group()
def plan() -> None:
    """Validate plan files (crisis plans, or a building fire plan)."""


@plan.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--inventory", "inventory_file", type=click.Path(dir_okay=False), default=None,
              help="check the equipment, roles and presets it names against this inventory "
                   "(default: the demo metropolis at scale 1.0)")
def plan_check(file: str, inventory_file: str | None) -> None:
    """Validate plan FILE: exit 0, or exit 1 with one line per error."""
    from actors.plan import load_plans
    from runtime.demo_inventory import build_demo
    from runtime.errors import PlanError
    from runtime.inventory import load_inventory

    inv = load_inventory(inventory_file) if inventory_file else build_demo(1.0)
    if _is_fire_plan(file):
        _fire_plan_check(file, inv, inventory_file)
        return
    try:
        book = load_plans(file)
        book.check(inv)
    except PlanError as exc:
        for issue in exc.issues:
            click.echo(issue, err=True)
        sys.exit(1)
    steps = sum(len(p.steps) for p in book.plans.values())
    click.echo(f"{file}: ok — plans {', '.join(book.plans)} ({steps} steps), checked against "
               f"{inventory_file or 'the demo metropolis'}")


def _is_fire_plan(file: str) -> bool:
    """Whether ``file`` is a building fire plan (a ``[fire]`` table), not crisis plans."""
    import tomllib

    try:
        with open(file, "rb") as fh:
            return "fire" in tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return False  # the crisis plan loader says what is wrong with it


def _fire_plan_check(file: str, inv: Any, inventory_file: str | None) -> None:
    from actors.fire_plan import load_fire_plan
    from runtime.errors import PlanError

    try:
        fire = load_fire_plan(file)
        fire.check(inv)
    except PlanError as exc:
        for issue in exc.issues:
            click.echo(issue, err=True)
        sys.exit(1)
    click.echo(f"{file}: ok — fire plan ({len(fire.steps)} steps, confirm_s "
               f"{fire.confirm_s:g}), checked against {inventory_file or 'the demo metropolis'}")


# -- users -------------------------------------------------------------------
@cli.group()
def user() -> None:
    """Manage the admin web's users, kept in Redis (--redis or COMMANDPOST_REDIS_URL).

    A generated password or token is printed once: only its hash is kept.
    """


def _store_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option("--namespace", default="cp", show_default=True,
                      help="the store's key namespace (the service's)")(fn)
    return click.option("--redis", "redis_url", required=True, envvar=REDIS_URL_ENV,
                        show_envvar=True,
                        help=f"redis://… of the service; one with a password goes in "
                             f"{REDIS_URL_ENV}, not on the command line")(fn)


def _registry(redis_url: str, namespace: str) -> Any:
    from admin_web import UserRegistry
    from runtime.users import RedisUserRecords

    _warn_secret_in_argv("--redis", REDIS_URL_ENV, redis_url)
    return UserRegistry(RedisUserRecords(redis_url, namespace=namespace))


def _chosen_password(password_file: str | None) -> str | None:
    """The password of ``password_file`` (``-``: standard input), checked; None if none."""
    if password_file is None:
        return None
    if password_file == "-":
        given = sys.stdin.readline().rstrip("\r\n")
    else:
        given = _read_secret_file(password_file, "the password")
    return checked_password(given, "the password")


def _check_desks(desks: tuple[str, ...]) -> None:
    from admin_web.desks import builtin_desks

    unknown = builtin_desks().unknown(list(desks))
    if unknown:
        _fail(f"unknown desk {', '.join(unknown)} (desks: "
              f"{', '.join(builtin_desks().names())})", 2)


_PASSWORD_FILE_HELP = ("read the password from this file's first line ('-': standard input) "
                       "instead of generating one; 12 characters at least, not the demo's")


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@click.option("--municipality", "municipalities", multiple=True,
              help="a municipality slug he acts in (repeat; none: every one)")
@click.option("--desk", "desks", multiple=True, help="a desk of his (repeat; none: no desk)")
@click.option("--password-file", default=None, help=_PASSWORD_FILE_HELP)
@click.option("--no-token", is_flag=True, help="issue no API token")
@_store_options
def user_add(name: str, role: str, municipalities: tuple[str, ...], desks: tuple[str, ...],
             password_file: str | None, no_token: bool, redis_url: str, namespace: str) -> None:
    """Add user NAME; prints his generated password and API token, once."""
    _check_desks(desks)
    chosen = _chosen_password(password_file)
    password, token = _registry(redis_url, namespace).add(
        name, role, municipalities=municipalities, password=chosen, desks=desks,
        with_token=not no_token)
    click.echo(f"user {name} added ({role})")
    if chosen is None:
        click.echo(f"password: {password}")
    if token:
        click.echo(f"token:    {token}")


@user.command("passwd")
@click.argument("name")
@click.option("--password-file", default=None, help=_PASSWORD_FILE_HELP)
@_store_options
def user_passwd(name: str, password_file: str | None, redis_url: str, namespace: str) -> None:
    """Give NAME a new password (printed once when generated); his sessions end."""
    chosen = _chosen_password(password_file)
    password = _registry(redis_url, namespace).reset_password(name, chosen)
    click.echo(f"user {name}: password changed, sessions ended")
    if chosen is None:
        click.echo(f"password: {password}")


@user.command("token")
@click.argument("name")
@click.option("--label", default="", help="what the token is for (shown in listings)")
@click.option("--revoke-all", is_flag=True, help="revoke his other tokens first")
@_store_options
def user_token(name: str, label: str, revoke_all: bool, redis_url: str, namespace: str) -> None:
    """Issue NAME a new API token, printed once."""
    users = _registry(redis_url, namespace)
    if revoke_all:
        click.echo(f"user {name}: {users.revoke_token(name)} token(s) revoked")
    token_id, token = users.issue_token(name, label)
    click.echo(f"user {name}: token {token_id} issued")
    click.echo(f"token:    {token}")


@user.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="enable him again instead")
@_store_options
def user_disable(name: str, enable: bool, redis_url: str, namespace: str) -> None:
    """Disable NAME: his sessions and tokens stop working at once (--enable: undo)."""
    _registry(redis_url, namespace).set_disabled(name, not enable)
    click.echo(f"user {name} {'enabled' if enable else 'disabled'}")


@user.command("list")
@_store_options
def user_list(redis_url: str, namespace: str) -> None:
    """List the users: name, role, municipalities, desks, tokens, state."""
    for u in _registry(redis_url, namespace).all():
        towns = ",".join(sorted(u.municipalities)) or "*"
        desks = ",".join(sorted(u.desks)) or "-"
        click.echo(f"{u.name:<20} {u.role.value:<8} {towns:<24} {desks:<30} "
                   f"{len(u.tokens)} token(s) {'disabled' if u.disabled else 'enabled'}")


# -- running -----------------------------------------------------------------
#: How long a stopping service gives its tree to shut down in order before it
#: kills the root; with the steps after it, SIGTERM or Ctrl-C ends a demo in ≤ 10 s.
STOP_TREE_TIMEOUT_S = 5.0


class _StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived while the service was still starting.

    A KeyboardInterrupt, so that start-up code catching ``Exception`` lets it
    through, and so that ``ray.get`` (which polls for signals while it waits)
    gives up at once: it ends its wait on KeyboardInterrupt, while another
    exception from a signal handler stays pending until the wait is over.
    """


class _Stopper:
    """SIGTERM and SIGINT stop the service in order, from installation on.

    While the service starts, the signal abandons the start-up (raising
    :class:`_StopRequested` in the main thread) and the service stops what it
    had started; once it runs, the signal ends :meth:`wait`. A second signal
    while stopping exits at once: the reaper kills what is left.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.starting = True
        self.install()

    def install(self) -> None:
        """(Re)install the handlers of SIGINT and SIGTERM in this process.

        ``ray.init`` replaces ours for SIGTERM: first with a handler that calls
        ``sys.exit``, then with Ray's failure-signal handler, which prints a
        stack trace and arms a 3 s alarm that aborts the process in the middle
        of its shutdown. Installing ours again after ``ray.init`` puts it back.
        """
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested.is_set():
            # This may interrupt anything, the stop itself included: say so and
            # leave without Python's exit machinery (the reaper does the rest).
            os.write(2, b"commandpost: stopping now, without waiting\n")
            os._exit(1)
        self.requested.set()
        if self.starting:
            raise _StopRequested(signum)

    def wait(self, duration: float | None) -> None:
        """Until a signal arrives, or ``duration`` seconds (None: forever)."""
        self.starting = False
        if self.requested.is_set():
            return
        self.requested.wait(duration)


def _wait_for_stop(stopper: _Stopper, duration: float | None) -> None:
    """Run until SIGTERM or SIGINT, or for ``duration`` seconds."""
    if duration is None:
        click.echo("running; Ctrl-C to stop")
    stopper.wait(duration)


def _serve(
    inv: Any, *, admin: str, credentials_file: str | None, redis: str | None,
    mqtt: str | None, ray_address: str | None, duration: float | None, demo: bool,
    opcua_security: dict[str, str] | None = None, retention_days: float = 30.0,
    clock_speed: float = 1.0, clock_start: float | None = None, secure_cookies: bool = False,
    trusted_proxies: int = 0, admin_password_file: str | None = None,
) -> None:
    """Start the service and the admin web, run until stopped, then stop in order.

    The admin web serves Open311 too (its store is the service's Redis); the
    demo issues one Open311 API key and adds it to the credentials file. The
    users are kept in the service's Redis: the demo adds its three with fresh
    secrets; the production service adds none, but for the bootstrap admin
    when the store has no admin (:func:`bootstrap_password`).
    Whatever this process starts (servers, simulators, a local Ray with its
    hosts) carries the reaper's mark and dies with it, even on kill -9; the
    hosts of a Ray cluster given by ``ray_address`` do not, and live on.
    """
    from admin_web import (
        AdminServer,
        StaticBackend,
        SwappableBackend,
        UserRegistry,
        create_app,
        create_demo_users,
        parse_listen,
        write_credentials,
    )
    from admin_web.open311 import open311_blueprint
    from runtime.reaper import Reaper
    from runtime.service import DEVICES, RuntimeBackend, Service, ServiceOptions
    from runtime.users import RedisUserRecords

    host, port = parse_listen(admin)
    # The embedded servers' data, in a directory of our own that the reaper
    # removes after a kill -9 as a clean stop does.
    data_dir = Path(tempfile.mkdtemp(prefix="commandpost-"))
    try:
        # The behaviours check the inventory and their own data (plans, schedules) before
        # anything starts: a broken file stops here, with its file and line.
        svc = Service(inv, ServiceOptions(
            redis_url=redis, mqtt_url=mqtt, ray_address=ray_address, devices=DEVICES,
            simulate=demo, data_dir=data_dir, opcua_security=dict(opcua_security or {}),
            retention_s=retention_days * 86_400, clock_speed=clock_speed,
            clock_start=clock_start))
        # Refused before anything starts, too: a service nobody could administer.
        bootstrap = None if demo else bootstrap_password(admin_password_file, redis)
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    if credentials_file is None and demo:
        credentials_file = str(Path.cwd() / DEFAULT_CREDENTIALS_FILE)
    backend = SwappableBackend(StaticBackend())
    server: AdminServer | None = None
    # What follows changes in Redis for the admin web, stopped with it.
    followers: list[Callable[[], None]] = []
    # Before any child: each one started from here on carries the reaper's mark.
    reaper = Reaper.start()
    stopper = _Stopper()
    reaper.remove_after(data_dir)
    try:
        try:
            svc.start_servers()
            # The users live in the service's Redis: they outlive the process (with a
            # Redis of its own), and every admin-web process sees the same ones.
            records = RedisUserRecords(svc.redis_url, namespace=svc.options.namespace,
                                       track=True)
            followers.append(records.close)
            users = UserRegistry(records)
            if demo:
                assert credentials_file is not None
                creds: dict[str, dict[str, str]] = create_demo_users(
                    users, [m.slug for m in inv.municipalities])
                write_credentials(credentials_file, creds)
                what = "users admin, operator, viewer; an Open311 API key"
            else:
                what = bootstrap_admin(users, bootstrap, credentials_file)
            app = create_app(backend, users, secure_cookies=secure_cookies,
                             trusted_proxies=trusted_proxies)
            server = AdminServer(app, host, port)
            runtime_backend = RuntimeBackend(svc, track=True)
            followers.append(runtime_backend.close)
            app.register_blueprint(open311_blueprint(runtime_backend.open311_backend()))
            if demo:
                assert credentials_file is not None
                key = runtime_backend.open311_store().issue_key("demo")
                write_credentials(credentials_file, {**creds, "open311": {"api_key": key}})
            server.start()
            click.echo(f"admin web:   {server.url}/  (API under {server.url}/api/v1, "
                       f"Open311 under {server.url}/open311/v2)")
            if credentials_file is not None and (demo or "written" in what):
                click.echo(f"credentials: {credentials_file}  ({what})")
            else:
                click.echo(f"users:       {what}")
            t0 = time.monotonic()
            try:
                svc.start_ray()
            except SystemExit as exc:
                # ray.init puts its own SIGTERM handler (sys.exit) in place of ours,
                # behind Ray's failure-signal handler, which armed an alarm that
                # would abort us in 3 s: cancel it, and stop in order.
                if exc.code != signal.SIGTERM:
                    raise
                signal.alarm(0)
                stopper.requested.set()
            stopper.install()
            if stopper.requested.is_set():
                raise _StopRequested(signal.SIGTERM)
            # Ray's agents overwrite their environment with their title: adopt them by pid.
            reaper.adopt_descendants()
            # The simulators started with the servers and got ready while Ray started.
            svc.wait_simulators()
            for line in _connection_lines(svc.redis_url, svc.mqtt_url, svc.simulators):
                click.echo(line)
            backend.swap(runtime_backend)
            svc.start_tree()
            reaper.adopt_descendants()
            click.echo(f"{len(inv.equipment)} entities on {len(svc.plan.hosts)} hosts started "
                       f"in {time.monotonic() - t0:.1f}s; health: {backend.health()['status']}")
        except BaseException:
            # A signal during start-up surfaces as whatever it interrupted: our
            # _StopRequested, or an error of the library code it landed in (an
            # exception raised inside a Ray callback comes out as SystemError).
            if not stopper.requested.is_set():
                raise
            click.echo("stop requested while starting")
        else:
            _wait_for_stop(stopper, duration)
    finally:
        # From here on a signal raises nothing: a second one exits at once (_Stopper).
        stopper.starting = False
        t_stop = time.monotonic()
        click.echo("stopping…")
        # Whatever runs now is ours: should the stop not end it (a start cut
        # short in ray.init leaves Ray's agents to nobody), the reaper will.
        reaper.adopt_descendants()
        try:
            svc.stop(tree_timeout=STOP_TREE_TIMEOUT_S)
            if server is not None:
                server.stop()
        finally:
            for stop_following in followers:
                stop_following()
            reaper.close()
            shutil.rmtree(data_dir, ignore_errors=True)
    click.echo(f"stopped in {time.monotonic() - t_stop:.1f}s")


def _read_secret_file(path: str, what: str) -> str:
    """The first line of ``path`` (a password file), without its line ending."""
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandpostError(f"cannot read {what} from {path}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    return line.rstrip("\r\n")


def demo_passwords(credentials_file: str | Path | None = None) -> set[str]:
    """The passwords of a demo's credentials file (the given one, else the default one in
    the working directory), which no real user may take: the demo printed where they are."""
    path = Path(credentials_file or Path.cwd() / DEFAULT_CREDENTIALS_FILE)
    try:
        creds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(creds, dict):
        return set()
    return {str(e["password"]) for e in creds.values()
            if isinstance(e, dict) and isinstance(e.get("password"), str)}


def checked_password(password: str, what: str) -> str:
    """``password`` if a person may choose it (12 characters, not one of the demo's);
    else :class:`CommandpostError` saying why."""
    from admin_web.auth import password_problem

    problem = password_problem(password, demo_passwords())
    if problem is not None:
        raise CommandpostError(f"{what} refused: {problem}")
    return password


def bootstrap_password(password_file: str | None, redis_url: str | None) -> str | None:
    """The bootstrap admin's password that ``run`` needs, checked; None when not needed.

    Needed when the store holds no enabled admin: always with the embedded
    Redis (new at each start), and with ``redis_url`` when its users have
    none. Taken from ``password_file`` (its first line), else from
    :data:`ADMIN_PASSWORD_ENV`. Raises :class:`CommandpostError` when it is
    needed and missing, or shorter than 12 characters, or one of the demo's.
    """
    given = _read_secret_file(password_file, "the admin password") if password_file else \
        os.environ.get(ADMIN_PASSWORD_ENV) or None
    if given is not None:
        given = checked_password(given, "the bootstrap admin's password")
    if redis_url is not None:
        from admin_web.auth import UserRegistry
        from runtime.users import RedisUserRecords

        records = RedisUserRecords(redis_url)
        try:
            if UserRegistry(records).has_admin():
                if given is not None:
                    log.info("the store has an admin already: the bootstrap password is unused")
                return None
        finally:
            records.close()
    if given is None:
        where = "the store" if redis_url is not None else "the embedded Redis (new at each start)"
        raise CommandpostError(
            f"no admin in {where}: give the bootstrap admin's password in {ADMIN_PASSWORD_ENV} "
            "or with --admin-password-file (12 characters at least, not one of the demo's), "
            f"or add an admin first with `commandpost user add NAME --role admin` and "
            f"{REDIS_URL_ENV}")
    return given


def bootstrap_admin(users: Any, password: str | None, credentials_file: str | None) -> str:
    """Add the bootstrap admin to ``users`` (a :class:`admin_web.UserRegistry`) unless an
    admin is there; returns what to print about the users.

    His API token is written to ``credentials_file`` (mode 0600) when given;
    without one he has none (``commandpost user token admin`` issues one).
    """
    from admin_web import Role, write_credentials

    if users.has_admin():
        return f"{len(users)} in Redis, an admin among them"
    if password is None:
        raise CommandpostError("no admin in the store, and no bootstrap admin's password")
    if BOOTSTRAP_ADMIN in users:
        raise CommandpostError(
            f"no enabled admin, and a user {BOOTSTRAP_ADMIN!r} that is not one exists: "
            f"enable or promote an admin with `commandpost user` first")
    _, token = users.add(BOOTSTRAP_ADMIN, Role.ADMIN, password=password,
                         with_token=credentials_file is not None)
    if credentials_file is not None:
        write_credentials(credentials_file, {BOOTSTRAP_ADMIN: {"token": token}})
        return f"bootstrap admin {BOOTSTRAP_ADMIN!r} added; his API token written"
    return f"bootstrap admin {BOOTSTRAP_ADMIN!r} added (no API token: `commandpost user token`)"


def _connection_lines(redis_url: str, mqtt_url: str,
                      simulators: list[dict[str, Any]]) -> list[str]:
    """What the service is connected to, as printed at start-up: passwords hidden."""
    from admin_web.redact import redact_url

    lines = [f"redis:       {redact_url(redis_url)}   mqtt: {redact_url(mqtt_url)}"]
    lines += [f"simulator:   {sim['kind']}: {sim['devices']} devices on "
              f"{redact_url(str(sim['endpoint']))}" for sim in simulators]
    return lines


def _warn_secret_in_argv(option: str, env: str, url: str | None) -> None:
    """Warn (stderr) when ``url``, given as ``option`` on the command line, holds a password.

    The URL is still used: refusing it would break a start that worked, while
    the warning says how to keep the password out of the process list.
    """
    from admin_web.redact import holds_secret

    ctx = click.get_current_context()
    if url is None or ctx.get_parameter_source(option.lstrip("-")) is not \
            ParameterSource.COMMANDLINE or not holds_secret(url):
        return
    click.echo(f"commandpost: warning: the {option} URL holds a password, which any local "
               f"user can read on this process's command line; set {env} instead "
               f"(systemd: EnvironmentFile=, mode 0600)", err=True)


@cli.command()
@click.option("--scale", type=click.FloatRange(min=0.0, min_open=True, max=10.0), default=1.0,
              show_default=True, help="fraction of the Dijon-scale metropolis")
@click.option("--duration", type=click.FloatRange(min=0.0), default=None,
              help="stop cleanly after this many seconds")
@click.option("--admin", default="127.0.0.1:8080", show_default=True,
              help="HOST:PORT of the admin web (port 0: a free one)")
@click.option("--ports", type=click.Choice(["documented", "free"]), default="documented",
              show_default=True,
              help="simulator ports: the documented ones (Modbus 15020, 15100, 15200; "
                   "OPC UA 4840) or free ones, so that demos and tests run side by side")
@click.option("--credentials-file", type=click.Path(dir_okay=False), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--clock-speed", type=click.FloatRange(min=0.0, min_open=True, max=MAX_SPEED),
              default=1.0, show_default=True,
              help="run the city's time this many times faster (288: a day in 5 minutes)")
@click.option("--clock-start", type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]),
              default=None, help="the city's time at start, local to Europe/Paris "
                                 "(default: now)")
def demo(scale: float, duration: float | None, admin: str, ports: str,
         credentials_file: str | None, seed: int, clock_speed: float,
         clock_start: datetime.datetime | None) -> None:
    """The whole simulated metropolis with embedded Redis, broker and admin web.

    SIGTERM or Ctrl-C stops it in order; whatever it started (simulators,
    Redis, broker, its local Ray with the hosts) dies with it even on kill -9.
    """
    from runtime.demo_inventory import DemoPorts, generate_demo
    from runtime.inventory import parse_inventory

    demo_ports = DemoPorts.free() if ports == "free" else DemoPorts()
    inv = parse_inventory(generate_demo(scale=scale, seed=seed, ports=demo_ports),
                          f"<demo scale {scale}>")
    start = None if clock_start is None else clock_start.replace(tzinfo=CITY_TZ).timestamp()
    _serve(inv, admin=admin, credentials_file=credentials_file, redis=None, mqtt=None,
           ray_address=None, duration=duration, demo=True, clock_speed=clock_speed,
           clock_start=start)


@cli.command()
@click.option("--inventory", "inventory_file", required=True,
              type=click.Path(dir_okay=False))
@click.option("--ray-address", default=None, help="an existing Ray cluster (ray://… or host:port)")
@click.option("--redis", default=None, envvar=REDIS_URL_ENV, show_envvar=True,
              help="redis://… (default: an embedded server); one with a password goes in "
                   f"{REDIS_URL_ENV}, not on the command line")
@click.option("--mqtt", default=None, envvar=MQTT_URL_ENV, show_envvar=True,
              help="mqtt://… (default: an embedded broker); one with a password goes in "
                   f"{MQTT_URL_ENV}, not on the command line")
@click.option("--admin", default="127.0.0.1:8080", show_default=True, help="HOST:PORT")
@click.option("--credentials-file", type=click.Path(dir_okay=False), default=None)
@click.option("--opcua-security", type=click.Choice(["None", "Sign", "SignAndEncrypt"]),
              default="None", show_default=True, help="message security of BMS sessions")
@click.option("--opcua-cert", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--opcua-key", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--opcua-server-cert", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--retention-days", type=click.FloatRange(min=0.0, min_open=True), default=30.0,
              show_default=True, help="how long the event and audit streams keep an entry")
@click.option("--secure-cookies", is_flag=True,
              help="mark the login cookie Secure: browsers reach the admin web through "
                   "HTTPS (a TLS proxy in front of it)")
@click.option("--trusted-proxies", type=click.IntRange(0, 10), default=0, show_default=True,
              help="reverse proxies in front of the admin web whose X-Forwarded-For and "
                   "-Proto say the client's address (audited, throttled) and scheme")
@click.option("--admin-password-file", type=click.Path(dir_okay=False), default=None,
              help="the bootstrap admin's password (first line), used only when the store "
                   f"has no admin; or set {ADMIN_PASSWORD_ENV}")
def run(inventory_file: str, ray_address: str | None, redis: str | None, mqtt: str | None,
        admin: str, credentials_file: str | None, opcua_security: str,
        opcua_cert: str | None, opcua_key: str | None, opcua_server_cert: str | None,
        retention_days: float, secure_cookies: bool, trusted_proxies: int,
        admin_password_file: str | None) -> None:
    """The production service on a real inventory, until SIGTERM/SIGINT.

    The Redis and broker URLs, which may hold passwords, are best given in
    the environment (COMMANDPOST_REDIS_URL, COMMANDPOST_MQTT_URL) rather than
    as options; they are printed with their passwords hidden.

    The users are those in Redis (`commandpost user`); with no admin there,
    the bootstrap admin `admin` is added with the password in
    COMMANDPOST_ADMIN_PASSWORD or --admin-password-file, and without one the
    service does not start. --credentials-file then receives his API token.
    """
    from actors.registry import check_record
    from runtime.inventory import load_inventory

    _warn_secret_in_argv("--redis", REDIS_URL_ENV, redis)
    _warn_secret_in_argv("--mqtt", MQTT_URL_ENV, mqtt)
    try:
        inv = load_inventory(inventory_file, check=check_record)
    except InventoryError as exc:
        for issue in exc.issues:
            click.echo(issue, err=True)
        sys.exit(1)
    security: dict[str, str] = {}
    if opcua_security != "None":
        if not (opcua_cert and opcua_key):
            _fail(f"--opcua-security {opcua_security} needs --opcua-cert and --opcua-key", 2)
        security = {"mode": opcua_security, "certificate": str(opcua_cert),
                    "private_key": str(opcua_key)}
        if opcua_server_cert:
            security["server_certificate"] = opcua_server_cert
    _serve(inv, admin=admin, credentials_file=credentials_file, redis=redis, mqtt=mqtt,
           ray_address=ray_address, duration=None, demo=False, opcua_security=security,
           retention_days=retention_days, secure_cookies=secure_cookies,
           trusted_proxies=trusted_proxies, admin_password_file=admin_password_file)


# -- benchmarks --------------------------------------------------------------
#: Every bench: its module under ``runtime.bench`` (a ``run`` function) and what it measures.
BENCHES: dict[str, tuple[str, str]] = {
    "startup": ("startup", "process start to every entity answering with its restored "
                           "full twin, and to every device online"),
    "recovery": ("recovery", "kill -9 of the largest host, >= 5 times, with devices and "
                             "commands in flight: detection, answers, fresh readings"),
    "demo": ("demo", "what `make demo` runs, in steady state: memory and CPU by role"),
    "ingest": ("ingest", "telemetry counted at both ends (emitted by the simulators, applied "
                         "by the entities); --capacity steps MQTT load up to the limit"),
    "command": ("command", "operator command round trip through the HTTP API, split "
                           "into stages"),
    "alarm": ("alarm", "a fire (building) or a tamper (camera) raised at the simulator to "
                       "the alarm listed by the API"),
    "dispatch": ("dispatch", "a day of citizen requests posted through Open311 at a daily "
                             "profile, compressed to minutes: every one an intervention, "
                             "assignments against a brute-force nearest search"),
    "crisis": ("crisis", "snow for the whole metropolis through the API: to the last setpoint "
                         "acked by its device, then deactivation back to the baseline"),
    "energy": ("energy", "one night of the scheduled street lighting on an accelerated "
                         "clock: metered (API) against the simulator's integral and the "
                         "schedule's arithmetic, savings, counter resets and wraps"),
    "fire": ("fire", "a fire raised at the BMS simulator to its plan carried out: evacuation "
                     "doors unlocked (read back over OPC UA), cameras at their preset, a crew "
                     "assigned"),
    "priority-latency": ("priority", "a bus's position published on MQTT to its priority "
                                     "request received by the crossroad's controller, idle, "
                                     "with the metropolis running, and with the crossroads' "
                                     "host flooded by 4,000 vehicle messages/s"),
    "admin": ("admin", "the command post's 50 operators on the admin API (1 s think time, "
                       "equipment, alarms, tree, crisis, interventions, commands) with the "
                       "metropolis running: latency by route, p95 <= 200 ms"),
    "tsp": ("tsp", "bus signal priority in Eclipse SUMO: each seed's traffic with and without "
                   "priority, bus and other vehicles' delay at signals (installs the extra "
                   "'tsp' when missing)"),
}


def _bench_help() -> str:
    names = "\n".join(f"  {name:<10} {what}" for name, (_, what) in BENCHES.items())
    return ("Run benchmark NAME; the last line printed is its JSON figures.\n\n"
            f"\b\nBenchmarks:\n{names}")


@cli.command(help=_bench_help())
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print only the JSON line")
@click.option("--scale", type=click.FloatRange(min=0.0, min_open=True, max=9.0), default=1.0,
              show_default=True)
@click.option("--kills", type=click.IntRange(min=1), default=5, show_default=True,
              help="recovery: kills to time")
@click.option("--broker", type=click.Choice(["auto", "mosquitto", "amqtt"]), default="auto",
              show_default=True, help="embedded broker for the benches that use one")
@click.option("--seconds", "--duration", "seconds", type=click.FloatRange(min=5.0),
              default=None, help="measurement window of demo, ingest and admin (each bench "
                                 "has its default)")
@click.option("--capacity", is_flag=True, help="ingest: step MQTT load up to the limit")
@click.option("-n", "n", type=click.IntRange(min=1), default=None,
              help="command: commands to time (default 200)")
@click.option("--operators", type=click.IntRange(min=1, max=500), default=None,
              help="admin: operators at their desks (default 50)")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="also write the JSON figures (with commit) to this file")
@click.option("--clock-speed", type=click.FloatRange(min=0.0, min_open=True, max=MAX_SPEED),
              default=None, help="the city's clock speed of the benches that run one "
                                 "(each has its default)")
@click.option("--seeds", type=click.IntRange(min=1, max=100), default=None,
              help="tsp: seeds to run, each with and without priority (default 3)")
@click.option("--sim-hours", type=click.FloatRange(min=0.0, min_open=True, max=24.0),
              default=None, help="tsp: simulated hours of demand per run (default 1)")
@click.option("--net", type=click.Path(exists=True, dir_okay=False), default=None,
              help="tsp: a SUMO network (.net.xml) instead of the generated corridor")
@click.option("--routes", default=None,
              help="tsp: the network's routes (.rou.xml, comma-separated files)")
@click.option("--additional", default=None,
              help="tsp: SUMO additional files with the bus stops (comma-separated)")
@click.option("--realtime", type=click.IntRange(min=0, max=99), default=None,
              help="priority-latency: the priority path's real-time priority (SCHED_RR; "
                   "0: the normal class; default 10)")
def bench(name: str, as_json: bool, scale: float, kills: int, broker: str,
          seconds: float | None, capacity: bool, n: int | None, operators: int | None,
          output: str | None,
          clock_speed: float | None, seeds: int | None, sim_hours: float | None,
          net: str | None, routes: str | None, additional: str | None,
          realtime: int | None) -> None:
    import importlib

    entry = BENCHES.get(name)
    if entry is None:
        _fail(f"unknown benchmark {name!r} (known: {', '.join(BENCHES)})", 2)
        return
    module = importlib.import_module(f"runtime.bench.{entry[0]}")
    say: Callable[[str], None] = (lambda s: None) if as_json else click.echo
    kwargs: dict[str, Any] = {"scale": scale, "kills": kills, "say": say, "broker": broker,
                              "capacity": capacity}
    if seconds is not None:
        kwargs["seconds"] = seconds
    if n is not None:
        kwargs["n"] = n
    if clock_speed is not None:
        kwargs["clock_speed"] = clock_speed
    for key, value in (("operators", operators), ("seeds", seeds), ("sim_hours", sim_hours),
                       ("net", net), ("routes", routes), ("additional", additional),
                       ("realtime", realtime)):
        if value is not None:
            kwargs[key] = value
    try:
        result: dict[str, Any] = module.run(**kwargs)
    except CommandpostError as exc:
        _fail(f"bench {name} could not run: {exc}")
        return
    if output:
        from runtime.bench.report import save_result

        save_result(output, name, result, " ".join(sys.argv[1:]))
    click.echo(json.dumps(result))


def main() -> None:
    """Console entry point: errors become one line on stderr and exit 1."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted")
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DataFileError as exc:
        for issue in exc.issues:
            click.echo(issue, err=True)
        sys.exit(1)
    except CommandpostError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted")


if __name__ == "__main__":
    main()
