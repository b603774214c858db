"""HJ 212-2017 packets for environmental monitoring platforms: pure encode/decode.

Chinese environmental platforms receive construction-site dust data as HJ 212
packets over TCP. This module is the pure core: CRC, packet framing, the data
segment, CP (command parameter) builders, packet splitting, a stream parser that
resyncs after garbage. Per-period aggregation is in
:mod:`gateway.uplinks.hj212_periods`, the station logic (what to send, how to
answer the platform) in :mod:`gateway.uplinks.hj212_station`, sockets in
:mod:`gateway.uplinks.hj212_link`.

Packet layout (all ASCII)::

    ##  LLLL  QN=...;ST=..;CN=....;PW=......;MN=...;Flag=n;[PNUM=n;PNO=n;]CP=&&...&&  CCCC  \\r\\n
    hdr len   data segment (LLLL characters, 0..1024 when we build)                  CRC   tail

- ``LLLL``: the data segment's length, 4 decimal digits.
- ``CCCC``: CRC over the data segment, ``%04X``. Not the Modbus CRC: per byte
  ``crc = (crc >> 8) ^ byte`` then 8 rounds of ``lsb = crc & 1; crc >>= 1;
  if lsb: crc ^= 0xA001``, starting at 0xFFFF. The standard's own example is
  ``##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;
  Flag=5;CP=&&RtdInterval=30&&1C80\\r\\n`` (tested).
- ``QN``: request number, local time ``YYYYMMDDhhmmssSSS``; replies echo it.
- ``Flag``: bits 7..2 protocol version (``000001`` = 2017), bit 1 ``D`` (split
  packet: ``PNUM`` parts, this is part ``PNO``), bit 0 ``A`` (reply wanted).
  So 2017 uploads are ``Flag=4`` (no reply) or ``Flag=5`` (reply wanted).
  HJ 212-2025 replaces 2017 from 2026-01-01; its version bits are not known to
  us, so the version is a parameter.
- ``CP``: ``DataTime=YYYYMMDDhhmmss;`` then groups separated by ``;``, fields in
  a group by ``,``: real-time ``a34002-Rtd=95.0,a34002-Flag=N`` (CN 2011);
  minute/hour/day ``a34002-Min=..,a34002-Avg=..,a34002-Max=..,a34002-Flag=N``
  (CN 2051/2061/2031).

Older platforms send packets without ``QN`` or ``Flag``; the parser accepts them.
Header keys it does not know (``Flage`` typos exist in the wild) are ignored.
Decoding untrusted bytes returns a :class:`Packet` or raises :class:`Hj212Error`,
never anything else.

Data flags: N normal, S manually set (both valid); F stopped, M maintenance,
D fault, C calibrating, T over limit, B communication error (invalid). Periodic
averages use valid data only; the period's flag is the worst flag seen.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from drivers.modbus_pdu import CRC_A001_TABLE

# ------------------------------------------------------------------ constants

HEADER = b"##"
TAIL = b"\r\n"
MAX_SEGMENT = 1024
"""Longest data segment we build (the 2017 limit); longer data is split."""
MAX_PARSE_SEGMENT = 9999
"""Longest data segment the parser accepts (what 4 length digits can say)."""

FLAG_SPLIT = 0b10  # D
FLAG_REPLY = 0b01  # A

# CN (command numbers) we use
CN_TIMEOUT_RETRIES = "1000"
CN_GET_TIME = "1011"
CN_SET_TIME = "1012"
CN_TIME_CALIBRATION = "1013"
CN_GET_RTD_INTERVAL = "1061"
CN_SET_RTD_INTERVAL = "1062"
CN_GET_MIN_INTERVAL = "1063"
CN_SET_MIN_INTERVAL = "1064"
CN_NEW_PASSWORD = "1072"
CN_REALTIME = "2011"
CN_STOP_REALTIME = "2012"
CN_DAILY = "2031"
CN_MINUTE = "2051"
CN_HOURLY = "2061"
CN_QN_REPLY = "9011"
CN_EXE_REPLY = "9012"
CN_NOTICE_REPLY = "9013"
CN_DATA_REPLY = "9014"
# answers, never requests: nobody answers them back
REPLY_CNS = frozenset((CN_QN_REPLY, CN_EXE_REPLY, CN_NOTICE_REPLY, CN_DATA_REPLY))

ST_SYSTEM = "91"
ST_DUST = "39"

# QnRtn (answer to a request) and ExeRtn (execution result)
QN_READY = 1
QN_REFUSED = 2
QN_BAD_PW = 3
QN_BAD_MN = 4
QN_BAD_ST = 5
QN_BAD_QN = 7
QN_BAD_CN = 8
QN_BAD_CRC = 9
EXE_OK = 1
EXE_FAILED = 2
EXE_CONDITION = 3

DEFAULT_FACTORS: dict[str, str] = {
    "pm10": "a34002",
    "pm25": "a34004",
    "tsp": "a34001",
    "temp": "a01001",
    "rh": "a01002",
    "pressure": "a01006",
    "wind_speed": "a01007",
    "wind_dir": "a01008",
    "noise": "LA",
}
"""Our metric names to HJ 212-2017 factor codes."""

LEGACY_FACTORS: dict[str, str] = {**DEFAULT_FACTORS, "pm25": "PM25", "tsp": "TSP", "noise": "NOIS"}
"""The names some older platforms expect instead."""


FACTOR_CODE = re.compile(r"^[A-Za-z0-9]{1,16}$")
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]*$")
_DIGITS = re.compile(r"^[0-9]+$")
_HEX4 = re.compile(rb"^[0-9A-Fa-f]{4}$")


class Hj212Error(ValueError):
    """Bytes that are not a valid HJ 212 packet, or data we cannot encode."""


class CrcMismatch(Hj212Error):
    """A well-framed packet whose CRC does not match its data segment."""


# ------------------------------------------------------------------ CRC


def crc16(data: bytes | bytearray | memoryview) -> int:
    """The HJ 212 CRC of ``data`` (see the module docstring)."""
    crc = 0xFFFF
    # after ``crc = (crc >> 8) ^ byte`` the register is < 256, so the 8 shift
    # rounds are a table lookup: the same table as the Modbus CRC's
    table = CRC_A001_TABLE
    for byte in bytes(data):
        crc = table[(crc >> 8) ^ byte]
    return crc


# ------------------------------------------------------------------ packets


@dataclass(frozen=True, slots=True)
class Packet:
    """One HJ 212 packet. ``cp`` is the raw text between ``CP=&&`` and ``&&``.

    ``None`` means the key is absent (legacy packets); the builder leaves it out.
    """

    cn: str
    cp: str = ""
    qn: str | None = None
    st: str | None = None
    pw: str | None = None
    mn: str | None = None
    flag: int | None = None
    pnum: int | None = None
    pno: int | None = None

    @property
    def wants_reply(self) -> bool:
        return self.flag is not None and bool(self.flag & FLAG_REPLY)

    @property
    def is_split(self) -> bool:
        return self.flag is not None and bool(self.flag & FLAG_SPLIT)

    @property
    def version_bits(self) -> int | None:
        return None if self.flag is None else self.flag >> 2

    def cp_fields(self) -> dict[str, str]:
        return cp_fields(self.cp)


def make_flag(version_bits: int, *, reply: bool, split: bool = False) -> int:
    if not 0 <= version_bits <= 63:
        raise Hj212Error(f"version bits must be 0..63, got {version_bits}")
    return version_bits << 2 | (FLAG_SPLIT if split else 0) | (FLAG_REPLY if reply else 0)


def _check_header_value(key: str, value: str) -> str:
    if not _HEADER_VALUE.match(value) or any(c in value for c in ";=&"):
        raise Hj212Error(f"{key}={value!r}: printable ASCII without ';', '=' or '&' expected")
    return value


def encode_segment(p: Packet) -> str:
    """The data segment (what the length counts and the CRC covers)."""
    if not re.match(r"^[0-9]{4}$", p.cn):
        raise Hj212Error(f"CN must be 4 digits, got {p.cn!r}")
    parts = []
    for key, value in (("QN", p.qn), ("ST", p.st), ("CN", p.cn), ("PW", p.pw), ("MN", p.mn)):
        if value is not None:
            parts.append(f"{key}={_check_header_value(key, value)};")
    for key, num in (("Flag", p.flag), ("PNUM", p.pnum), ("PNO", p.pno)):
        if num is not None:
            if num < 0:
                raise Hj212Error(f"{key} must not be negative, got {num}")
            parts.append(f"{key}={num};")
    if not _HEADER_VALUE.match(p.cp):
        raise Hj212Error("CP must be printable ASCII")
    parts.append(f"CP=&&{p.cp}&&")
    return "".join(parts)


def encode_packet(p: Packet, limit: int = MAX_SEGMENT) -> bytes:
    """``##`` + length + segment + CRC + CRLF; raise Hj212Error past ``limit``."""
    segment = encode_segment(p).encode("ascii")
    if len(segment) > limit:
        raise Hj212Error(f"data segment of {len(segment)} characters exceeds {limit}")
    return b"##%04d%s%04X\r\n" % (len(segment), segment, crc16(segment))


