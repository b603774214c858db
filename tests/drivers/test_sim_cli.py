"""``dustgate sim`` run as a person would: a process that prints where its devices are."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from drivers.modbus_client import ModbusClient
from drivers.profiles import resolve_profile
from drivers.sim.cli import main


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "drivers.sim.cli", *args, "--duration", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_modbus_mode_serves_a_profile_over_tcp() -> None:
    proc = _spawn("modbus", "--profile", "dust-station", "--tcp", "0", "--status-every", "0")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", first).group(1))  # type: ignore[union-attr]

        async def read() -> dict[str, float | int | bool]:
            async with ModbusClient.tcp("127.0.0.1", port) as client:
                return await client.read_device(resolve_profile("dust-station"))

        values = asyncio.run(read())
        assert 40 <= values["pm10"] <= 80
        assert 0 <= values["wind_sector"] <= 7
    finally:
        _stop(proc)
    assert proc.returncode == 0


def test_site_mode_prints_ptys_and_config() -> None:
    proc = _spawn("site", "--no-uart", "--status-every", "0")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        paths = re.findall(r"(/dev/pts/\d+)", "".join(lines))
        assert len(paths) == 2  # sensor bus and relay board
    finally:
        _stop(proc)
    out = proc.stdout.read() if proc.stdout else ""
    assert "dust-station" in "".join(lines) + out


def test_unknown_profile_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["modbus", "--profile", "no-such"]) == 2
    assert "unknown profile 'no-such'" in capsys.readouterr().err
