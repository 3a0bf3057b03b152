"""``commandpost bench command``."""

from __future__ import annotations

from typing import Any

from runtime.errors import ConfigError


def run(**kwargs: Any) -> dict[str, Any]:
    """The figures of this bench (see the module docstring)."""
    raise ConfigError("bench command is not written yet")
