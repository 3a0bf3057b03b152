"""JSON as RFC 8259 defines it, for every body the admin web reads or writes.

Python's :mod:`json` accepts ``NaN``, ``Infinity`` and ``-Infinity``, which are
not JSON, and a NaN compares false with any bound, so a range check lets it
through. It also raises :class:`RecursionError`, not :class:`ValueError`, on an
array nested a hundred thousand deep, which Flask would answer with a 500.
:class:`StrictJSONProvider` turns both into a :class:`ValueError`, which
``request.get_json`` and the API's body readers answer with a 400; and it
writes a float that is not finite (a device's reading, an event field) as
``null``, where :mod:`json` would write ``NaN`` that clients cannot parse::

    app.json = StrictJSONProvider(app)
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from flask.json.provider import DefaultJSONProvider


class NotJsonError(ValueError):
    """A body that Python's parser would take but that is not JSON."""


def _refuse_constant(name: str) -> NoReturn:
    raise NotJsonError(f"{name} is not a JSON number")


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, reading and writing only what RFC 8259 calls JSON."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """``obj`` as JSON; a float that is not finite becomes ``null``."""
        kwargs.setdefault("allow_nan", False)
        try:
            return super().dumps(obj, **kwargs)
        except ValueError:
            # Rare: only then is the whole value walked.
            return super().dumps(_finite(obj), **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse ``s``; raises :class:`ValueError` for anything that is not JSON."""
        kwargs.setdefault("parse_constant", _refuse_constant)
        try:
            return json.loads(s, **kwargs)
        except RecursionError:
            raise NotJsonError("nested too deeply") from None
