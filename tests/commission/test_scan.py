"""``dustgate scan`` run as a technician would (a process) against simulated buses at the wire."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus_client import ModbusClient
from drivers.profiles import resolve_profile
from drivers.sim.modbus_server import Faults, RtuPtyServer, TcpServer
from drivers.sim.units import ProfileUnit
from gateway.commission.scan import Line, format_ids, parse_ids, render, run_scan


def _units() -> list[ProfileUnit]:
    station = ProfileUnit(resolve_profile("dust-station"), lambda: {"pm10": 88})  # no reg 0
    noise = ProfileUnit(resolve_profile("noise"), lambda: {"noise": 61.5}, unit_id=3)
    pm = ProfileUnit(resolve_profile("generic-pm"), lambda: {"pm10": 40}, unit_id=5)
    return [station, noise, pm]


async def _scan(*args: str) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "scan",
        *args,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out), time.monotonic() - t0


def _found(report: dict[str, Any]) -> dict[int, tuple[str, str]]:
    return {a["unit"]: (a["line"], a["kind"]) for a in report["answers"]}


async def test_scan_finds_the_slaves_on_a_pty_bus_and_the_one_at_another_baud_rate() -> None:
    # ids 1 and 3 at 9600 baud, id 5 at 4800: it hears nothing sent at 9600
    server = RtuPtyServer(_units(), bauds={1: 9600, 3: 9600, 5: 4800})
    path = await server.start()
    try:
        args = ("--port", path, "--ids", "1-8", "--timeout", "0.1", "--budget", "20")
        plain, _ = await _scan(*args)
        assert _found(plain) == {1: ("9600 8N1", "exception"), 3: ("9600 8N1", "registers")}
        report, took = await _scan(*args, "--bauds", "4800,9600", "--parities", "N")
    finally:
        await server.stop()
    assert _found(report) == {
        5: ("4800 8N1", "exception"),  # generic-pm has nothing at register 0: it says so
        1: ("9600 8N1", "exception"),
        3: ("9600 8N1", "registers"),
    }
    noise = next(a for a in report["answers"] if a["unit"] == 3)
    assert noise["detail"] == "holding register 0 = 615 (0x0267)"
    assert all(0 < a["ms"] < 100 for a in report["answers"])
    assert report["tried"] == report["planned"] == 16 and not report["out_of_time"]
    assert report["elapsed_s"] < 20 and took < 20
    # read-only: every request on the wire (to any id, at any rate) was FC03
    assert set(server.functions_heard) == {3}
    assert sum(server.functions_heard.values()) == 8 + 16


async def test_scan_finds_the_slaves_behind_a_tcp_gateway() -> None:
    units = _units()
    units[2].unit_id = 7
    server = TcpServer(units)
    port = await server.start()
    try:
        report, _ = await _scan("--tcp", f"127.0.0.1:{port}", "--ids", "1-10", "--function", "4")
    finally:
        await server.stop()
    # nobody has input registers: all three answer with an exception, and are found;
    # the gateway's "target failed to respond" (11) for the other ids is nobody
    assert _found(report) == {
        1: ("tcp", "exception"),
        3: ("tcp", "exception"),
        7: ("tcp", "exception"),
    }
    assert set(server.functions_heard) == {4} and sum(server.functions_heard.values()) == 10


async def test_scan_finds_the_slaves_behind_a_serial_device_server() -> None:
    server = TcpServer(_units(), framing="rtu")  # RTU frames over TCP: silence for nobody
    port = await server.start()
    try:
        report, _ = await _scan(
            "--rtu-tcp", f"127.0.0.1:{port}", "--ids", "1-6", "--timeout", "0.1"
        )
    finally:
        await server.stop()
    assert _found(report) == {
        1: ("tcp", "exception"),
        3: ("tcp", "registers"),
        5: ("tcp", "exception"),
    }
    assert report["target"] == f"rtu-tcp:127.0.0.1:{port}" and set(server.functions_heard) == {3}


async def test_scan_stops_at_its_budget_and_says_what_it_left() -> None:
    server = RtuPtyServer(_units())
    path = await server.start()
    try:
        report, took = await _scan(
            "--port", path, "--bauds", "9600,19200", "--parities", "N",
            "--timeout", "0.1", "--budget", "1",
        )  # fmt: skip
    finally:
        await server.stop()
    assert report["out_of_time"] and report["elapsed_s"] <= 1.0
    assert 5 <= report["tried"] < report["planned"] == 2 * 248
    assert report["untried"][-1] == "19200 8N1: ids 1-247,255"
    assert took < 10  # process start included
    assert {a["unit"] for a in report["answers"]} <= {1, 3, 5}


async def test_a_write_function_is_refused_before_the_bus_is_touched() -> None:
    opened: list[Line | None] = []

    def open_client(line: Line | None) -> ModbusClient:
        opened.append(line)
        return ModbusClient.tcp("127.0.0.1", 9)

    for function in (5, 6, 15, 16):
        with pytest.raises(ValueError, match="only reads"):
            await run_scan("x", open_client, [None], [1], function=function)
    assert opened == []


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 255), min_size=1))
def test_id_ranges_round_trip(ids: set[int]) -> None:
    text = format_ids(sorted(ids))
    assert parse_ids(text) == sorted(ids)
    assert len(text.split(",")) <= len(ids)


@pytest.mark.parametrize("bad", ["", "0-256", "9-3", "a", "1-2-3", "-1"])
def test_bad_id_ranges_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_ids(bad)


async def test_a_garbled_answer_is_reported_as_someone_there() -> None:
    server = RtuPtyServer(_units())
    path = await server.start()
    server.faults = Faults("bad_crc", count=1)  # the first answer is corrupted on the line
    try:
        report = await run_scan(
            f"rtu:{path}",
            lambda line: ModbusClient.rtu(path, baudrate=line.baudrate if line else 9600),
            [Line(9600)],
            [1, 2, 3],
            timeout=0.1,
            budget=5,
        )
    finally:
        await server.stop()
    kinds = {a.unit: a.kind for a in report.answers}
    assert kinds == {1: "garbled", 3: "registers"}
    assert [a.unit for a in report.devices] == [3]
    assert "CrcError" in report.answers[0].detail
    assert "garbled answers: a device is there" in render(report)
