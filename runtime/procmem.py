"""Memory and CPU of groups of processes, counted honestly for benchmarks.

Memory is PSS (proportional set size): pages shared between processes are
split among them, so summing PSS over Ray's workers, raylet and GCS does not
count the shared libraries once per process as RSS would::

    pids = tree_pids(os.getpid()) + ray_pids()
    print(f"{pss_mb(set(pids)):.0f} MB, {cpu_seconds(set(pids)):.1f} s CPU")
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import psutil

from runtime.errors import ConfigError

__all__ = ["cpu_seconds", "pss_mb", "ray_pids", "session_pids", "tree_pids"]

# Substrings of a command line that mark a process of a local Ray session:
# workers and actors retitle themselves "ray::…"; the rest run from Ray's package.
_RAY_MARKERS = (
    "ray::",
    "raylet",
    "gcs_server",
    "ray/_private/",
    "ray/dashboard/",
    "log_monitor",
    "ray/core/src/",
)


def _pss_kb(pid: int) -> int:
    """PSS of one process in kB; raises FileNotFoundError/ProcessLookupError if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        # Kernels before 4.14 have no smaps_rollup: sum the per-mapping lines.
        with open(f"/proc/{pid}/smaps", encoding="ascii") as f:
            text = f.read()
    total = 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            total += int(line.split()[1])
    return total


def pss_mb(pids: Iterable[int]) -> float:
    """Sum of PSS over ``pids`` in MB (2**20 bytes); processes that exited count 0.

    Raises :class:`ConfigError` when a live process's memory map is not readable
    by this user (another user's process without the needed privilege).
    """
    total_kb = 0
    for pid in set(pids):
        try:
            total_kb += _pss_kb(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        except PermissionError as exc:
            raise ConfigError(f"cannot read the memory map of pid {pid}: {exc}") from exc
    return total_kb / 1024


def tree_pids(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants; empty when the root has exited."""
    try:
        root = psutil.Process(root_pid)
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [root_pid, *(child.pid for child in children)]


def is_ray_cmdline(cmdline: str) -> bool:
    """Whether a process command line belongs to a Ray session's processes."""
    return any(marker in cmdline for marker in _RAY_MARKERS)


def ray_pids() -> list[int]:
    """Pids of this user's local Ray processes (GCS, raylet, workers, agents).

    The calling process is left out: a benchmark counts its driver separately.
    """
    me = os.getpid()
    uid = os.getuid()
    found: list[int] = []
    for proc in psutil.process_iter(["cmdline", "uids"]):
        if proc.pid == me:
            continue
        uids = proc.info.get("uids")
        cmdline = proc.info.get("cmdline")
        # Unreadable attributes come back as None (another user's or a zombie).
        if uids is None or cmdline is None or uids.real != uid:
            continue
        if is_ray_cmdline(" ".join(cmdline)):
            found.append(proc.pid)
    return found


def session_pids(session_dir: str) -> list[int]:
    """Pids of one Ray session: processes whose command line names its session
    directory (GCS, raylet, agents) and all their descendants (the workers).

    Another Ray session on the same machine (a test, a second bench) is left out,
    which :func:`ray_pids` cannot do.
    """
    if not session_dir:
        return []
    me = os.getpid()
    found: set[int] = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline")
        if proc.pid == me or not cmdline or session_dir not in " ".join(cmdline):
            continue
        found.update(tree_pids(proc.pid))
    found.discard(me)
    return sorted(found)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU seconds consumed so far by ``pids`` (exited ones count 0)."""
    total = 0.0
    for pid in set(pids):
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
