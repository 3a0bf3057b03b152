"""Child processes that die with us: ``PR_SET_PDEATHSIG`` from one long-lived thread.

    proc = spawn_tied([sys.executable, "-m", "some.server"], stdout=log,
                      start_new_session=True)

:func:`spawn_tied` starts a child that the kernel SIGKILLs when this process
dies, even by kill -9, so a server it started never outlives it holding a
port. On other systems than Linux the child is started the same way, without
the tie (see :mod:`runtime.reaper` for the watcher that covers the rest).

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not
the process: a child started from a short-lived worker thread would be killed
as soon as that thread ends. Every tied child is therefore forked by one
spawner thread that lives as long as the process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

__all__ = ["die_with_parent", "spawn_tied", "tie_supported"]

_log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        _log.debug("prctl unavailable: children may outlive a killed parent")
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    function: Callable[..., int] = prctl
    return function


_PRCTL = _load_prctl()


def tie_supported() -> bool:
    """Whether children started here can be tied to our life (Linux prctl)."""
    return _PRCTL is not None


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies.

    Only meaningful when the fork happens on a thread that outlives the child
    (:func:`spawn_tied` sees to that).
    """

    def preexec() -> None:
        if _PRCTL is None:
            return
        _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody will signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class _Spawner:
    """Forks every tied child from one long-lived thread (see the module doc)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def spawn(self, launch: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            # After os.fork() the old thread is gone from the child: start a new one.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="lifeline.spawner", daemon=True
                )
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((launch, future))
        return future.result()

    def _run(self) -> None:
        while True:
            launch, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(launch())
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)


_SPAWNER = _Spawner()


def spawn_tied(argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **popen_kwargs)``, SIGKILLed by the kernel when we die.

    ``preexec_fn`` is ours and may not be given. The child is forked by the
    spawner thread, whichever thread calls this; errors of ``Popen`` (a missing
    binary: ``OSError``) are raised here.
    """
    if "preexec_fn" in popen_kwargs:
        raise TypeError("spawn_tied sets preexec_fn itself")
    parent = os.getpid()
    args = list(argv)

    def launch() -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, preexec_fn=die_with_parent(parent), **popen_kwargs)

    return _SPAWNER.spawn(launch)