def decode_packet(data: bytes | bytearray) -> Packet:
    """Decode exactly one packet (with its CRLF); raise Hj212Error only."""
    data = bytes(data)
    if len(data) < 12 or not data.startswith(HEADER):
        raise Hj212Error("a packet starts with '##' and is at least 12 bytes")
    length = _length(data[2:6])
    if len(data) != length + 12:
        raise Hj212Error(f"length field says {length}, packet has {len(data) - 12}")
    return _decode_framed(data, length)


def _length(digits: bytes) -> int:
    if len(digits) != 4 or not digits.isdigit():
        raise Hj212Error(f"length field {digits!r} is not 4 decimal digits")
    return int(digits)


def _decode_framed(data: bytes, length: int) -> Packet:
    segment = data[6 : 6 + length]
    crc_text = data[6 + length : 10 + length]
    if data[10 + length : 12 + length] != TAIL:
        raise Hj212Error("packet does not end with CRLF after the CRC")
    if not _HEX4.match(crc_text):
        raise Hj212Error(f"CRC field {crc_text!r} is not 4 hex digits")
    want = crc16(segment)
    if int(crc_text, 16) != want:
        raise CrcMismatch(f"CRC {crc_text.decode()} does not match {want:04X}")
    try:
        text = segment.decode("ascii")
    except UnicodeDecodeError:
        raise Hj212Error("data segment is not ASCII") from None
    return parse_segment(text)


