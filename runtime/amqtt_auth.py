"""amqtt plugins of the embedded broker: its accounts and ACL, read again when they change.

Loaded by the amqtt child process of :class:`runtime.embedded.EmbeddedBroker`
(never imported by the runtime itself)::

    "plugins": {
        "runtime.amqtt_auth.ReloadingFileAuth": {"password_file": ".../amqtt.passwd"},
        "runtime.amqtt_auth.ReloadingTopicAcl": {"acl_file": ".../amqtt-acl.json"},
    }

* :class:`ReloadingFileAuth` is amqtt's ``FileAuthPlugin`` (``user:hash`` lines,
  Argon2 hashes), which reads its file once: this one reads it again whenever
  it was replaced, so accounts added while the broker runs can connect at once.
* :class:`ReloadingTopicAcl` applies amqtt's ``TopicAccessControlListPlugin``
  matching to the JSON file written by
  :meth:`runtime.broker_accounts.BrokerAccounts.amqtt_acl` (``publish-acl``,
  ``acl``), read again whenever it was replaced: a client publishes only on
  its account's ``publish-acl`` topics, subscribes only within its ``acl``
  filters, and receives only topics within them. A user that is not in the
  file may do nothing.

What amqtt cannot do, whatever its plugins: refuse a packet for its size
(there is no maximum packet size), and keep an account from connecting under
another client's id: a new connection with a client id in use takes the
session over, even one that then fails to authenticate. Deployments use
mosquitto (``deploy/mosquitto``), which does both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.authentication import FileAuthPlugin
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.plugins.topic_checking import TopicAccessControlListPlugin

__all__ = ["ReloadingFileAuth", "ReloadingTopicAcl"]

_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    """What changes when the file is replaced: inode, size, modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class ReloadingFileAuth(FileAuthPlugin):  # type: ignore[misc]
    """amqtt's ``FileAuthPlugin``, reading its password file again once it was replaced."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._path = Path(str(self._get_config_option("password-file", "")))
        self._seen = _stamp(self._path)

    async def authenticate(self, *, session: Any) -> bool | None:
        seen = _stamp(self._path)
        if seen != self._seen:
            self._seen = seen
            self._users: dict[str, str] = {}
            self._read_password_file()
        result: bool | None = await super().authenticate(session=session)
        return result


class ReloadingTopicAcl(BaseTopicPlugin):  # type: ignore[misc]
    """Per-account publish, subscribe and receive rights from a JSON file, reloaded on change."""

    @dataclass
    class Config:
        acl_file: str = ""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._path = Path(str(self._get_config_option("acl-file", "")))
        self._seen: _Stamp | None = None
        self._publish: dict[str, list[str]] = {}
        self._read: dict[str, list[str]] = {}
        self._reload()

    def _reload(self) -> None:
        seen = _stamp(self._path)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            doc = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            # Keep the rights already read: a broken file must not open the broker.
            self.context.logger.error("cannot read the ACL file %s: %s", self._path, exc)
            return
        self._publish = {str(k): [str(t) for t in v] for k, v in doc["publish-acl"].items()}
        self._read = {str(k): [str(t) for t in v] for k, v in doc["acl"].items()}

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Any = None) -> bool:
        self._reload()
        username = getattr(session, "username", None)
        if not topic or not username:
            return False
        rights = self._publish if action == Action.PUBLISH else self._read
        match = TopicAccessControlListPlugin.topic_ac
        return any(match(topic, allowed) for allowed in rights.get(username, ()))
