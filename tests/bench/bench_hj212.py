"""HJ 212 stream parser throughput (bytes/s) on garbage and on valid traffic.

    .venv/bin/python tests/bench/bench_hj212.py [ROUNDS]

Each round times, on the same bytes and in alternating order:
* ``StreamParser`` (gateway/uplinks/hj212.py), fed in 4 kB reads as the link does;
* the parser it replaced (kept here, verbatim but for names, as the baseline): it
  copied and scanned up to 10 kB for every ``##`` and then skipped one byte;
* a raw scan: ``bytes.count`` of ``##`` and of CRLF over the same reads, no
  Python work per byte: a floor for any parser that looks at every byte.
Inputs: ``decoys`` (``##9999`` + 10 printable bytes, repeated: what made the old
parser quadratic), ``headers`` (``##0000`` back to back), ``random`` bytes, ``valid``
(minute records of 9 factors, ~300 bytes each) and ``mixed`` (valid packets with
random garbage between them). The old parser gets 32 kB of garbage (its cost is
per candidate, so its rate hardly depends on the size; 1 MB of decoys would take
it minutes); the new one is also timed alone on 1 MB of each kind. Reported:
median and range over the rounds of bytes/s, and of the per-round ratios.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.uplinks import hj212  # noqa: E402
from gateway.uplinks.hj212 import (  # noqa: E402
    HEADER,
    MAX_PARSE_SEGMENT,
    CrcMismatch,
    Hj212Error,
    Packet,
    Stats,
    StreamParser,
)

READ = 4096
OLD_GARBAGE = 32 * 1024
BIG = 1 << 20


class OldStreamParser:
    """The parser before issue 23 (baseline only): rescans up to 10 kB per '##'."""

    def __init__(self, max_segment: int = MAX_PARSE_SEGMENT) -> None:
        self._buf = bytearray()
        self._max = max_segment
        self.garbage_bytes = 0
        self.bad_packets = 0
        self.errors: list[str] = []
        self.crc_failed: list[Packet] = []

    def feed(self, data: bytes | bytearray) -> list[Packet]:
        self._buf += data
        out: list[Packet] = []
        buf = self._buf
        while True:
            start = buf.find(HEADER)
            if start < 0:
                keep = 1 if buf.endswith(b"#") else 0
                self._skip(len(buf) - keep)
                break
            if start:
                self._skip(start)
            verdict = self._candidate()
            if verdict is None:
                break
            if isinstance(verdict, Packet):
                out.append(verdict)
            else:
                self.bad_packets += 1
                self.errors = [*self.errors[-4:], verdict]
                self._skip(1)
        return out

    def _skip(self, n: int) -> None:
        self.garbage_bytes += n
        del self._buf[:n]

    def _candidate(self) -> Packet | str | None:
        buf = self._buf
        if len(buf) < 6:
            return None if buf[2:].isdigit() or len(buf) == 2 else "bad length field"
        digits = bytes(buf[2:6])
        if not digits.isdigit():
            return "bad length field"
        length = int(digits)
        if length > self._max:
            return f"length {length} exceeds {self._max}"
        body = bytes(buf[6 : 10 + length])
        if any(b < 0x20 or b > 0x7E for b in body):
            return "non-printable byte inside the packet"
        if len(buf) < length + 12:
            return None
        packet_bytes = bytes(buf[: length + 12])
        try:
            packet = hj212._decode_framed(packet_bytes, length)
        except CrcMismatch as exc:
            with contextlib.suppress(Hj212Error):
                segment = packet_bytes[6 : 6 + length].decode("ascii")
                self.crc_failed = [*self.crc_failed[-15:], hj212.parse_segment(segment)]
            return str(exc)
        except Hj212Error as exc:
            return str(exc)
        del buf[: length + 12]
        return packet


class RawScan:
    """Floor: two C-speed passes over the bytes (``##`` and CRLF counted), no parsing."""

    def __init__(self) -> None:
        self.hits = 0

    def feed(self, data: bytes) -> list[Packet]:
        self.hits += data.count(b"##") + data.count(b"\r\n")
        return []


# ------------------------------------------------------------------ inputs


def minute_packet(i: int) -> bytes:
    codes = ["a34001", "a34002", "a34004", "a01001", "a01002", "a01006", "a01007", "a01008"]
    stats = {c: Stats(10.0 + i % 7, 20.5 + i % 11, 40.0 + i % 13, "N", 60) for c in codes}
    groups = hj212.aggregate_groups(f"20261127{(i // 60) % 24:02d}{i % 60:02d}00", stats)
    p = Packet(cn="2051", qn=f"20261127100000{i % 1000:03d}", st="39", pw="123456",
               mn="SITE0001DUST00000001", flag=5, cp=hj212.join_cp(groups))  # fmt: skip
    return hj212.encode_packet(p, limit=9999)


def inputs(size: int, rng: random.Random) -> dict[str, bytes]:
    valid = b""
    i = 0
    while len(valid) < size:
        valid += minute_packet(i)
        i += 1
    mixed = b""
    i = 0
    while len(mixed) < size:
        mixed += rng.randbytes(rng.randrange(0, 200)) + minute_packet(i)
        i += 1
    return {
        "decoys": ((b"##9999" + b"a" * 10) * (size // 16 + 1))[:size],
        "headers": (b"##0000" * (size // 6 + 1))[:size],
        "random": rng.randbytes(size),
        "valid": valid,
        "mixed": mixed,
    }


# ------------------------------------------------------------------ timing


def run(make: Callable[[], object], data: bytes) -> tuple[float, int]:
    parser = make()
    feed = parser.feed  # type: ignore[attr-defined]
    found = 0
    t = time.perf_counter()
    for i in range(0, len(data), READ):
        found += len(feed(data[i : i + READ]))
    return time.perf_counter() - t, found


def fmt(values: list[float], scale: float = 1e6, unit: str = "MB/s") -> str:
    med = statistics.median(values)
    return f"{med / scale:8.3f} {unit} [{min(values) / scale:.3f}-{max(values) / scale:.3f}]"


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rng = random.Random(212)
    small = inputs(OLD_GARBAGE, rng)
    big = inputs(BIG, rng)
    parsers: dict[str, Callable[[], object]] = {
        "new": StreamParser,
        "old": OldStreamParser,
        "raw": RawScan,
    }
    print(f"HJ 212 stream parser, {rounds} paired rounds, reads of {READ} bytes")
    for kind, data in small.items():
        rates: dict[str, list[float]] = {name: [] for name in parsers}
        ratios_old: list[float] = []
        ratios_raw: list[float] = []
        counts: dict[str, int] = {}
        for r in range(rounds):
            order = list(parsers) if r % 2 == 0 else list(reversed(parsers))
            got: dict[str, float] = {}
            for name in order:
                seconds, found = run(parsers[name], data)
                got[name] = len(data) / seconds
                if name != "raw":
                    counts[name] = found
            for name, rate in got.items():
                rates[name].append(rate)
            ratios_old.append(got["new"] / got["old"])
            ratios_raw.append(got["new"] / got["raw"])
        assert counts["new"] == counts["old"], (kind, counts)  # the same packets found
        print(f"{kind:8s} {len(data) // 1024:5d} kB  packets={counts['new']}")
        for name in parsers:
            print(f"    {name:4s} {fmt(rates[name])}")
        print(f"    new/old {fmt(ratios_old, 1, 'x')}   new/raw {fmt(ratios_raw, 1, 'x')}")
    print(f"new parser alone on {BIG // 1024} kB of each kind:")
    for kind, data in big.items():
        secs = [run(StreamParser, data)[0] for _ in range(rounds)]
        rates = [len(data) / s for s in secs]
        print(f"    {kind:8s} {fmt(rates)}  (median {statistics.median(secs) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
