"""Bench results committed with the code, and the README table made from them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def save_result(path: str, name: str, result: dict[str, Any], command: str) -> None:
    """Write ``result`` with the bench's name, the command and the commit to ``path``."""
    doc = {"bench": name, "command": f"commandpost {command}", "commit": _commit(),
           "result": result}
    Path(path).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
