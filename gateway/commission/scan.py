"""``dustgate scan``: which Modbus slaves answer on a bus, at which line settings, how fast.

It sends one harmless read per slave id (FC03, or FC04 with ``--function 4``, one register at
``--register``, default 0) and listens. Any answer is a device: registers, or a Modbus
exception (a device that has nothing at that address still says so). A garbled answer (bad
CRC, another unit id) is reported as such: often a slave at another baud rate or parity.
Over TCP, exceptions 10 and 11 are the gateway saying that nobody answered behind it.

Never writes: the only request built here is a read (:data:`READ_FUNCTIONS`), and each goes
through ``ModbusClient.read_registers``. Bounded in time: each try waits at most
``--timeout``, and the whole scan stops at ``--budget`` seconds, saying what was left untried.
With ``--bauds`` (and ``--parities``) every line setting is tried in turn, slowest first.

The pure parts (id ranges, the plan, the report) are separate from :func:`run_scan`, which
drives a client per line setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from drivers.errors import (
    DeviceTimeout,
    DriverError,
    FrameError,
    LinkDown,
    ModbusExceptionResponse,
)
from drivers.modbus_client import ModbusClient

READ_FUNCTIONS = {3: "holding", 4: "input"}
COMMON_BAUDS = (2400, 4800, 9600, 19200, 38400, 115200)
COMMON_PARITIES = ("N", "E")
GATEWAY_NOBODY = {10, 11}  # exceptions a TCP gateway gives for a silent unit behind it
DEFAULT_IDS = "1-247,255"  # 255: the factory id of some PM sensors (profile generic-pm)


@dataclass(frozen=True, slots=True)
class Line:
    """Serial line settings (None for TCP)."""

    baudrate: int
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1

    def __str__(self) -> str:
        return f"{self.baudrate} 8{self.parity}{self.stopbits}"

    def char_time(self) -> float:
        """Seconds per character on the wire (start + 8 data + parity + stop bits)."""
        return (1 + 8 + (self.parity != "N") + self.stopbits) / self.baudrate


@dataclass(frozen=True, slots=True)
class Answer:
    unit: int
    line: str  # "9600 8N1", or "tcp"
    kind: Literal["registers", "exception", "garbled"]
    detail: str
    ms: float


@dataclass(slots=True)
class ScanReport:
    target: str
    planned: int  # tries the plan holds
    tried: int = 0
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    out_of_time: bool = False
    untried: list[str] = field(default_factory=list)  # "9600 8E1: ids 120-247"

    @property
    def devices(self) -> list[Answer]:
        return [a for a in self.answers if a.kind != "garbled"]


def parse_ids(text: str) -> list[int]:
    """``"1-10,20,255"`` -> sorted unique ids in 0..255; ValueError on anything else."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"bad slave id range {part!r} (expected e.g. 1-247,255)") from None
        if not 0 <= lo <= hi <= 255:
            raise ValueError(f"bad slave id range {part!r}: ids are 0..255, low to high")
        ids.update(range(lo, hi + 1))
    if not ids:
        raise ValueError("no slave ids to try")
    return sorted(ids)