_HEADER_KEYS = {"QN": "qn", "ST": "st", "CN": "cn", "PW": "pw", "MN": "mn"}
_INT_KEYS = {"Flag": "flag", "PNUM": "pnum", "PNO": "pno"}


def parse_segment(text: str) -> Packet:
    """Parse a data segment (``QN=...;...;CP=&&...&&``); raise Hj212Error only."""
    if not _HEADER_VALUE.match(text):
        raise Hj212Error("data segment must be printable ASCII")
    fields: dict[str, str | int] = {}
    pos = 0
    while not text.startswith("CP=&&", pos):
        semi = text.find(";", pos)
        if semi < 0:
            raise Hj212Error("data segment has no 'CP=&&'")
        item = text[pos:semi]
        key, eq, value = item.partition("=")
        pos = semi + 1
        if not eq:
            raise Hj212Error(f"header field {item!r} has no '='")
        name = _HEADER_KEYS.get(key) or _INT_KEYS.get(key)
        if name is None:
            continue  # unknown key: tolerated
        if name in fields:
            raise Hj212Error(f"header key {key} appears twice")
        if key in _INT_KEYS:
            if not _DIGITS.match(value) or len(value) > 9:
                raise Hj212Error(f"{key}={value!r} is not a number")
            fields[name] = int(value)
        else:
            fields[name] = value
    rest = text[pos + 5 :]
    if not rest.endswith("&&"):
        raise Hj212Error("data segment must end with '&&'")
    cn = fields.get("cn")
    if not isinstance(cn, str) or not re.match(r"^[0-9]{4}$", cn):
        raise Hj212Error(f"CN missing or not 4 digits: {cn!r}")
    return Packet(cp=rest[:-2], **fields)  # type: ignore[arg-type]


_CANDIDATE = re.compile(rb"##([0-9]{4})")
_NON_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
CRC_CHECKS_PER_END = 2
"""Candidates checked (CRC) for one CRLF: each costs the length it claims, so the
bound keeps a stream of decoys linear (a real packet behind more decoys than this
in the same line is lost, and counted)."""


