"""MQTT broker accounts: who may connect, and what each one may publish and read.

The broker, not the runtime, decides who speaks for a device: every client
authenticates, and the broker's access control list lets it publish only on
the topics of the devices it speaks for, so a forged bus position never
reaches the bus-priority pool (CONTRACT.md, "MQTT topics")::

    accounts = BrokerAccounts()
    runtime = accounts.runtime                        # "commandpost", a fresh password
    bus = accounts.add_device(bus_eq)                 # its user name is the equipment id
    sim = accounts.add_simulator("sim-mqtt", fleet)   # speaks for every device of fleet
    print(accounts.mosquitto_acl(accounts.devices_side()))

==========  ==================  =====================================  ==================
account     user name           publishes                              reads
==========  ==================  =====================================  ==================
runtime     ``commandpost``     ``city/+/+/+/cmd``                     ``city/#``
device      its equipment id    its ``telemetry``, ``event``, ``ack``  its ``cmd``
                                and ``status``
simulator   its own name        the same, for each device it           their ``cmd``
                                speaks for
==========  ==================  =====================================  ==================

The runtime's account and the others connect on different listeners
(:class:`runtime.embedded.EmbeddedBroker`, ``deploy/mosquitto``): the
runtime's listener knows only the runtime's account, and the devices'
listener replaces each client id by the client's user name, so that no device
can connect under a client id of the runtime (they all begin with
:data:`RUNTIME_CLIENT_PREFIX`) and take over its session. For the same reason
a device or simulator account name never begins with that prefix, and each
connection to the devices' listener needs an account of its own.

A simulator's rights are written device by device, except where it speaks for
every device of a (municipality, kind) that the accounts name: one line with a
``+`` for the id then stands for all of them. The broker checks each publish
against an account's lines in turn, and a simulator of 650 devices written
out in full would cost it ~10 µs a message. Such a line also covers ids that
no account owns; the runtime has no such device and drops what arrives for one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final, Protocol

from runtime.errors import ConfigError

__all__ = [
    "DEVICE_LEAVES",
    "RUNTIME_CLIENT_PREFIX",
    "RUNTIME_USER",
    "Account",
    "BrokerAccounts",
    "DeviceRef",
    "Located",
    "Role",
    "find_mosquitto_passwd",
    "new_password",
    "write_amqtt_passwords",
    "write_mosquitto_passwords",
    "write_private",
]

#: The runtime's user name on the broker (``deploy/mosquitto/acl`` uses it too).
RUNTIME_USER: Final = "commandpost"
#: Every client id of the runtime begins with it (hosts ``cp-{host}``, pool members ``cp-{id}``).
RUNTIME_CLIENT_PREFIX: Final = "cp-"
#: The topic root and leaves of CONTRACT.md (:mod:`devices.mqtt` builds the same topics).
ROOT: Final = "city"
#: What a device publishes; it reads only ``cmd``.
DEVICE_LEAVES: Final = ("telemetry", "event", "ack", "status")
#: Account names: the shape of an equipment id (no ``+``, ``#``, ``/``, ``:`` nor space).
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PASSWORD_BYTES: Final = 24


class Role(StrEnum):
    """What an account is for (the table of the module docstring)."""

    RUNTIME = "runtime"
    DEVICE = "device"
    SIMULATOR = "simulator"


class Located(Protocol):
    """What an account needs of a device: :class:`runtime.inventory.Equipment` has it."""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def municipality(self) -> str: ...


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """A device's place in the topic tree: ``city/{municipality}/{kind}/{id}``."""

    municipality: str
    kind: str
    id: str

    def __post_init__(self) -> None:
        for what, value in (("municipality", self.municipality), ("kind", self.kind),
                            ("id", self.id)):
            if not isinstance(value, str) or not value or any(c in value for c in "/+#\x00 "):
                raise ConfigError(f"device {what} {value!r} cannot be a topic level")

    @classmethod
    def of(cls, device: Located) -> DeviceRef:
        return cls(device.municipality, device.kind, device.id)

    @property
    def group(self) -> tuple[str, str]:
        """``(municipality, kind)``: the devices one ``+`` line can cover."""
        return self.municipality, self.kind

    def topic(self, leaf: str) -> str:
        return f"{ROOT}/{self.municipality}/{self.kind}/{self.id}/{leaf}"


