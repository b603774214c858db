"""A strict HJ 212-2017 platform on 127.0.0.1, written apart from gateway.uplinks.

It frames, checks and answers packets with its own code, so the uplink is
judged by a second reading of the standard, not by itself. Every packet is
checked (length field, CRC, CRLF, mandatory header fields and their form, Flag
version bits and D/A bits against PNUM/PNO, CP layout, factor codes, data
flags, DataTime alignment, Min <= Avg <= Max); what fails is listed in
:attr:`PlatformSim.problems`, which tests assert empty. Uploads that want a
reply get 9014; a 1013 gets a 1012 with the platform's time. Tests can cut the
platform off (close every connection and stop listening) and bring it back on
the same port, and send requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

WAIT = 10.0

FACTORS_2017 = frozenset(
    {"a34001", "a34002", "a34004", "a01001", "a01002", "a01006", "a01007", "a01008", "LA"}
)
DATA_FLAGS = frozenset("NFMSDCTB")
ORDER = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")
NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def crc(data: bytes) -> int:
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            lsb = reg & 1
            reg >>= 1
            if lsb:
                reg ^= 0xA001
    return reg


def frame(segment: str) -> bytes:
    data = segment.encode()
    return b"##%04d%s%04X\r\n" % (len(data), data, crc(data))


@dataclass
class Received:
    """One packet as the platform understood it."""

    raw: bytes
    header: dict[str, str]
    cp: str
    groups: list[dict[str, str]]

    @property
    def cn(self) -> str:
        return self.header.get("CN", "")

    @property
    def data_time(self) -> str:
        return self.groups[0].get("DataTime", "") if self.groups else ""

    def values(self) -> dict[str, str]:
        return {k: v for g in self.groups for k, v in g.items()}


@dataclass
class PlatformSim:
    mn: str = "MN0001"
    pw: str = "123456"
    version_bits: int = 1
    factors: frozenset[str] = FACTORS_2017
    port: int = 0
    reply: bool = True
    skip_replies: int = 0  # stay silent for this many uploads
    clock_text: str = "20261127120000"  # what a 1012 says the time is
    received: list[Received] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _split: dict[str, list[Received]] = field(default_factory=dict)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> PlatformSim:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """Stop listening and drop every connection (a dead link, seen from the site)."""
        if self._server is not None:
            self._server.close()
            for w in self._writers:
                w.transport.abort()
            self._writers.clear()
            await self._server.wait_closed()
            self._server = None

    stop = cut

    # ------------------------------------------------------------ what arrived

    def uploads(self, cn: str) -> list[Received]:
        """Uploads of one CN in arrival order, split parts joined, one per QN.

        A packet resent with the same QN (no reply came in time) is the same
        upload to a platform; a record sent again under a new QN is not.
        """
        out: list[Received] = []
        seen: set[str] = set()
        for r in self.received:
            qn = r.header.get("QN", "")
            if r.cn != cn or qn in seen:
                continue
            if "PNO" in r.header:
                parts = self._split[qn]
                if len(parts) < int(r.header["PNUM"]):
                    continue  # not complete yet
                r = self._joined(sorted(parts, key=lambda p: int(p.header["PNO"])))
            seen.add(qn)
            out.append(r)
        return out

    def record_times(self, cn: str) -> list[str]:
        return [r.data_time for r in self.uploads(cn)]

    def duplicates(self, cn: str) -> list[str]:
        return [t for t, n in Counter(self.record_times(cn)).items() if n > 1]

    async def wait_for(self, what: str, cond: object) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not cond():  # type: ignore[operator]
            left = deadline - loop.time()
            assert left > 0, f"platform: {what} not seen in time; problems: {self.problems}"
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.05)):
                    await self._arrived.wait()

    def _joined(self, parts: list[Received]) -> Received:
        groups = parts[0].groups[:1] + [g for p in parts for g in p.groups[1:]]
        return Received(b"".join(p.raw for p in parts), parts[0].header, "", groups)

    # ------------------------------------------------------------ requests

    def send(self, data: bytes) -> None:
        self._writers[-1].write(data)

    def request(self, qn: str, cn: str, cp: str = "", *, pw: str | None = None) -> None:
        pw = self.pw if pw is None else pw
        self.send(frame(f"QN={qn};ST=91;CN={cn};PW={pw};MN={self.mn};Flag=5;CP=&&{cp}&&"))

    def answers_to(self, qn: str) -> list[tuple[str, str]]:
        return [
            (r.cn, r.cp)
            for r in self.received
            if r.header.get("QN") == qn and r.cn in ("9011", "9012", "9013", "1011", "1061", "1063")
        ]

    # ------------------------------------------------------------ the wire

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        buf = b""
        # CancelledError too: a handler still running when the test's loop ends
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(4096):
                buf += data
                while True:
                    got = self._cut_packet(buf)
                    if got is None:
                        break
                    raw, buf = got
                    self._take(raw, writer)

    def _cut_packet(self, buf: bytes) -> tuple[bytes, bytes] | None:
        if len(buf) < 6:
            return None
        if not buf.startswith(b"##") or not buf[2:6].isdigit():
            self.problems.append(f"stream does not start with ##LLLL: {buf[:20]!r}")
            end = buf.find(b"\r\n")
            return None if end < 0 else (b"", buf[end + 2 :])
        n = int(buf[2:6])
        if len(buf) < n + 12:
            return None
        return buf[: n + 12], buf[n + 12 :]

    def _take(self, raw: bytes, writer: asyncio.StreamWriter) -> None:
        if not raw:
            return
        segment, check, tail = raw[6:-6], raw[-6:-2], raw[-2:]
        where = raw[:60]
        if tail != b"\r\n":
            self.problems.append(f"{where!r}: no CRLF after the CRC")
        if not re.fullmatch(rb"[0-9A-F]{4}", check) or int(check, 16) != crc(segment):
            self.problems.append(f"{where!r}: CRC {check!r} wrong (want {crc(segment):04X})")
        if len(segment) > 1024:
            self.problems.append(f"{where!r}: data segment of {len(segment)} > 1024")
        text = segment.decode("ascii", "replace")
        head, sep, cp_part = text.partition("CP=&&")
        if not sep or not cp_part.endswith("&&"):
            self.problems.append(f"{where!r}: no CP=&&...&&")
            return
        cp = cp_part[:-2]
        items = [kv.split("=", 1) for kv in head.rstrip(";").split(";")]
        if any(len(kv) != 2 for kv in items):
            self.problems.append(f"{where!r}: header field without '='")
            return
        header = dict(items)
        keys = [k for k, _ in items]
        if keys != [k for k in ORDER if k in header]:
            self.problems.append(f"{where!r}: header keys {keys} out of order or unknown")
        groups = [dict(f.split("=", 1) for f in g.split(",") if "=" in f) for g in cp.split(";")]
        got = Received(raw, header, cp, groups if cp else [])
        self._check_header(got)
        self.received.append(got)
        self._arrived.set()
        cn = got.cn
        if cn in ("2011", "2051", "2061", "2031"):
            self._check_data(got)
        flag = int(header.get("Flag", "0") or 0)
        if "PNO" in header:
            parts = self._split.setdefault(header["QN"], [])
            if all(p.header.get("PNO") != header["PNO"] for p in parts):
                parts.append(got)
        if cn == "1013":
            when = datetime.now().strftime("%Y%m%d%H%M%S%f")[:17]
            writer.write(
                frame(
                    f"QN={when};ST=91;CN=1012;PW={self.pw};MN={self.mn};Flag=4;"
                    f"CP=&&SystemTime={self.clock_text}&&"
                )
            )
        if flag & 1 and self.reply and cn not in ("9011", "9012", "9013", "9014"):
            if self.skip_replies:
                self.skip_replies -= 1
                return
            answer = f"QN={header['QN']};ST=91;CN=9014;PW={self.pw};MN={self.mn};Flag=4;CP=&&&&"
            writer.write(frame(answer))

    def _check_header(self, r: Received) -> None:
        h, where = r.header, r.raw[:60]
        for key in ("QN", "ST", "CN", "PW", "MN", "Flag"):
            if key not in h:
                self.problems.append(f"{where!r}: no {key}")
        qn = h.get("QN", "")
        try:
            datetime.strptime(qn[:14], "%Y%m%d%H%M%S")
            ok = len(qn) == 17 and qn.isdigit()
        except ValueError:
            ok = False
        if not ok:
            self.problems.append(f"{where!r}: QN {qn!r} is not YYYYMMDDhhmmssSSS")
        if not re.fullmatch(r"[0-9]{2}", h.get("ST", "")):
            self.problems.append(f"{where!r}: ST {h.get('ST')!r}")
        if not re.fullmatch(r"[0-9]{4}", h.get("CN", "")):
            self.problems.append(f"{where!r}: CN {h.get('CN')!r}")
        if h.get("PW") != self.pw or h.get("MN") != self.mn:
            self.problems.append(f"{where!r}: PW/MN {h.get('PW')}/{h.get('MN')}")
        flag_text = h.get("Flag", "")
        if not flag_text.isdigit():
            self.problems.append(f"{where!r}: Flag {flag_text!r}")
            return
        flag = int(flag_text)
        if flag >> 2 != self.version_bits:
            self.problems.append(f"{where!r}: Flag version bits {flag >> 2} != {self.version_bits}")
        split = bool(flag & 2)
        if split != ("PNUM" in h and "PNO" in h):
            self.problems.append(f"{where!r}: Flag D bit and PNUM/PNO disagree")
        if split and not 1 <= int(h.get("PNO", "0")) <= int(h.get("PNUM", "0")):
            self.problems.append(f"{where!r}: PNO {h.get('PNO')} outside 1..{h.get('PNUM')}")

    def _check_data(self, r: Received) -> None:
        where = r.raw[:60]
        if not r.groups or list(r.groups[0]) != ["DataTime"]:
            self.problems.append(f"{where!r}: CP does not start with DataTime")
            return
        when = r.data_time
        try:
            t = datetime.strptime(when, "%Y%m%d%H%M%S")
        except ValueError:
            self.problems.append(f"{where!r}: DataTime {when!r}")
            return
        aligned = {
            "2051": t.second == 0,
            "2061": t.second == 0 and t.minute == 0,
            "2031": t.second == 0 and t.minute == 0 and t.hour == 0,
        }.get(r.cn, True)
        if not aligned:
            self.problems.append(f"{where!r}: DataTime {when} not on a period start")
        want = ("Rtd", "Flag") if r.cn == "2011" else ("Min", "Avg", "Max", "Flag")
        for group in r.groups[1:]:
            codes = {k.rsplit("-", 1)[0] for k in group}
            if len(codes) != 1:
                self.problems.append(f"{where!r}: group mixes factors {sorted(codes)}")
                continue
            code = codes.pop()
            if code not in self.factors:
                self.problems.append(f"{where!r}: unknown factor code {code!r}")
            if sorted(k.rsplit("-", 1)[1] for k in group) != sorted(want):
                self.problems.append(f"{where!r}: {code} fields {sorted(group)} != {want}")
                continue
            if group[f"{code}-Flag"] not in DATA_FLAGS:
                self.problems.append(f"{where!r}: data flag {group[f'{code}-Flag']!r}")
            numbers = [group[f"{code}-{w}"] for w in want if w != "Flag"]
            if not all(NUMBER.match(n) for n in numbers):
                self.problems.append(f"{where!r}: {code} values {numbers} not numbers")
            elif len(numbers) == 3 and not float(numbers[0]) <= float(numbers[1]) <= float(
                numbers[2]
            ):
                self.problems.append(f"{where!r}: {code} Min/Avg/Max out of order {numbers}")