def format_ids(ids: Sequence[int]) -> str:
    """The inverse of :func:`parse_ids` (compact ranges)."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(set(ids)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def plan_lines(bauds: Sequence[int], parities: Sequence[str]) -> list[Line]:
    """Every (baud, parity) pair, the slowest rate first (the cheap sensors' defaults)."""
    return [Line(b, p) for b in sorted(set(bauds)) for p in dict.fromkeys(parities)]  # type: ignore[arg-type]


def try_cost(timeout: float, line: Line | None) -> float:
    """Worst case of one try: the request and a reply on the wire, and the timeout."""
    if line is None:
        return timeout
    return timeout + 16 * line.char_time()


def worst_case(lines: Sequence[Line | None], ids: Sequence[int], timeout: float) -> float:
    return sum(len(ids) * try_cost(timeout, line) for line in lines)


async def run_scan(
    target: str,
    open_client: Callable[[Line | None], ModbusClient],
    lines: Sequence[Line | None],
    ids: Sequence[int],
    *,
    function: int = 3,
    register: int = 0,
    timeout: float = 0.3,
    budget: float = 120.0,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[Answer], None] | None = None,
) -> ScanReport:
    """Try every id at every line setting until the budget runs out; never writes."""
    if function not in READ_FUNCTIONS:  # refused before the bus is touched
        raise ValueError(f"scan only reads (FC03, FC04), not function {function}")
    table = READ_FUNCTIONS[function]
    report = ScanReport(target, planned=len(lines) * len(ids))
    start = clock()
    for n, line in enumerate(lines):
        label = "tcp" if line is None else str(line)
        client = open_client(line)
        left = budget - (clock() - start)
        try:
            async with asyncio.timeout(max(0.01, min(5.0, left))):
                await client.connect()
        except (TimeoutError, DriverError) as exc:
            report.errors.append(f"{label}: cannot open {target}: {exc or 'timed out'}")
            await client.close()
            continue
        try:
            for k, unit in enumerate(ids):
                if clock() - start + try_cost(timeout, line) > budget:
                    report.out_of_time = True
                    report.untried.append(f"{label}: ids {format_ids(ids[k:])}")
                    report.untried.extend(
                        f"{'tcp' if rest is None else rest}: ids {format_ids(ids)}"
                        for rest in lines[n + 1 :]
                    )
                    return _done(report, start, clock)
                answer = await _try(client, unit, label, table, register, timeout)
                report.tried += 1
                if answer is not None:
                    report.answers.append(answer)
                    if progress is not None:
                        progress(answer)
        except LinkDown as exc:
            report.errors.append(f"{label}: link lost: {exc}")
        finally:
            await client.close()
    return _done(report, start, clock)


def _done(report: ScanReport, start: float, clock: Callable[[], float]) -> ScanReport:
    report.elapsed_s = round(clock() - start, 3)
    return report


async def _try(
    client: ModbusClient, unit: int, label: str, table: str, register: int, timeout: float
) -> Answer | None:
    t0 = time.perf_counter()
    try:
        words = await client.read_registers(
            unit,
            register,
            1,
            table=table,  # type: ignore[arg-type]
            timeout=timeout,
            retries=0,
        )
    except DeviceTimeout:
        return None
    except ModbusExceptionResponse as exc:
        if label == "tcp" and exc.code in GATEWAY_NOBODY:
            return None
        name = ModbusExceptionResponse.NAMES.get(exc.code, "unknown")
        return Answer(unit, label, "exception", f"exception {exc.code} ({name})", _ms(t0))
    except FrameError as exc:
        return Answer(unit, label, "garbled", f"{type(exc).__name__}: {exc}", _ms(t0))
    detail = f"{table} register {register} = {words[0]} (0x{words[0]:04X})"
    return Answer(unit, label, "registers", detail, _ms(t0))


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


# ------------------------------------------------------------------ the command


