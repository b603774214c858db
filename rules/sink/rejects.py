"""Which lines of a batch did InfluxDB reject?  Pure reading of its error messages.

InfluxDB answers a batch with problems by HTTP 400 (1.x; 2.x also 422) and a
JSON body ``{"error": "..."}`` (1.x) or ``{"code": ..., "message": "..."}`` (2.x).
The messages we understand:

* ``partial write: field type conflict: input field "pm10" on measurement
  "telemetry" is type string, already exists as type float dropped=1`` --
  the good lines were written; the dropped ones are the lines of that
  measurement whose field has the named input type.  InfluxDB names only the
  first conflict; if the lines we can match do not add up to ``dropped=N``
  the caller falls back to bisection.
* ``unable to parse '<line>': <reason>`` (possibly several, one per line,
  possibly after ``partial write:``) -- the line is quoted verbatim.  With
  ``partial write`` the rest was written; without it, the whole batch was
  refused and the rest must be sent again.

Anything else: the caller bisects the batch (send halves; a one-line batch
that is still refused is the culprit).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .lineprotocol import LineProtocolError, field_type, parse_line

_CONFLICT = re.compile(
    r'field type conflict: input field \\?"(?P<field>(?:[^"\\]|\\.)*)\\?" on measurement '
    r'\\?"(?P<meas>(?:[^"\\]|\\.)*)\\?" is type (?P<type>\w+), already exists as type \w+'
)
_DROPPED = re.compile(r"dropped=(\d+)")
_UNABLE = re.compile(r"unable to parse '(?P<line>.*?)': ", re.S)


def error_message(body: bytes | str) -> str:
    """The human message from an InfluxDB error response body."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return text.strip()


@dataclass
class Verdict:
    """What a 400 means for the batch.

    ``rejected``: indices of lines that will never be accepted (dead letters).
    ``resend``: indices of lines that were not written and should be sent again.
    ``understood``: False when the message could not be matched to lines
    (bisect instead).
    """

    understood: bool
    rejected: list[int] = field(default_factory=list)
    resend: list[int] = field(default_factory=list)


def _unescape_quoted(text: str) -> str:
    return text.replace('\\"', '"').replace("\\\\", "\\")


def analyse(lines: list[str], message: str) -> Verdict:
    partial = "partial write" in message
    dropped_m = _DROPPED.search(message)
    dropped = int(dropped_m.group(1)) if dropped_m else None

    unable = [m.group("line") for m in _UNABLE.finditer(message)]
    if unable:
        wanted = set(unable)
        rejected = [i for i, line in enumerate(lines) if line in wanted]
        if len({lines[i] for i in rejected}) != len(wanted):
            return Verdict(False)
        if partial:
            if dropped:  # something besides the parse errors was dropped: find it by bisection
                return Verdict(False)
            return Verdict(True, rejected, [])
        rest = [i for i in range(len(lines)) if i not in set(rejected)]
        return Verdict(True, rejected, rest)

    conflict = _CONFLICT.search(message)
    if conflict and partial:
        fname = _unescape_quoted(conflict.group("field"))
        meas = _unescape_quoted(conflict.group("meas"))
        ftype = conflict.group("type")
        rejected = []
        for i, line in enumerate(lines):
            try:
                point = parse_line(line)
            except LineProtocolError:
                continue
            if point.measurement != meas or fname not in point.fields:
                continue
            if field_type(point.fields[fname]) == ftype:
                rejected.append(i)
        if rejected and (dropped is None or dropped == len(rejected)):
            return Verdict(True, rejected, [])
    return Verdict(False)
