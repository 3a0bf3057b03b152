"""A watcher process that kills what a run started, once the run is gone.

    reaper = Reaper.start()       # first, before the run starts any child
    ...                           # servers, Ray, simulators: all carry the mark
    reaper.adopt_descendants()    # once Ray is up: its agents, by pid
    reaper.remove_after(data_dir) # a scratch directory of the run's own
    ...
    reaper.close()                # the end: whatever still carries the mark dies

Why: a kill -9 of ``commandpost demo`` gives it no chance to stop what it
started. The kernel's parent-death signal (:mod:`runtime.lifeline`) covers the
children it forks itself, and Ray's GCS and raylet share the driver's fate the
same way; but the raylet's own children are nobody's: a Ray worker that was
still booting when the raylet died lingers ~25 s, Ray's agents a minute.

The reaper is a small stdlib-only process in a session of its own (a signal to
the run's process group or terminal does not reach it). Its standard input is a
pipe whose write end only the run holds; end of file there — the run exited or
was killed — or its parent pid changing means: SIGKILL every process that
carries the run's mark or that the run adopted, again until none is left (at
most :data:`REAP_DEADLINE_S`), remove the scratch directories the run named,
then exit. It never outlives the run by more.

The mark is ``COMMANDPOST_REAP=<random token>`` in the environment:
:meth:`Reaper.start` sets it in the run's own environment, so every process
started afterwards by the run or by its descendants inherits it (the raylet
passes its environment to the workers it starts), and nothing else carries
it. A process that overwrote its environment with its title (Ray's agents do)
is recognised by pid and start time instead, once adopted. A Ray cluster the
run only connects to (``--ray-address``) never sees the mark: its hosts live on.

Linux only (``/proc``); elsewhere :meth:`Reaper.start` returns a reaper that
does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["MARK_ENV", "REAP_DEADLINE_S", "Reaper", "descendants", "find_marked"]

_log = logging.getLogger(__name__)

#: The environment variable that marks every process a run started.
MARK_ENV = "COMMANDPOST_REAP"
#: The longest the reaper keeps killing after the run is gone.
REAP_DEADLINE_S = 10.0
_PARENT_CHECK_S = 1.0
# Passes in a row that find nothing before the reaper calls it done: a process
# forked by a dying parent can appear a moment after the first pass.
_QUIET_PASSES = 3
_PASS_INTERVAL_S = 0.1
_PROC = Path("/proc")


# --- /proc ---------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, starttime)`` of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ")".
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return fields[0].decode(), int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return []


def descendants(root: int) -> list[tuple[int, int]]:
    """``(pid, starttime)`` of every live descendant of ``root`` (not ``root`` itself)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[0] != "Z":
            children.setdefault(st[1], []).append((pid, st[2]))
    out: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def find_marked(mark: str, adopted: dict[int, int] | None = None) -> list[int]:
    """Live processes (zombies aside) carrying ``MARK_ENV=mark``, or adopted ``pid: starttime``.

    Only processes whose environment this user may read are seen, which is
    also all that it may kill.
    """
    needle = f"\0{MARK_ENV}={mark}\0".encode()
    adopted = adopted or {}
    me = os.getpid()
    found: list[int] = []
    for pid in _pids():
        if pid == me:
            continue
        st = _stat(pid)
        if st is None or st[0] == "Z":
            continue
        if adopted.get(pid) == st[2]:
            found.append(pid)
            continue
        try:
            env = (_PROC / str(pid) / "environ").read_bytes()
        except OSError:
            continue
        if needle in b"\0" + env + b"\0":
            found.append(pid)
    return found


# --- the watcher (child side) ---------------------------------------------------------


def reap(mark: str, adopted: dict[int, int], deadline_s: float = REAP_DEADLINE_S) -> int:
    """SIGKILL marked and adopted processes until a few passes find none; how many were hit."""
    deadline = time.monotonic() + deadline_s
    hit: set[int] = set()
    quiet = 0
    while quiet < _QUIET_PASSES and time.monotonic() < deadline:
        targets = find_marked(mark, adopted)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        hit.update(targets)
        quiet = 0 if targets else quiet + 1
        time.sleep(_PASS_INTERVAL_S)
    return len(hit)


