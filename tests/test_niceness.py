"""Process priority of background work: the value from the environment, and every thread
of a process put in that background (in a child process: a priority is never raised
again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Final

import pytest

from runtime.errors import ConfigError
from runtime.niceness import BACKGROUND_NICE, ENV, IDLE, background_nice, check_nice


def test_the_background_value_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert background_nice() == BACKGROUND_NICE == 0  # off unless asked for
    monkeypatch.setenv(ENV, "0")
    assert background_nice() == 0
    monkeypatch.setenv(ENV, " 7 ")
    assert background_nice() == 7
    monkeypatch.setenv(ENV, "Idle")
    assert background_nice() == IDLE
    for bad in ("high", "-3", "20", "1.5", "idler"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ConfigError, match=ENV):
            background_nice()


_CHILD = """
import json, os, threading
from runtime.niceness import lower_priority
gate = threading.Event()
before = threading.Thread(target=gate.wait, daemon=True)
before.start()
changed = lower_priority({nice!r})
again = lower_priority({nice!r})
seen = {{}}

def priority(tid):
    try:
        return [os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(tid)]
    except ProcessLookupError:  # a thread gone since the listing (the joined one)
        return None

after = threading.Thread(target=lambda: seen.update(after=priority(threading.get_native_id())))
after.start(); after.join()

tids = [int(t) for t in os.listdir("/proc/self/task")]
print(json.dumps({{"changed": changed, "again": again, "after": seen["after"],
                  "threads": [p for p in map(priority, tids) if p is not None]}}))
gate.set(); before.join()
"""


def _child(nice: int | str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(nice=nice)], check=True,
                         capture_output=True, text=True, timeout=60)
    got: dict[str, Any] = json.loads(out.stdout)
    return got


NORMAL: Final = os.SCHED_OTHER


def test_every_thread_is_raised_those_before_and_after_alike() -> None:
    got = _child(6)
    assert got["changed"] == 2  # the main thread and the one already running
    assert got["again"] == 0  # already there: nothing to change
    assert {tuple(t) for t in got["threads"]} == {(6, NORMAL)} and got["after"] == [6, NORMAL]


def test_idle_puts_every_thread_in_the_idle_policy_those_before_and_after_alike() -> None:
    got = _child(IDLE)
    assert got["changed"] == 2 and got["again"] == 0
    assert {tuple(t) for t in got["threads"]} == {(0, os.SCHED_IDLE)}
    assert got["after"] == [0, os.SCHED_IDLE]


def test_zero_leaves_the_process_as_it_was() -> None:
    got = _child(0)
    assert got["changed"] == 0 and {tuple(t) for t in got["threads"]} == {(0, NORMAL)}
    assert got["after"] == [0, NORMAL]


def test_a_configured_value_is_checked() -> None:
    assert check_nice(0) == 0 and check_nice(19) == 19 and check_nice(IDLE) == IDLE
    for bad in (-1, 20, True, 2.5, "Idle", "5"):
        with pytest.raises(ConfigError, match="from 0 to 19"):
            check_nice(bad)  # type: ignore[arg-type]


_RESTORE: Final = """
import json, os
from runtime.niceness import IDLE, lower_priority, restore_priority
lower_priority(5)
lower_priority(IDLE)
lowered = [os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)]
ok = restore_priority()
print(json.dumps({"lowered": lowered, "ok": ok,
                  "after": [os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)]}))
"""


def test_a_lane_process_started_in_the_background_asks_for_the_normal_priority_back() -> None:
    out = json.loads(subprocess.run([sys.executable, "-c", _RESTORE], capture_output=True,
                                    text=True, check=True).stdout)
    assert out["lowered"] == [5, os.SCHED_IDLE]
    if os.geteuid() == 0:  # Linux grants it to root (or within RLIMIT_NICE)
        assert out["ok"] and out["after"] == [0, os.SCHED_OTHER]
    else:
        assert not out["ok"] or out["after"] == [0, os.SCHED_OTHER]