def render(report: ScanReport) -> str:
    """The report as a person reads it."""
    out = []
    if report.answers:
        out.append(f"{'id':>4}  {'line':<10} {'time':>8}  answer")
        for a in report.answers:
            out.append(f"{a.unit:>4}  {a.line:<10} {a.ms:>5.1f} ms  {a.kind}: {a.detail}")
    found = len({(a.unit, a.line) for a in report.devices})
    out.append(
        f"{report.target}: {found} device(s) answered; {report.tried} of {report.planned} "
        f"tries in {report.elapsed_s:.1f} s"
    )
    if any(a.kind == "garbled" for a in report.answers):
        out.append("garbled answers: a device is there, maybe at another baud rate or parity")
    out.extend(f"error: {e}" for e in report.errors)
    if report.out_of_time:
        out.append("out of time (--budget); not tried:")
        out.extend(f"  {u}" for u in report.untried)
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dustgate scan",
        description="Find the Modbus slaves on a bus with one harmless read each; never writes.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port of the RS485 adapter, e.g. /dev/ttyUSB0")
    where.add_argument("--tcp", metavar="HOST:PORT", help="Modbus TCP gateway or device")
    where.add_argument("--rtu-tcp", metavar="HOST:PORT", help="serial device server (RTU framing)")
    parser.add_argument("--ids", default=DEFAULT_IDS, help="slave ids, e.g. 1-10,20 (1-247,255)")
    parser.add_argument("--baud", type=int, default=9600, help="baud rate (9600)")
    parser.add_argument("--parity", choices=["N", "E", "O"], default="N", help="parity (N)")
    parser.add_argument(
        "--bauds",
        nargs="?",
        const=",".join(map(str, COMMON_BAUDS)),
        help=f"try several baud rates (alone: {','.join(map(str, COMMON_BAUDS))})",
    )
    parser.add_argument(
        "--parities", help="with --bauds: parities to try (N,E; O on request)", default=None
    )
    parser.add_argument("--function", type=int, choices=[3, 4], default=3, help="read FC (3)")
    parser.add_argument("--register", type=lambda s: int(s, 0), default=0, help="address (0)")
    parser.add_argument("--timeout", type=float, default=0.3, help="per try, seconds (0.3)")
    parser.add_argument("--budget", type=float, default=120.0, help="whole scan, seconds (120)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        ids = parse_ids(args.ids)
        if not 0 <= args.register <= 0xFFFF:
            raise ValueError(f"register {args.register} outside 0..65535")
        if args.timeout <= 0 or args.budget <= 0:
            raise ValueError("--timeout and --budget must be positive")
        lines: list[Line | None]
        if args.port:
            if args.bauds:
                bauds = [int(b) for b in args.bauds.split(",") if b.strip()]
                parities = (args.parities or ",".join(COMMON_PARITIES)).upper().split(",")
                if not set(parities) <= {"N", "E", "O"}:
                    raise ValueError(f"parities are N, E, O; got {args.parities!r}")
                lines = list(plan_lines(bauds, parities))
            else:
                lines = [Line(args.baud, args.parity)]
            target = f"rtu:{args.port}"
            port = args.port

            def open_client(line: Line | None) -> ModbusClient:
                assert line is not None
                return ModbusClient.rtu(port, baudrate=line.baudrate, parity=line.parity)

        else:
            host, tcp_port = _host_port(args.tcp or args.rtu_tcp)
            framing_rtu = bool(args.rtu_tcp)
            lines = [None]
            target = f"{'rtu-tcp' if framing_rtu else 'tcp'}:{host}:{tcp_port}"

            def open_client(line: Line | None) -> ModbusClient:
                if framing_rtu:
                    return ModbusClient.rtu_over_tcp(host, tcp_port)
                return ModbusClient.tcp(host, tcp_port)

    except ValueError as exc:
        parser.error(str(exc))
    worst = worst_case(lines, ids, args.timeout)
    if not args.json:
        settings = ", ".join("tcp" if x is None else str(x) for x in lines)
        print(
            f"scanning {target} ({settings}), ids {format_ids(ids)}, "
            f"FC{args.function:02d} register {args.register}, timeout {args.timeout}s; "
            f"worst case {worst:.0f} s, budget {args.budget:.0f} s",
            flush=True,
        )
        if worst > args.budget:
            print("the budget is shorter than the worst case: narrow --ids or --bauds", flush=True)

    def show(answer: Answer) -> None:
        if not args.json:
            print(f"  found id {answer.unit} at {answer.line}: {answer.kind} ({answer.ms} ms)")

    report = asyncio.run(
        run_scan(
            target,
            open_client,
            lines,
            ids,
            function=args.function,
            register=args.register,
            timeout=args.timeout,
            budget=args.budget,
            progress=show,
        )
    )
    if args.json:
        doc = asdict(report)
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        print(render(report))
    if report.errors and not report.answers:
        return 1
    return 0
