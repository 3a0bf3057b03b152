"""The long-running processes freeze their start-up heap (runtime.gcpolicy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = r"""
import gc, json, sys
from runtime.gcpolicy import settle

class Node:
    def __init__(self):
        self.peer = None

kept = [{"n": i, "items": [i, str(i)]} for i in range(20000)]
a, b = Node(), Node()
a.peer, b.peer = b, a          # start-up garbage: a cycle nothing refers to
del a, b
frozen = settle("test")
after_freeze = gc.get_freeze_count()
# A cycle made after the freeze is still collected.
c, d = Node(), Node()
c.peer, d.peer = d, c
del c, d
collected = gc.collect()
print(json.dumps({"frozen": frozen, "count": after_freeze, "collected": collected,
                  "kept": len(kept)}))
"""


def _run(env: dict[str, str]) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         check=True, timeout=60, env={**os.environ, **env})
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_settle_freezes_what_start_up_kept_and_later_cycles_are_still_collected() -> None:
    got = _run({"COMMANDPOST_GC_FREEZE": "1"})
    # The 20,000 kept dicts and their lists are frozen; the garbage cycle was not kept.
    assert got["frozen"] == got["count"] >= 40000
    assert got["collected"] >= 2  # the cycle made after the freeze (its two Nodes)
    assert got["kept"] == 20000


def test_settle_can_be_turned_off() -> None:
    got = _run({"COMMANDPOST_GC_FREEZE": "0"})
    assert got["frozen"] == 0
    assert got["count"] == 0
