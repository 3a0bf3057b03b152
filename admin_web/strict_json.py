"""JSON as RFC 8259 defines it, for every body the admin web reads.

Python's :mod:`json` accepts ``NaN``, ``Infinity`` and ``-Infinity``, which are
not JSON, and a NaN compares false with any bound, so a range check lets it
through. It also raises :class:`RecursionError`, not :class:`ValueError`, on an
array nested a hundred thousand deep, which Flask would answer with a 500.
:class:`StrictJSONProvider` turns both into a :class:`ValueError`, which
``request.get_json`` and the API's body readers answer with a 400::

    app.json = StrictJSONProvider(app)
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from flask.json.provider import DefaultJSONProvider


class NotJsonError(ValueError):
    """A body that Python's parser would take but that is not JSON."""


def _refuse_constant(name: str) -> NoReturn:
    raise NotJsonError(f"{name} is not a JSON number")


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, parsing only what RFC 8259 calls JSON.

    Responses are written as by the default provider.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse ``s``; raises :class:`ValueError` for anything that is not JSON."""
        kwargs.setdefault("parse_constant", _refuse_constant)
        try:
            return json.loads(s, **kwargs)
        except RecursionError:
            raise NotJsonError("nested too deeply") from None