class StreamParser:
    """Cut packets out of a TCP byte stream; skip garbage; linear in its input.

    A packet is ``##`` + 4 digits ``L`` + ``L`` printable characters + 4 hex
    digits + CRLF, so every candidate ``##dddd`` names the one place its CRLF
    must be. The parser keeps candidates in order and settles each one once:
    a non-printable byte before that place kills it, the bytes there decide
    it; no candidate is ever rescanned, and the bytes before the oldest live
    candidate are dropped (at most ``max_segment + 12`` bytes are kept). A
    valid packet takes its bytes (a ``##`` inside it starts nothing); a bad
    candidate takes none, so packets after or inside it are still found. Each
    ``##`` in discarded bytes counts as a bad packet; ``errors`` keeps the
    last few reasons. Work per byte is bounded: one regex pass to find
    candidates, one to find non-printable bytes, and at most
    :data:`CRC_CHECKS_PER_END` CRC checks per CRLF.
    """

    def __init__(self, max_segment: int = MAX_PARSE_SEGMENT) -> None:
        self._buf = bytearray()
        self._max = max_segment
        self._base = 0  # stream offset of _buf[0]
        self._scan = 0  # stream offset up to which candidates were looked for
        self._pending: deque[tuple[int, int]] = deque()  # (start, offset of its CR), in order
        self._np_from = 0  # _NON_PRINTABLE searched from here ...
        self._np_to = 0  # ... up to here,
        self._np_at: int | None = None  # with this result (stream offset)
        self._checked_end = -1  # the CRLF offset CRC checks were last spent on
        self._checks = 0  # and how many
        self.garbage_bytes = 0
        self.bad_packets = 0
        self.work = 0  # bytes examined (searches, CRCs): linear in the input, tests hold it
        self.errors: list[str] = []  # the last few reasons, for logs
        # well-framed packets with a wrong CRC whose header could still be read:
        # a request among them deserves QnRtn=9 (the caller takes them out)
        self.crc_failed: list[Packet] = []

    def feed(self, data: bytes | bytearray) -> list[Packet]:
        self._buf += data
        self._discover()
        out: list[Packet] = []
        end = self._base + len(self._buf)
        while self._pending:
            start, cr = self._pending[0]
            bad = self._non_printable(start + 6, end)
            if bad is not None and bad < cr:
                self._reject("non-printable byte inside the packet")
                continue
            if end < cr + 2:
                break  # its CRLF has not arrived yet
            verdict = self._settle(start, cr)
            if isinstance(verdict, Packet):
                out.append(verdict)
                self._drop(start - self._base, garbage=True)
                self._drop(cr + 2 - start, garbage=False)
                while self._pending and self._pending[0][0] < cr + 2:
                    self._pending.popleft()  # a "##" inside a good packet starts nothing
            else:
                self._reject(verdict)
        keep_from = self._pending[0][0] if self._pending else self._scan
        self._drop(keep_from - self._base, garbage=True)
        return out

    def _discover(self) -> None:
        """Queue the candidates ``##dddd`` in bytes not looked at yet.

        A candidate whose CRLF offset has arrived with no CRLF there is refused at
        once (the common case in garbage); the others wait in order."""
        buf, base = self._buf, self._base
        end = base + len(buf)
        scan = self._scan
        self.work += end - scan
        no_crlf = too_long = 0
        for m in _CANDIDATE.finditer(buf, scan - base):
            start = base + m.start()
            length = int(m.group(1))
            scan = start + 6
            if length > self._max:
                too_long += 1
                continue
            cr = start + 6 + length + 4
            if cr + 2 <= end and buf[cr - base : cr - base + 2] != TAIL:
                no_crlf += 1
                continue
            self._pending.append((start, cr))
        self._scan = max(scan, end - 5)  # a header cut at the end is looked at again
        if too_long:
            self._note(f"{too_long} length field(s) over {self._max}")
        if no_crlf:
            self._note(f"{no_crlf} candidate(s) with no CRLF where their length says")

    def _non_printable(self, frm: int, end: int) -> int | None:
        """Stream offset of the first non-printable byte at or after ``frm``, if any.

        Queries come with ``frm`` non-decreasing, so each byte is searched once.
        """
        at = self._np_at
        if at is not None and self._np_from <= frm <= at:
            return at
        if at is None and self._np_from <= frm <= self._np_to:
            search, known = self._np_to, self._np_from  # printable up to _np_to
        else:
            search, known = frm, frm
        m = _NON_PRINTABLE.search(self._buf, max(search - self._base, 0))
        self._np_at = None if m is None else self._base + m.start()
        self._np_from, self._np_to = known, end
        self.work += (end if self._np_at is None else self._np_at + 1) - search
        return self._np_at

    def _settle(self, start: int, cr: int) -> Packet | str:
        """Decide the candidate whose CRLF should be at ``cr`` (all its bytes are here)."""
        buf, lo = self._buf, start - self._base
        if buf[cr - self._base : cr - self._base + 2] != TAIL:
            return "no CRLF where the length field says the packet ends"
        if cr != self._checked_end:
            self._checked_end, self._checks = cr, 0
        self._checks += 1
        if self._checks > CRC_CHECKS_PER_END:
            return f"more than {CRC_CHECKS_PER_END} candidates end at the same CRLF"
        framed = bytes(buf[lo : lo + cr + 2 - start])
        self.work += len(framed)
        length = cr - start - 10
        try:
            return _decode_framed(framed, length)
        except CrcMismatch as exc:
            with contextlib.suppress(Hj212Error):
                segment = framed[6 : 6 + length].decode("ascii")
                self.crc_failed = [*self.crc_failed[-15:], parse_segment(segment)]
            return str(exc)
        except Hj212Error as exc:
            return str(exc)

    def _reject(self, reason: str) -> None:
        self._pending.popleft()
        self._note(reason)

    def _drop(self, n: int, *, garbage: bool) -> None:
        if n <= 0:
            return
        if garbage:
            self.garbage_bytes += n
            self.bad_packets += self._buf.count(HEADER, 0, n)
        del self._buf[:n]
        self._base += n

    def _note(self, reason: str) -> None:
        # a reason may quote the peer's bytes (a 10 kB header field): logs get 200
        self.errors.append(reason if len(reason) <= 200 else f"{reason[:140]}...{reason[-57:]}")
        if len(self.errors) > 5:
            del self.errors[0]


