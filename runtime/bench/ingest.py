"""``commandpost bench ingest``."""

from __future__ import annotations

from typing import Any

from runtime.bench import legacy


def run(**kwargs: Any) -> dict[str, Any]:
    """The figures of this bench (see the module docstring)."""
    return legacy.ingest(**kwargs)
