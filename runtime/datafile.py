"""TOML data files checked with file and line: reading, locating, collecting issues.

Every data file of the project (the inventory, device profiles, alarm
conditions, crisis, fire and signal plans, schedules, the Open311 catalogue)
is read the same way: all its problems are collected in one pass and
reported together, one ``"{file}:{line}: {field}: {message}"`` line each,
sorted by line, in a :class:`~runtime.errors.DataFileError` (or the file's
own subclass of it). ``field`` is the path of the value at fault, such as
``equipment[7].kind`` (array indices count from 0, in file order)::

    >>> from runtime.errors import DataFileError
    >>> try:
    ...     parse_toml('name = "Dijon"\\nname = 3\\n', "x.toml", DataFileError)
    ... except DataFileError as exc:
    ...     print(exc.issues)
    ['x.toml:2: syntax: Cannot overwrite a value']

:func:`read_text` and :func:`parse_toml` turn an unreadable file and a
syntax error into one such line; a parser subclasses :class:`Checker` and
calls :meth:`Checker._issue` with the path of each problem, which
:class:`Locator` turns into a line (:mod:`tomllib` keeps no positions).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from typing import Any, ClassVar, Final

from runtime.errors import ConfigError, DataFileError

__all__ = [
    "NAME_PATTERN",
    "Checker",
    "KeyPath",
    "Locator",
    "field_name",
    "parse_toml",
    "read_text",
    "shown",
    "syntax_location",
    "toml_key",
    "toml_value",
    "type_name",
]

#: Names in data files (tags, presets, modes, steps): lowercase words joined by underscores.
NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

#: Where a value stands in a document: keys and array indices, ``("equipment", 7, "kind")``.
KeyPath = tuple[str | int, ...]


# --------------------------------------------------------------------------- reading


def read_text(path: str | os.PathLike[str], error: type[DataFileError] = DataFileError) -> str:
    """The text of the UTF-8 file at ``path``, a leading byte-order mark dropped.

    Raises ``error`` with one issue when the file cannot be read (line 0) or
    is not UTF-8 (the line of the first bad byte).
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise error([f"{source}:0: file: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error([f"{source}:{line}: file: not valid UTF-8 (byte {exc.start})"]) from exc
    # Editors on Windows like to add a byte-order mark; it is not a syntax error worth a stop.
    return text.removeprefix("\ufeff")


def parse_toml(text: str, source: str,
               error: type[DataFileError] = DataFileError) -> dict[str, Any]:
    """The document of TOML ``text``; a syntax error raises ``error`` with its line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, message = syntax_location(str(exc), text)
        raise error([f"{source}:{line}: syntax: {message}"]) from exc


_SYNTAX_AT_RE: Final = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")
_SYNTAX_END_RE: Final = re.compile(r"\s*\(at end of document\)\s*$")


def syntax_location(message: str, text: str) -> tuple[int, str]:
    """``(line, message without its position)`` of a :mod:`tomllib` error message."""
    if m := _SYNTAX_AT_RE.search(message):
        return int(m.group(1)), message[: m.start()]
    if m := _SYNTAX_END_RE.search(message):
        return max(1, text.count("\n") + (0 if text.endswith("\n") else 1)), message[: m.start()]
    return 1, message


# --------------------------------------------------------------------------- locating
# tomllib keeps no positions, so the text is scanned once for table headers and
# `key =` lines, and each is filed under the same path (`("equipment", 7, "kind")`)
# that validation uses.

_BARE_KEY: Final = r"[A-Za-z0-9_-]+"
_KEY_PART: Final = rf"""(?:{_BARE_KEY}|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY: Final = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER_RE: Final = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED_KEY})\s*\]\]?\s*(?:#.*)?$")
_KEYVAL_RE: Final = re.compile(rf"^\s*({_DOTTED_KEY})\s*=(.*)$")
_KEY_PART_RE: Final = re.compile(_KEY_PART)


def _split_key(dotted: str) -> tuple[str, ...]:
    parts: list[str] = []
    for m in _KEY_PART_RE.finditer(dotted):
        part = m.group(0)
        if part.startswith('"'):
            try:
                part = str(json.loads(part))
            except ValueError:
                part = part[1:-1]
        elif part.startswith("'"):
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def _scan_value(text: str, delim: str | None, depth: int) -> tuple[str | None, int]:
    """Follow one line of a value: is a multi-line string or array still open at its end?"""
    i, n = 0, len(text)
    while i < n:
        if delim is not None:
            if delim == '"""' and text[i] == "\\":
                i += 2
            elif text.startswith(delim, i):
                i += 3
                # Up to two quotes may end the content right before the closing three.
                while i < n and text[i] == delim[0]:
                    i += 1
                delim = None
            else:
                i += 1
            continue
        c = text[i]
        if c == "#":
            break
        if text.startswith('"""', i) or text.startswith("'''", i):
            delim = text[i : i + 3]
            i += 3
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c == "'":
            end = text.find("'", i + 1)
            i = n if end < 0 else end + 1
        else:
            depth += (c in "[{") - (c in "]}")
            i += 1
    return delim, max(depth, 0)


class Locator:
    """Line numbers of table headers and key assignments, by validation path."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        arrays: dict[KeyPath, int] = {}  # array-of-tables path -> index of its last element

        def resolve(parts: tuple[str, ...]) -> KeyPath:
            # `[equipment.attrs]` names the last `[[equipment]]` seen.
            out: KeyPath = ()
            for part in parts:
                out = (*out, part)
                if out in arrays:
                    out = (*out, arrays[out])
            return out

        table: KeyPath = ()
        delim: str | None = None  # the open multi-line string's quotes, if any
        depth = 0  # brackets open in a multi-line array value
        # tomllib counts lines by "\n" alone; str.splitlines() would also split on \x0c, \u2028…
        for lineno, line in enumerate(text.split("\n"), start=1):
            if delim is not None or depth > 0:
                delim, depth = _scan_value(line, delim, depth)
                continue
            if header := _HEADER_RE.match(line):
                parts = _split_key(header.group(2))
                if header.group(1) == "[[":
                    parent = resolve(parts[:-1])
                    array = (*parent, parts[-1])
                    arrays[array] = arrays.get(array, -1) + 1
                    table = (*array, arrays[array])
                else:
                    table = resolve(parts)
                self._lines.setdefault(table, lineno)
                continue
            if keyval := _KEYVAL_RE.match(line):
                self._lines.setdefault((*table, *_split_key(keyval.group(1))), lineno)
                delim, depth = _scan_value(keyval.group(2), None, 0)

    def line(self, path: KeyPath) -> int:
        """The line of ``path``, else of the nearest enclosing table or key, else 1."""
        for end in range(len(path), 0, -1):
            found = self._lines.get(path[:end])
            if found is not None:
                return found
        return 1


# --------------------------------------------------------------------------- showing


def field_name(path: KeyPath, whole: str = "file") -> str:
    """``path`` as issues name it (``equipment[7].kind``); ``whole`` when it is empty."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if re.fullmatch(_BARE_KEY, part) else json.dumps(part, ensure_ascii=False)
            out += f".{name}" if out else name
    return out or whole


def type_name(value: object) -> str:
    """The TOML name of ``value``'s type (``integer``, ``table``…)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if isinstance(value, datetime | date | time):
        return "date/time"
    return type(value).__name__


def shown(value: object) -> str:
    """``value`` as it was written in TOML, shortened."""
    try:
        text = toml_value(value)
    except ConfigError:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- writing

_ESCAPES: Final = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """``key`` as a TOML key: bare when it can be, quoted otherwise."""
    return key if re.fullmatch(_BARE_KEY, key) else _toml_string(key)


def _toml_float(value: float, decimals: int | None) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    text = repr(value)
    return text if any(c in text for c in ".eE") else text + ".0"


def toml_value(value: Any, decimals: int | None = None) -> str:
    """``value`` as a TOML value (inline tables and arrays); floats with ``decimals`` when
    given, exactly otherwise. :class:`ConfigError` for what TOML cannot hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _toml_float(value, decimals)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{toml_key(str(k))} = {toml_value(v, decimals)}" for k, v in value.items()
        )
        return "{" + items + "}" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v, decimals) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} value {value!r} as TOML")


