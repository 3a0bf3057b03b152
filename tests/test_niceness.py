"""Process priority of background work: the value from the environment, and every thread
of a process put in that background (in a child process: a priority is never raised
again)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from typing import Any, Final

import pytest

from runtime.errors import ConfigError
from runtime.niceness import (
    BACKGROUND_NICE,
    ENV,
    IDLE,
    REALTIME_ENV,
    background_nice,
    check_nice,
    check_realtime,
    priority_realtime,
)


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


def test_the_real_time_priority_comes_from_the_environment_or_the_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REALTIME_ENV, raising=False)
    assert priority_realtime() == 0  # off unless asked for
    monkeypatch.setenv(REALTIME_ENV, " 10 ")
    assert priority_realtime() == 10
    for bad in ("rt", "-1", "100", "2.5"):
        monkeypatch.setenv(REALTIME_ENV, bad)
        with pytest.raises(ConfigError, match=REALTIME_ENV):
            priority_realtime()
    assert check_realtime(0) == 0 and check_realtime(99) == 99
    for value in (-1, 100, True, 1.5, "10"):
        with pytest.raises(ConfigError, match="from 0"):
            check_realtime(value)  # type: ignore[arg-type]


_REALTIME: Final = """
import json, os, resource, sys, threading
if len(sys.argv) > 2:  # no RLIMIT_RTPRIO either (the capability is taken by setpriv)
    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
from runtime.niceness import enter_realtime, realtime_of
gate = threading.Event()
before = threading.Thread(target=gate.wait, daemon=True)
before.start()
ok = enter_realtime(int(sys.argv[1]))
seen = {}
after = threading.Thread(target=lambda: seen.update(
    after=[os.sched_getscheduler(0), os.sched_getparam(0).sched_priority]))
after.start(); after.join()
def policy(tid):
    try:
        return (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
    except ProcessLookupError:  # a thread gone since the listing (the joined one)
        return None
threads = sorted({p for p in map(policy, map(int, os.listdir("/proc/self/task"))) if p})
print(json.dumps({"ok": ok, "threads": threads, "after": seen["after"],
                  "of": realtime_of(os.getpid())}))
gate.set(); before.join()
"""


def _realtime(*argv: str, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    out = subprocess.run([*prefix, sys.executable, "-c", _REALTIME, *argv],
                         capture_output=True, text=True, check=True, timeout=60)
    got: dict[str, Any] = json.loads(out.stdout)
    got["stderr"] = out.stderr
    return got


def test_the_critical_path_enters_the_real_time_class_every_thread_alike() -> None:
    rr = os.SCHED_RR
    if os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= 7:
        got = _realtime("7")
        assert got["ok"] and got["threads"] == [[rr, 7]] and got["after"] == [rr, 7]
        assert got["of"] == 7
    off = _realtime("0")
    assert not off["ok"] and off["threads"] == [[NORMAL, 0]] and off["of"] == 0


def test_a_process_refused_the_real_time_class_says_so_and_keeps_the_normal_one() -> None:
    # Root without CAP_SYS_NICE (util-linux's setpriv), and no RLIMIT_RTPRIO.
    got = _realtime("7", "unprivileged", prefix=(
        "setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice"))
    assert not got["ok"] and got["threads"] == [[NORMAL, 0]] and got["of"] == 0
    assert "RLIMIT_RTPRIO" in got["stderr"] and "refused" in got["stderr"]
