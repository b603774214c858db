"""``dustgate probe --config site.yaml DEVICE``: one live read of one device, shown in full.

For a Modbus device: the profile (and the file it came from), each read request the agent
would send, the registers (or bits) that came back in wire order, and per field of the
profile its table, address, type, word order, scale and offset beside the undecoded number,
the decoded value and (if the device is calibrated) the calibrated value. A wrong byte
order or scale is then visible at a glance: 0x4148 0x0000 read as CDAB, or 615 shown as
615.0 where the display says 61.5.

For a UART sensor (SDS011, PMS5003/7003): one reading as the agent takes it, decoded and
calibrated.

Read-only: the requests are the profile's read plan (``DeviceSpec.plan``), sent through the
agent's ``ModbusClient`` surface. :func:`field_rows` and :func:`render` are pure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drivers.errors import DriverError
from drivers.modbus import BIT_TABLES, Block, FieldSpec, ReadRequest, decode_field
from drivers.modbus_client import ModbusClient
from drivers.profiles import Profile, profile_source
from gateway.calibration import Factors
from gateway.config import ModbusDevice, SiteConfig, UartDevice, load_site_config
from gateway.configfile import ConfigError
from gateway.devices import modbus_client_for, modbus_spec, uart_poll, uart_reader


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One request of the plan and what came back (``block`` None: it failed)."""

    table: str
    function: int
    address: int
    count: int
    block: list[int] | None
    ms: float
    error: str | None = None


@dataclass(slots=True)
class FieldRow:
    name: str
    table: str
    address: int
    type: str
    order: str
    scale: float
    offset: float
    unit: str
    words: list[int] | None  # the field's registers (or bit), in wire order
    raw: float | int | bool | None  # before scale and offset
    value: float | int | bool | None  # as published, before calibration
    calibrated: float | None = None


@dataclass(slots=True)
class ProbeResult:
    device: str
    source: str
    header: list[str] = field(default_factory=list)
    reads: list[ReadResult] = field(default_factory=list)
    rows: list[FieldRow] = field(default_factory=list)
    error: str | None = None


def field_rows(
    fields: Sequence[FieldSpec], reads: Sequence[tuple[ReadRequest, Block | None]]
) -> list[FieldRow]:
    """Every field with the registers it came from, its undecoded number and its value."""
    rows = []
    for request, block in reads:
        for f in request.fields:
            words = raw = value = None
            if block is not None:
                i = f.address - request.address
                words = [int(w) for w in block[i : i + f.width]]
                plain = f.model_copy(update={"scale": 1.0, "offset": 0.0})
                raw = decode_field(plain, block, request.address)
                value = decode_field(f, block, request.address)
            rows.append(
                FieldRow(
                    f.name,
                    f.table,
                    f.address,
                    f.type,
                    f.order,
                    f.scale,
                    f.offset,
                    f.unit or "",
                    words,
                    raw,
                    value,
                )
            )
    order = {f.name: i for i, f in enumerate(fields)}
    return sorted(rows, key=lambda r: order.get(r.name, 0))


def _hex(words: list[int] | None, table: str) -> str:
    if words is None:
        return "-"
    if table in BIT_TABLES:
        return " ".join(str(int(bool(w))) for w in words)
    return " ".join(f"{w:04X}" for w in words)


def _num(x: object) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def render(result: ProbeResult) -> str:
    """The probe as a technician reads it: header, requests, field table."""
    out = list(result.header)
    for r in result.reads:
        what = f"FC{r.function:02d} {r.table} 0x{r.address:04X} x{r.count}"
        if r.block is None:
            out.append(f"  {what}: {r.error}")
        else:
            out.append(f"  {what}: {_hex(r.block, r.table)}  ({r.ms:.1f} ms)")
    if result.rows:
        cal = any(row.calibrated is not None for row in result.rows)
        head = ["field", "table", "address", "type", "order", "scale", "offset", "registers"]
        head += ["raw", "value", "unit"] + (["calibrated"] if cal else [])
        table = [head]
        for row in result.rows:
            line = [
                row.name, row.table, f"0x{row.address:04X}", row.type, row.order,
                _num(row.scale), _num(row.offset), _hex(row.words, row.table),
                _num(row.raw), _num(row.value), row.unit,
            ]  # fmt: skip
            if cal:
                line.append(_num(row.calibrated))
            table.append(line)
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        out.extend(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table
        )
    if result.error:
        out.append(f"error: {result.error}")
    return "\n".join(out)