# --------------------------------------------------------------------------- checking


class Checker:
    """One validation pass over a parsed document, collecting its issues by line.

    A file's parser subclasses it: its checks report each problem with
    :meth:`_issue` (``len(self._issues)`` tells a part of the document whether
    it added any) and the pass ends with :meth:`_raise_issues`.
    """

    #: How an issue names the document as a whole (an empty path).
    WHOLE: ClassVar[str] = "file"

    def __init__(self, text: str, source: str, doc: dict[str, Any]) -> None:
        self._source = source
        self._doc = doc
        self._where = Locator(text)
        self._issues: list[tuple[int, int, str]] = []

    def issue_lines(self) -> list[str]:
        """The issues so far, sorted by line (then in the order they were reported)."""
        return [text for _, _, text in sorted(self._issues)]

    def _raise_issues(self, error: type[DataFileError] = DataFileError) -> None:
        """Raise ``error`` with every issue, if there is any."""
        if self._issues:
            raise error(self.issue_lines())

    def _issue(self, path: KeyPath, message: str, *, at: KeyPath | None = None) -> None:
        """Report ``message`` about the value at ``path``, at the line of ``at`` if given."""
        line = self._where.line(path if at is None else at)
        text = f"{self._source}:{line}: {field_name(path, self.WHOLE)}: {message}"
        self._issues.append((line, len(self._issues), text))

    def _keys(self, table: Mapping[str, Any], path: KeyPath, known: Sequence[str]) -> None:
        """Report each key of ``table`` not among ``known``, with the nearest as a hint."""
        for key in table:
            if key in known:
                continue
            guess = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            self._issue((*path, key), f"unknown key {key!r} ({hint}expected one of "
                                      f"{', '.join(known)})")

    def _table(self, value: object, path: KeyPath,
               what: str = "a table") -> dict[str, Any] | None:
        """``value`` if it is a table; else None, after reporting that ``what`` was expected."""
        if isinstance(value, dict):
            return value
        self._issue(path, f"expected {what}, got {type_name(value)} {shown(value)}")
        return None

    def _name(self, table: Mapping[str, Any], path: KeyPath, key: str) -> str:
        """``table[key]`` if it is a name (:data:`NAME_PATTERN`); else "" after reporting."""
        value = table.get(key)
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            self._issue((*path, key), f"expected a name matching {NAME_PATTERN.pattern}, got "
                                      f"{shown(value)}")
            return ""
        return value
