"""The project's one error tree.

Every failure the runtime signals is an exception from this module; protocol
libraries' exceptions are mapped into it at the edge (``raise … from exc``).
The families tell callers what to do next:

* :class:`RetryableError` — try again later (a device or server not ready);
* :class:`ConfigError` — fix the configuration; retrying will not help;
* :class:`AuthError` — a person must act (credentials, permissions);
* :class:`RejectedError` — the receiver refused this request (with a code).
"""

from __future__ import annotations


class CommandpostError(Exception):
    """Root of every error the project raises on purpose."""


class RetryableError(CommandpostError):
    """A transient failure: the same call may succeed later."""


class DeviceUnavailableError(RetryableError):
    """A field device did not answer (connection refused, timeout, offline)."""


class StoreUnavailableError(RetryableError):
    """Redis could not be reached; the operation was not applied."""


class MailboxFullError(RetryableError):
    """An entity's mailbox refused a command; the sender may retry later."""


class ProtocolError(CommandpostError):
    """A peer broke its protocol: malformed frame, wrong shape, bad status."""


class MalformedMessageError(ProtocolError):
    """A payload that is not valid msgpack or not of the expected shape."""


class RejectedError(CommandpostError):
    """The receiver understood the request and refused it.

    ``code`` is the receiver's own reason (a Modbus exception code, an entity's
    refusal name) so that the operator sees why.
    """

    def __init__(self, message: str, code: str = "rejected") -> None:
        super().__init__(message)
        self.code = code


class UnknownEntityError(RejectedError):
    """A message was addressed to an entity that no host owns."""

    def __init__(self, entity_id: str) -> None:
        super().__init__(f"unknown entity {entity_id!r}", code="unknown_entity")
        self.entity_id = entity_id


class ConflictError(RejectedError):
    """A request that clashes with what holds now; ``names`` lists what it clashes with
    (the municipalities that have a crisis plan already)."""

    def __init__(self, message: str, *, names: list[str], code: str = "conflict") -> None:
        super().__init__(message, code=code)
        self.names = names


class InvalidCommandError(RejectedError):
    """A command its target would refuse, found before it is journaled.

    ``field`` names the offending request field as the HTTP API reports it
    (``action``, ``params``, ``params.dim``, ``idempotency_key``).
    """

    def __init__(self, message: str, *, field: str, code: str = "bad_value") -> None:
        super().__init__(message, code=code)
        self.field = field


class ExpiredError(RejectedError):
    """A message or command reached its deadline before it was served."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="expired")


class ConfigError(CommandpostError):
    """Bad configuration: an inventory, a profile, a URL. Not retryable."""


class DataFileError(ConfigError):
    """A data file failed validation; ``issues`` holds one ``file:line: field: message``
    line per error (:mod:`runtime.datafile`)."""

    def __init__(self, issues: list[str]) -> None:
        super().__init__("\n".join(issues))
        self.issues = issues


class InventoryError(DataFileError):
    """An inventory file failed validation."""


class PlanError(DataFileError):
    """A plan file (crisis, fire, signal plans) failed validation."""


class ScheduleError(DataFileError):
    """A schedule file failed validation."""


class AuthError(CommandpostError):
    """Authentication or authorisation failed: a person has to act."""


class EntityCrashedError(CommandpostError):
    """Raised inside a cell when an entity's callback raised; carries the cause."""
