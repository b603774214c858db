"""InfluxDB line protocol: encode points, and parse them back (tests, dead letters).

One point is one physical line::

    measurement[,tag_key=tag_value...] field_key=field_value[,...] [timestamp_ms]

Escaping (InfluxDB 1.x/2.x tokeniser: a backslash always takes the next byte):

=================  ==============================================================
measurement        ``\\`` ``,`` and space escaped with a backslash; a leading ``#``
                   is refused (the line would be a comment, and no escape exists)
tag key/value      ``\\`` ``,`` ``=`` and space escaped
field key          ``\\`` ``,`` ``=`` and space escaped
string field       wrapped in ``"``; ``\\`` and ``"`` escaped
=================  ==============================================================

Two choices go beyond the letter of the protocol, both so that one point is
always exactly one physical line (the spool, the dead-letter file and the
bisection of rejected batches split on ``\\n``):

* a newline or carriage return anywhere is written as ``\\n`` / ``\\r``;
* a backslash is always doubled.  InfluxDB 1.x keeps doubled backslashes in
  identifiers as two characters (it only unescapes ``\\,``, ``\\ ``, ``\\=``),
  which is harmless: dustgate's ids are ``[a-z0-9_-]`` and never contain one.

Values: ``int`` -> ``12i`` (int64 range), ``float`` -> shortest round-trip
``repr``, ``bool`` -> ``true``/``false``, ``str`` -> quoted string.  NaN and
±inf cannot be stored by InfluxDB: such fields are dropped, and a point left
with no field at all is not emitted (``encode_line`` returns ``None``).
Empty tag values are dropped (InfluxDB treats an absent tag and an empty one
alike and rejects the empty form).  Timestamps are integer milliseconds (the
sink writes with ``precision=ms``); tags are written sorted by key, which is
the order InfluxDB prefers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

FieldValue = int | float | bool | str

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class LineProtocolError(ValueError):
    """A point that cannot be written, or a line that does not parse."""


# ------------------------------------------------------------------ encoding

_MEAS_SPECIAL = re.compile(r"[\\, \n\r]")
_KEY_SPECIAL = re.compile(r"[\\,= \n\r]")
_STR_SPECIAL = re.compile(r'[\\"\n\r]')

_MEAS_TABLE = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ ", "\n": "\\n", "\r": "\\r"})
_KEY_TABLE = str.maketrans(
    {"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\r": "\\r"}
)
_STR_TABLE = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def escape_measurement(name: str) -> str:
    return name.translate(_MEAS_TABLE) if _MEAS_SPECIAL.search(name) else name


def escape_key(name: str) -> str:
    """Tag keys, tag values and field keys."""
    return name.translate(_KEY_TABLE) if _KEY_SPECIAL.search(name) else name


def escape_string(value: str) -> str:
    """The inside of a string field (without the surrounding quotes)."""
    return value.translate(_STR_TABLE) if _STR_SPECIAL.search(value) else value


def format_value(value: FieldValue) -> str | None:
    """One field value in line protocol, or ``None`` if InfluxDB cannot store it."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise LineProtocolError(f"integer {value} is outside int64")
        return f"{value}i"
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return None
    if isinstance(value, str):
        return f'"{escape_string(value)}"'
    raise LineProtocolError(f"unsupported field value type {type(value).__name__}")


def encode_line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    ts_ms: int | None = None,
) -> str | None:
    """One point as one line (no trailing newline); ``None`` if no field is storable."""
    if not measurement:
        raise LineProtocolError("measurement name is empty")
    if measurement.startswith("#"):  # no escape exists: the line would be a comment
        raise LineProtocolError(f"measurement name {measurement!r} starts with '#'")
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        tag_value = tags[key]
        if not key:
            raise LineProtocolError("tag key is empty")
        if tag_value == "":
            continue
        parts.append(f",{escape_key(key)}={escape_key(tag_value)}")
    field_parts = []
    for key, field_value in fields.items():
        if not key:
            raise LineProtocolError("field key is empty")
        text = format_value(field_value)
        if text is not None:
            field_parts.append(f"{escape_key(key)}={text}")
    if not field_parts:
        return None
    parts.append(" ")
    parts.append(",".join(field_parts))
    if ts_ms is not None:
        if not isinstance(ts_ms, int) or isinstance(ts_ms, bool):
            raise LineProtocolError(f"timestamp must be integer ms, got {ts_ms!r}")
        parts.append(f" {ts_ms}")
    return "".join(parts)