# ------------------------------------------------------------------ CP


MAX_NUMBER_DIGITS = 12
"""Longest numeric field we read from a platform (intervals, counts, timeouts)."""


def parse_uint(text: str, max_digits: int = MAX_NUMBER_DIGITS) -> int | None:
    """A field of ASCII digits as an int, or None (also past ``max_digits`` digits:
    int() of thousands of digits raises ValueError, and costs quadratic time)."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def cp_pairs(cp: str) -> list[tuple[str, str]]:
    """``k=v`` fields of a CP in order (groups by ``;``, fields by ``,``)."""
    out: list[tuple[str, str]] = []
    if not cp:
        return out
    for group in cp.split(";"):
        if not group:
            continue
        for item in group.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise Hj212Error(f"CP field {item!r} is not key=value")
            out.append((key, value))
    return out


def cp_fields(cp: str) -> dict[str, str]:
    """CP fields as a dict; raise Hj212Error on a malformed or repeated key."""
    out: dict[str, str] = {}
    for key, value in cp_pairs(cp):
        if key in out:
            raise Hj212Error(f"CP key {key} appears twice")
        out[key] = value
    return out


def join_cp(groups: Iterable[Mapping[str, str]]) -> str:
    """Groups of fields to CP text (inverse of :func:`cp_groups`)."""
    parts = []
    for group in groups:
        items = []
        for key, value in group.items():
            if not key or any(c in key for c in ";,=&") or any(c in value for c in ";,&"):
                raise Hj212Error(f"CP field {key}={value!r} has a separator in it")
            items.append(f"{key}={value}")
        parts.append(",".join(items))
    text = ";".join(parts)
    if not _HEADER_VALUE.match(text):
        raise Hj212Error("CP must be printable ASCII")
    return text


def cp_groups(cp: str) -> list[dict[str, str]]:
    """CP text to groups of fields (a group per ``;``)."""
    groups = []
    for group in cp.split(";") if cp else []:
        fields: dict[str, str] = {}
        for key, value in cp_pairs(group):
            if key in fields:
                raise Hj212Error(f"CP key {key} appears twice in a group")
            fields[key] = value
        groups.append(fields)
    return groups


@dataclass(frozen=True, slots=True)
class Sample:
    """A real-time value and its data flag."""

    value: float
    flag: str = "N"


@dataclass(frozen=True, slots=True)
class Stats:
    """Min/avg/max of one factor over a period, and the period's worst flag."""

    min: float
    avg: float
    max: float
    flag: str
    count: int