def _watch(parent: int, adopted: dict[int, int], scratch: list[str]) -> None:
    """Read the run's lines from stdin until end of file or the parent is gone."""
    buffer = b""
    while True:
        ready, _, _ = select.select([0], [], [], _PARENT_CHECK_S)
        if not ready:
            # A descendant forked without exec would hold the pipe open: the
            # parent pid tells the truth.
            if os.getppid() != parent:
                return
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            verb, _, rest = line.partition(b" ")
            if verb == b"adopt":
                with contextlib.suppress(ValueError):
                    pid, start = rest.split()
                    adopted[int(pid)] = int(start)
            elif verb == b"remove" and rest.startswith(b"/"):
                scratch.append(os.fsdecode(rest))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m runtime.reaper --mark TOKEN --parent PID`` (started by :class:`Reaper`)."""
    parser = argparse.ArgumentParser(prog="python -m runtime.reaper")
    parser.add_argument("--mark", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    # Ctrl-C and a closing terminal are for the run, not for the one who cleans after it.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    adopted: dict[int, int] = {}
    scratch: list[str] = []
    _watch(args.parent, adopted, scratch)
    reap(args.mark, adopted)
    # Only now: nothing that could still write there is alive.
    for path in scratch:
        shutil.rmtree(path, ignore_errors=True)
    return 0


# --- the run's side -------------------------------------------------------------------


class Reaper:
    """The run's end of the watcher (see the module doc); use :meth:`start`."""

    def __init__(self, proc: subprocess.Popen[bytes] | None, mark: str, fd: int | None) -> None:
        self._proc = proc
        self._mark = mark
        self._fd = fd
        self._lock = threading.Lock()

    @classmethod
    def start(cls) -> Reaper:
        """Start the watcher and mark this process's environment for its future children.

        Call it before starting any child. On a system without ``/proc`` it
        returns a reaper that does nothing.
        """
        if not (_PROC / "self" / "environ").exists():
            _log.debug("no /proc: children of a killed run are not reaped")
            return cls(None, "", None)
        mark = secrets.token_hex(8)
        root = str(Path(__file__).resolve().parent.parent)
        # The watcher must not carry the mark it reaps (nor an enclosing run's).
        env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # os.pipe() is not inheritable: only this process holds the write end,
        # so end of file on the read end means this process is gone.
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.reaper", "--mark", mark,
                 "--parent", str(os.getpid())],
                stdin=read_fd, stdout=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        os.environ[MARK_ENV] = mark
        return cls(proc, mark, write_fd)

    @property
    def mark(self) -> str:
        """The token in ``COMMANDPOST_REAP`` ("" when the reaper does nothing)."""
        return self._mark

    @property
    def pid(self) -> int | None:
        """The watcher's pid (None when the reaper does nothing)."""
        return None if self._proc is None else self._proc.pid

    def adopt(self, procs: Iterable[tuple[int, int]]) -> None:
        """Have the watcher also kill these ``(pid, starttime)`` when the run is gone."""
        self._tell(b"".join(f"adopt {pid} {start}\n".encode() for pid, start in procs))

    def remove_after(self, path: Path) -> None:
        """Have the watcher delete the directory ``path`` once it has killed the rest.

        Only for a scratch directory that the run created for itself (the
        embedded servers' data of a demo): after a kill -9 it would stay behind.
        """
        raw = os.fsencode(Path(path).resolve())
        if b"\n" in raw:
            raise ValueError(f"cannot hand {path!r} to the reaper: it holds a newline")
        self._tell(b"remove " + raw + b"\n")

    def _tell(self, lines: bytes) -> None:
        with self._lock:
            if self._fd is None or not lines:
                return
            try:
                os.write(self._fd, lines)
            except OSError as exc:  # the watcher died: nothing more to tell it
                _log.warning("reaper (pid %s) is gone: %s", self.pid, exc)

    def adopt_descendants(self) -> None:
        """Adopt every process that descends from this one now (the watcher aside).

        For processes whose environment no longer shows the mark, such as
        Ray's agents after they retitled themselves.
        """
        mine = self.pid
        self.adopt(p for p in descendants(os.getpid()) if p[0] != mine)

    def close(self, timeout: float = REAP_DEADLINE_S) -> None:
        """Tell the watcher the run is over: it kills whatever is left, then exits.

        Waits up to ``timeout`` for it; a run that stopped cleanly has nothing
        left and the watcher is gone in a few tenths of a second.
        """
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None or self._proc is None:
            return
        os.close(fd)
        if os.environ.get(MARK_ENV) == self._mark:
            del os.environ[MARK_ENV]
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _log.warning("reaper (pid %d) still busy after %.0f s", self._proc.pid, timeout)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