# ------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Point:
    measurement: str
    tags: dict[str, str] = field(default_factory=dict)
    fields: dict[str, FieldValue] = field(default_factory=dict)
    ts_ms: int | None = None


_UNESCAPE = {"n": "\n", "r": "\r"}


def _scan_ident(line: str, pos: int, stops: str) -> tuple[str, int]:
    """Read an escaped identifier up to an unescaped char in ``stops``."""
    out: list[str] = []
    n = len(line)
    while pos < n:
        c = line[pos]
        if c == "\\":
            if pos + 1 >= n:
                raise LineProtocolError("line ends in a lone backslash")
            nxt = line[pos + 1]
            out.append(_UNESCAPE.get(nxt, nxt))
            pos += 2
            continue
        if c in stops:
            break
        out.append(c)
        pos += 1
    return "".join(out), pos


def _scan_string(line: str, pos: int) -> tuple[str, int]:
    """``pos`` is just after the opening quote; returns text and position after closing."""
    out: list[str] = []
    n = len(line)
    while pos < n:
        c = line[pos]
        if c == "\\" and pos + 1 < n:
            nxt = line[pos + 1]
            out.append(_UNESCAPE.get(nxt, nxt))
            pos += 2
            continue
        if c == '"':
            return "".join(out), pos + 1
        out.append(c)
        pos += 1
    raise LineProtocolError("unterminated string field")


_TRUE = {"t", "T", "true", "True", "TRUE"}
_FALSE = {"f", "F", "false", "False", "FALSE"}


def _parse_scalar(text: str) -> FieldValue:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    try:
        if text.endswith("i"):
            return int(text[:-1])
        if text.endswith("u"):
            return int(text[:-1])
        value = float(text)
    except ValueError:
        raise LineProtocolError(f"bad field value {text!r}") from None
    if not math.isfinite(value):
        raise LineProtocolError(f"non-finite field value {text!r}")
    return value


def parse_line(line: str) -> Point:
    """Parse one line of line protocol; raise :class:`LineProtocolError` only."""
    line = line.rstrip("\n")
    if not line or line.startswith("#"):
        raise LineProtocolError("empty line or comment")
    meas, pos = _scan_ident(line, 0, ", ")
    if not meas:
        raise LineProtocolError("missing measurement")
    tags: dict[str, str] = {}
    n = len(line)
    while pos < n and line[pos] == ",":
        key, pos = _scan_ident(line, pos + 1, "=, ")
        if pos >= n or line[pos] != "=" or not key:
            raise LineProtocolError(f"bad tag near column {pos}")
        tag_value, pos = _scan_ident(line, pos + 1, ", =")
        if not tag_value:
            raise LineProtocolError(f"empty tag value for {key!r}")
        tags[key] = tag_value
    if pos >= n or line[pos] != " ":
        raise LineProtocolError("missing field set")
    pos += 1
    fields: dict[str, FieldValue] = {}
    while True:
        key, pos = _scan_ident(line, pos, "=, ")
        if pos >= n or line[pos] != "=" or not key:
            raise LineProtocolError(f"bad field near column {pos}")
        pos += 1
        if pos < n and line[pos] == '"':
            value: FieldValue
            value, pos = _scan_string(line, pos + 1)
        else:
            end = pos
            while end < n and line[end] not in ", ":
                end += 1
            value = _parse_scalar(line[pos:end])
            pos = end
        fields[key] = value
        if pos < n and line[pos] == ",":
            pos += 1
            continue
        break
    ts: int | None = None
    if pos < n:
        if line[pos] != " ":
            raise LineProtocolError(f"unexpected {line[pos]!r} at column {pos}")
        rest = line[pos + 1 :]
        try:
            ts = int(rest)
        except ValueError:
            raise LineProtocolError(f"bad timestamp {rest!r}") from None
    return Point(meas, tags, fields, ts)


def measurement_of(line: str) -> str:
    """The measurement of a line without parsing the rest (for error matching)."""
    name, _ = _scan_ident(line, 0, ", ")
    return name


def field_type(value: FieldValue) -> str:
    """InfluxDB's name for a field's type, as used in its error messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"