async def probe_modbus(
    site: SiteConfig, dev: ModbusDevice, client: ModbusClient, timeout: float | None
) -> ProbeResult:
    search = site.profile_search()
    spec: Profile = modbus_spec(dev, search)
    source = profile_source(dev.profile, search)
    bus = site.bus(dev.bus)
    line = f"{bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits}" if bus.type == "rtu" else ""
    where = f"{client.name} {line}".rstrip()
    result = ProbeResult(dev.id, str(source))
    result.header = [
        f"{dev.id}: profile {spec.name} from {source}",
        f"unit {spec.slave_id} on bus {dev.bus} ({where}), timeout {timeout or spec.timeout}s",
    ]
    wait = timeout or spec.timeout
    reads: list[tuple[ReadRequest, Block | None]] = []
    try:
        async with asyncio.timeout(10.0):
            await client.connect()
        await client.settle(spec.pause_after_connect)
    except (TimeoutError, DriverError) as exc:
        result.error = f"cannot open the bus: {exc or 'timed out'}"
        return result
    try:
        for request in spec.plan():
            t0 = time.perf_counter()
            block: Block | None = None
            error = None
            try:
                if request.table in BIT_TABLES:
                    block = await client.read_bits(
                        spec.slave_id,
                        request.address,
                        request.count,
                        table=request.table,  # type: ignore[arg-type]
                        timeout=wait,
                        retries=spec.retries,
                    )
                else:
                    block = await client.read_registers(
                        spec.slave_id,
                        request.address,
                        request.count,
                        table=request.table,  # type: ignore[arg-type]
                        timeout=wait,
                        retries=spec.retries,
                    )
            except DriverError as exc:
                error = f"{type(exc).__name__}: {exc}"
                result.error = result.error or (
                    f"{error} (wrong slave id or line settings? try dustgate scan)"
                )
            ms = round((time.perf_counter() - t0) * 1000, 1)
            words = None if block is None else [int(w) for w in block]
            result.reads.append(
                ReadResult(
                    request.table,
                    request.function,
                    request.address,
                    request.count,
                    words,
                    ms,
                    error,
                )
            )
            reads.append((request, block))
            if spec.pause_between_requests:
                await asyncio.sleep(spec.pause_between_requests)
    finally:
        await client.close()
    result.rows = _calibrated(field_rows(spec.fields, reads), dev.calibration_factors())
    return result


def _calibrated(rows: list[FieldRow], factors: dict[str, Factors]) -> list[FieldRow]:
    for row in rows:
        f = factors.get(row.name)
        if f is not None and isinstance(row.value, int | float) and not isinstance(row.value, bool):
            row.calibrated = round(f.apply(float(row.value)), 6)
    return rows


async def probe_uart(dev: UartDevice, timeout: float | None) -> ProbeResult:
    result = ProbeResult(dev.id, dev.driver)
    result.header = [f"{dev.id}: {dev.driver} on {dev.port} ({dev.baudrate} baud, {dev.mode} mode)"]
    reader: Any = uart_reader(dev)
    poll = uart_poll(dev.model_copy(update={"timeout": timeout or dev.timeout}), reader)
    try:
        await reader.open()
        t0 = time.perf_counter()
        values = await poll()
        ms = round((time.perf_counter() - t0) * 1000, 1)
    except DriverError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        await reader.close()
    result.header.append(f"one reading in {ms:.1f} ms")
    rows = [
        FieldRow(k, "uart", 0, dev.driver, "", 1.0, 0.0, "ug/m3", None, v, v)
        for k, v in values.items()
    ]
    result.rows = _calibrated(rows, dev.calibration_factors())
    return result


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dustgate probe",
        description="One live read of one device of a site.yaml, decoded beside its raw "
        "registers and its profile's field table (read-only).",
    )
    parser.add_argument("--config", "-c", type=Path, required=True, help="site.yaml")
    parser.add_argument("device", help="device id in site.yaml")
    parser.add_argument("--timeout", type=float, default=None, help="per request (profile's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        site = load_site_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    dev = next((d for d in site.devices if d.id == args.device), None)
    if dev is None:
        known = ", ".join(d.id for d in site.devices) or "none"
        print(
            f"dustgate probe: no device {args.device!r} in {args.config} ({known})", file=sys.stderr
        )
        return 2
    if isinstance(dev, ModbusDevice):
        client = modbus_client_for(site.bus(dev.bus))
        result = asyncio.run(probe_modbus(site, dev, client, args.timeout))
    else:
        result = asyncio.run(probe_uart(dev, args.timeout))
    if args.json:
        json.dump(asdict(result), sys.stdout, indent=1)
        print()
    else:
        print(render(result))
    return 1 if result.error else 0
