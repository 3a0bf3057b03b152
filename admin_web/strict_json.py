"""JSON as RFC 8259 defines it, for every body the admin web reads or writes.

Python's :mod:`json` takes more than JSON, and some of what it takes breaks
later, far from the parser:

* ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON, and a NaN compares
  false with any bound, so a range check lets it through (``1e999`` is JSON,
  and becomes an infinity: that one is left to the checks of each field,
  which name the field, as every number that is not finite must be);
* an escaped lone surrogate (``"\\ud800"``) becomes a string that cannot be
  encoded as UTF-8, so it fails where it is stored or sent on;
* a name given twice in one object (``{"a": 1, "a": 2}``) silently keeps
  the last value, where another reader of the same body may keep the first;
* nesting is limited only by the interpreter: an array a hundred thousand
  deep raises :class:`RecursionError` (not :class:`ValueError`), and one a
  few hundred deep parses but breaks whatever walks it recursively next.

:class:`StrictJSONProvider` refuses all of these with a :class:`NotJsonError`
(a :class:`ValueError`), which ``request.get_json`` and the API's body reader
(:func:`admin_web.http_errors.json_object_body`) answer with a 400, and
nesting past :data:`MAX_DEPTH` arrays and objects the same way. It writes a
float that is not finite (a device's reading, an event field) as ``null``,
where :mod:`json` would write ``NaN`` that clients cannot parse::

    app.json = StrictJSONProvider(app)
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, NoReturn

from flask.json.provider import DefaultJSONProvider

__all__ = ["MAX_DEPTH", "NotJsonError", "StrictJSONProvider", "check_parsed"]

#: The deepest nesting of arrays and objects a body may have (no request needs 5).
MAX_DEPTH: Final = 32
_SURROGATE_RE: Final = re.compile("[\ud800-\udfff]")


class NotJsonError(ValueError):
    """A body that Python's parser would take but that is not JSON we read."""


def _refuse_constant(name: str) -> NoReturn:
    raise NotJsonError(f"{name} is not a JSON number")


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise NotJsonError(f"the name {_shown(name)} is given twice in one object")
            seen.add(name)
    return obj


def _shown(text: str) -> str:
    """``text`` for an error message: short, and with any lone surrogate escaped."""
    cut = text if len(text) <= 40 else text[:39] + "…"
    return ascii(cut) if _SURROGATE_RE.search(cut) else repr(cut)


def check_parsed(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse (:class:`NotJsonError`) a parsed value nested deeper than ``max_depth``
    arrays and objects, or holding a lone surrogate in a string or a name.

    Walks the value without recursion, so any depth is refused, not crashed on.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE_RE.search(item):
                raise NotJsonError("a string holds a lone surrogate (\\ud800-\\udfff), "
                                   "which is not Unicode text")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise NotJsonError(f"nested deeper than {max_depth} arrays and objects")
            if isinstance(item, dict):
                stack.extend((name, depth + 1) for name in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


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
    """Flask's JSON provider, reading and writing only what RFC 8259 calls JSON.

    Objects are written in the order their names were set, not sorted: JSON
    names no order, and sorting costs a page of equipment (a hundred lighting
    circuits, each lamp's readings) some 40 % of its encoding, during which
    the encoder holds the interpreter for every other request.
    """

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """``obj`` as JSON; a float that is not finite becomes ``null``."""
        kwargs.setdefault("allow_nan", False)
        try:
            return super().dumps(obj, **kwargs)
        except ValueError:
            # Rare: only then is the whole value walked.
            return super().dumps(_finite(obj), **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse ``s``; raises :class:`ValueError` for anything that is not JSON we read.

        Bytes must be UTF-8 (or UTF-16/32, as RFC 8259 allows a reader to take).
        """
        kwargs.setdefault("parse_constant", _refuse_constant)
        kwargs.setdefault("object_pairs_hook", _unique_names)
        try:
            value = json.loads(s, **kwargs)
        except RecursionError:
            raise NotJsonError(f"nested deeper than {MAX_DEPTH} arrays and objects") from None
        check_parsed(value)
        return value