def new_password() -> str:
    """A fresh random password, URL-safe (it travels in broker URLs)."""
    return secrets.token_urlsafe(_PASSWORD_BYTES)


@dataclass(frozen=True, slots=True)
class Account:
    """One broker account: its name, password, role and the devices it speaks for."""

    username: str
    password: str = field(repr=False)
    role: Role
    devices: tuple[DeviceRef, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.password, str) or len(self.password) < 16 or any(
                c in self.password for c in ":\n\r\x00"):
            raise ConfigError(f"account {self.username!r}: the password must be 16 characters "
                              "or more, without ':' nor line breaks")
        if self.role is Role.RUNTIME:
            if self.username != RUNTIME_USER or self.devices:
                raise ConfigError(f"the runtime's account is {RUNTIME_USER!r}, with no device")
            return
        if not isinstance(self.username, str) or not _NAME.match(self.username):
            raise ConfigError(f"account name {self.username!r} does not match {_NAME.pattern}")
        if self.username == RUNTIME_USER or self.username.startswith(RUNTIME_CLIENT_PREFIX):
            raise ConfigError(f"account name {self.username!r} is the runtime's "
                              f"({RUNTIME_USER!r} and client ids {RUNTIME_CLIENT_PREFIX}*)")
        if self.role is Role.DEVICE and (
                len(self.devices) != 1 or self.devices[0].id != self.username):
            raise ConfigError(f"device account {self.username!r} must speak for the device "
                              "of that id alone")
        if self.role is Role.SIMULATOR and not self.devices:
            raise ConfigError(f"simulator account {self.username!r} speaks for no device")