def format_value(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text


def local_time(ts: float, utc_offset_s: float) -> datetime:
    """Seconds since the epoch to naive local time at a fixed UTC offset."""
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None) + timedelta(seconds=utc_offset_s)


def data_time(ts: float, utc_offset_s: float) -> str:
    """``YYYYMMDDhhmmss`` in the platform's local time."""
    return local_time(math.floor(ts), utc_offset_s).strftime("%Y%m%d%H%M%S")


def qn_text(ts_ms: int, utc_offset_s: float) -> str:
    """``QN=YYYYMMDDhhmmssSSS`` for a time in milliseconds."""
    seconds, ms = divmod(ts_ms, 1000)
    return local_time(seconds, utc_offset_s).strftime("%Y%m%d%H%M%S") + f"{ms:03d}"


def parse_data_time(text: str, utc_offset_s: float) -> float:
    """``YYYYMMDDhhmmss`` (local) to seconds since the epoch; Hj212Error if bad."""
    if not re.match(r"^[0-9]{14}$", text):
        raise Hj212Error(f"time {text!r} is not YYYYMMDDhhmmss")
    try:
        local = datetime.strptime(text, "%Y%m%d%H%M%S")
    except ValueError:
        raise Hj212Error(f"time {text!r} is not a valid date") from None
    return (local - timedelta(seconds=utc_offset_s)).replace(tzinfo=UTC).timestamp()


def realtime_groups(
    when: str, samples: Mapping[str, Sample], decimals: int = 1
) -> list[dict[str, str]]:
    """CP groups for CN 2011: ``DataTime`` then ``code-Rtd,code-Flag`` per factor."""
    groups = [{"DataTime": when}]
    for code, s in samples.items():
        groups.append({f"{code}-Rtd": format_value(s.value, decimals), f"{code}-Flag": s.flag})
    return groups


def aggregate_groups(
    when: str, stats: Mapping[str, Stats], decimals: int = 1
) -> list[dict[str, str]]:
    """CP groups for CN 2051/2061/2031: ``code-Min,-Avg,-Max,-Flag`` per factor."""
    groups = [{"DataTime": when}]
    for code, s in stats.items():
        groups.append(
            {
                f"{code}-Min": format_value(s.min, decimals),
                f"{code}-Avg": format_value(s.avg, decimals),
                f"{code}-Max": format_value(s.max, decimals),
                f"{code}-Flag": s.flag,
            }
        )
    return groups


def split_upload(
    template: Packet, groups: list[dict[str, str]], limit: int = MAX_SEGMENT
) -> list[Packet]:
    """Packets carrying ``groups`` (the first is ``DataTime``), split past ``limit``.

    A split repeats the first group in every part, sets the Flag D bit and
    numbers the parts (``PNUM`` total, ``PNO`` 1-based), all with the same QN.
    """
    whole = replace(template, cp=join_cp(groups), pnum=None, pno=None)
    if len(encode_segment(whole)) <= limit:
        return [whole]
    head, body = groups[:1], groups[1:]
    flag = (template.flag or 0) | FLAG_SPLIT
    for digits in range(1, 5):
        big = 10**digits - 1
        probe = replace(template, flag=flag, pnum=big, pno=big, cp="")
        room = limit - len(encode_segment(probe))
        parts: list[list[dict[str, str]]] = []
        current: list[dict[str, str]] = []
        for group in body:
            trial = [*current, group]
            if len(join_cp(head + trial)) <= room:
                current = trial
                continue
            if not current:
                raise Hj212Error(f"one CP group does not fit in {limit} characters")
            parts.append(current)
            current = [group]
            if len(join_cp(head + current)) > room:
                raise Hj212Error(f"one CP group does not fit in {limit} characters")
        if current:
            parts.append(current)
        if len(parts) <= big:
            n = len(parts)
            return [
                replace(template, flag=flag, pnum=n, pno=i + 1, cp=join_cp(head + part))
                for i, part in enumerate(parts)
            ]
    raise Hj212Error("too many parts")


# ------------------------------------------------------------------ replies


def reply_to(
    request: Packet, cn: str, cp: str, *, st: str, pw: str | None, mn: str | None, flag: int
) -> Packet:
    """A device's answer to a platform request: the request's QN, our ST/PW/MN."""
    return Packet(cn=cn, cp=cp, qn=request.qn, st=st, pw=pw, mn=mn, flag=flag)