class BrokerAccounts:
    """The accounts of one broker, and the password and ACL files written from them.

    The runtime's account exists from the start; device and simulator
    accounts are added (an account added again under the same name keeps its
    password and takes the new devices).
    """

    def __init__(self, runtime_password: str | None = None) -> None:
        self.runtime = Account(RUNTIME_USER, runtime_password or new_password(), Role.RUNTIME)
        self._others: dict[str, Account] = {}

    def add_device(self, device: Located) -> Account:
        """The account of one device: its user name is the device's id."""
        ref = DeviceRef.of(device)
        return self._add(ref.id, Role.DEVICE, (ref,))

    def add_simulator(self, name: str, devices: Iterable[Located]) -> Account:
        """An account that publishes for every one of ``devices`` (a simulator, a bench)."""
        refs = tuple(dict.fromkeys(DeviceRef.of(d) for d in devices))
        return self._add(name, Role.SIMULATOR, refs)

    def _add(self, name: str, role: Role, refs: tuple[DeviceRef, ...]) -> Account:
        old = self._others.get(name)
        if old is not None and old.role is not role:
            raise ConfigError(f"account {name!r} is already a {old.role} account")
        account = Account(name, old.password if old else new_password(), role, refs)
        self._others[name] = account
        return account

    def get(self, name: str) -> Account:
        """The account of that name; ConfigError when there is none."""
        if name == RUNTIME_USER:
            return self.runtime
        try:
            return self._others[name]
        except KeyError:
            raise ConfigError(f"no broker account {name!r}") from None

    def devices_side(self) -> tuple[Account, ...]:
        """Every account but the runtime's, in the order they were added."""
        return tuple(self._others.values())

    def all(self) -> tuple[Account, ...]:
        """The runtime's account, then the others."""
        return (self.runtime, *self._others.values())

    # -- what each account may do --

    def grants(self, account: Account) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(publish, read)``: the topic filters ``account`` may publish on and read.

        A simulator's filters take a ``+`` for the id where it speaks for every
        device of a (municipality, kind) that the accounts name (module docstring).
        """
        if account.role is Role.RUNTIME:
            return (f"{ROOT}/+/+/+/cmd",), (f"{ROOT}/#",)
        bases = self._bases(account)
        publish = tuple(f"{base}/{leaf}" for leaf in DEVICE_LEAVES for base in bases)
        return publish, tuple(f"{base}/cmd" for base in bases)

    def _bases(self, account: Account) -> list[str]:
        if account.role is Role.DEVICE:
            return [account.devices[0].topic("").rstrip("/")]
        known: dict[tuple[str, str], set[str]] = {}
        for other in self._others.values():
            for ref in other.devices:
                known.setdefault(ref.group, set()).add(ref.id)
        mine: dict[tuple[str, str], set[str]] = {}
        for ref in account.devices:
            mine.setdefault(ref.group, set()).add(ref.id)
        bases: list[str] = []
        for (municipality, kind), ids in mine.items():
            if ids == known[(municipality, kind)]:
                bases.append(f"{ROOT}/{municipality}/{kind}/+")
            else:
                bases += [f"{ROOT}/{municipality}/{kind}/{i}" for i in sorted(ids)]
        return bases

    # -- the files --

    def mosquitto_acl(self, accounts: Iterable[Account]) -> str:
        """A mosquitto ``acl_file`` granting ``accounts`` their rights, nothing to anyone else.

        Telemetry lines come first: mosquitto stops at the first line that matches.
        """
        lines = ["# Written by commandpost: every account, and what it may publish and read."]
        for account in accounts:
            publish, read = self.grants(account)
            lines += ["", f"user {account.username}"]
            lines += [f"topic write {t}" for t in publish]
            lines += [f"topic read {t}" for t in read]
        return "\n".join(lines) + "\n"

    def amqtt_acl(self, accounts: Iterable[Account]) -> dict[str, dict[str, list[str]]]:
        """amqtt's ``publish-acl`` and (subscribe) ``acl`` for ``accounts``.

        amqtt checks what a client may read only when it subscribes: the
        simulators subscribe to their devices' ``cmd`` topics one by one.
        """
        publish: dict[str, list[str]] = {}
        subscribe: dict[str, list[str]] = {}
        for account in accounts:
            pub, read = self.grants(account)
            publish[account.username] = list(pub)
            subscribe[account.username] = list(read)
        return {"publish-acl": publish, "acl": subscribe}


def find_mosquitto_passwd(mosquitto: str | None = None) -> str:
    """``mosquitto_passwd`` (beside ``mosquitto``, else on PATH); ConfigError if absent."""
    if mosquitto:
        beside = [Path(mosquitto).with_name("mosquitto_passwd"),
                  Path(mosquitto).parent.parent / "bin" / "mosquitto_passwd"]
        for candidate in beside:
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    on_path = shutil.which("mosquitto_passwd")
    if on_path is not None:
        return on_path
    raise ConfigError("mosquitto_passwd is not installed (it comes with apt install mosquitto)")


def write_mosquitto_passwords(path: Path, accounts: Iterable[Account], binary: str) -> None:
    """Write mosquitto's ``password_file`` for ``accounts``, readable by us alone.

    The hashes are mosquitto's own (``mosquitto_passwd -U`` hashes a file of
    ``user:password`` lines in place), so no password reaches a command line;
    the file then replaces ``path`` at once, so the broker never reads half of it.
    """
    accounts = list(accounts)
    if not accounts:
        write_private(path, "")  # mosquitto_passwd refuses an empty file; no one connects
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(f"{a.username}:{a.password}\n" for a in accounts)
    try:
        done = subprocess.run([binary, "-U", str(tmp)], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot run {binary}: {exc}") from exc
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{binary} -U failed ({done.returncode}): "
                          f"{done.stderr.decode(errors='replace').strip()}")
    os.replace(tmp, path)


def write_amqtt_passwords(path: Path, accounts: Iterable[Account],
                          cache: dict[tuple[str, str], str] | None = None) -> None:
    """Write the password file of amqtt's ``FileAuthPlugin``: ``user:hash`` lines of Argon2
    hashes (pwdlib's, which amqtt verifies them with), readable by us alone.

    ``cache`` keeps the hashes already computed (Argon2 takes tens of milliseconds on purpose).
    """
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    hasher = PasswordHash((Argon2Hasher(),))
    known = cache if cache is not None else {}
    lines = []
    for a in accounts:
        key = (a.username, a.password)
        if key not in known:
            known[key] = hasher.hash(a.password)
        lines.append(f"{a.username}:{known[key]}\n")
    write_private(path, "".join(lines))


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once, mode 0600 (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
