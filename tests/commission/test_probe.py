"""``dustgate probe`` as a technician runs it: a process reading a simulated device at the wire,
with the device's profile taken from the site's own profile folder."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from drivers.profiles import ProfileSearch, resolve_profile
from drivers.sim.modbus_server import RtuPtyServer
from drivers.sim.uart import open_pty_sim
from drivers.sim.units import ProfileUnit
from gateway.commission.probe import ProbeResult, ReadResult, field_rows, render

VALUES = {"pm10": 88.3, "pm25": 41, "temp": -2.5, "tsp": 123.5, "noise": 61.5}

# the site's own dust-station: the shipped one with PM10 x10 and a TSP float (word-swapped)
SITE_PROFILE = """\
extends: dust-station
fields:
  pm10: {scale: 0.1}
  tsp: {address: 0x0200, type: float32, order: CDAB, unit: ug/m3}
"""


def _site(tmp_path: Path, bus_port: str, slave_id: int = 1) -> Path:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "dust-station.yaml").write_text(SITE_PROFILE)
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: s1\nprofile_paths: [profiles]\n"
        f"buses:\n  - {{id: bus1, type: rtu, port: {bus_port}, baudrate: 19200}}\n"
        f"devices:\n  - {{id: gate, bus: bus1, profile: dust-station, slave_id: {slave_id}}}\n"
    )
    return site


async def _probe(site: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "probe", "--config", str(site), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_probe_prints_a_decoded_read_beside_the_raw_registers(tmp_path: Path) -> None:
    site_search = ProfileSearch.for_site([Path("profiles")], tmp_path)
    server = RtuPtyServer([])
    path = await server.start()
    site = _site(tmp_path, path)
    station = resolve_profile("dust-station", None, site_search)
    server.by_id[1] = ProfileUnit(station, lambda: VALUES)
    try:
        rc, out, err = await _probe(site, "gate", "--json")
        rc_text, text, _ = await _probe(site, "gate")
    finally:
        await server.stop()
    assert rc == 0, err
    doc: dict[str, Any] = json.loads(out)
    assert doc["source"] == str(tmp_path / "profiles" / "dust-station.yaml")
    assert [(r["table"], r["address"], r["count"]) for r in doc["reads"]] == [
        ("holding", 0x01F4, 14)
    ]
    rows = {r["name"]: r for r in doc["rows"]}
    assert rows["pm10"]["words"] == [883] and rows["pm10"]["raw"] == 883
    assert rows["pm10"]["value"] == 88.3 and rows["pm10"]["scale"] == 0.1
    assert rows["temp"]["words"] == [0xFFE7] and rows["temp"]["raw"] == -25
    assert rows["temp"]["value"] == -2.5
    assert rows["tsp"]["words"] == [0x0000, 0x42F7] and rows["tsp"]["value"] == 123.5
    assert rows["tsp"]["order"] == "CDAB"
    # the same as a table a person reads
    assert rc_text == 0
    assert f"gate: profile dust-station from {tmp_path / 'profiles' / 'dust-station.yaml'}" in text
    assert "FC03 holding 0x01F4 x14:" in text
    tsp_line = next(line for line in text.splitlines() if line.startswith("tsp "))
    assert tsp_line.split()[1:] == [
        "holding", "0x0200", "float32", "CDAB", "1", "0", "0000", "42F7", "123.5", "123.5", "ug/m3"
    ]  # fmt: skip
    assert set(server.functions_heard) == {3}  # read-only


async def test_probe_of_a_silent_device_says_so_and_points_to_scan(tmp_path: Path) -> None:
    server = RtuPtyServer([ProfileUnit(resolve_profile("dust-station"), lambda: VALUES)])
    path = await server.start()
    site = _site(tmp_path, path, slave_id=9)  # nobody at 9
    try:
        rc, out, _ = await _probe(site, "gate", "--timeout", "0.2")
        rc_unknown, _, err_unknown = await _probe(site, "no-such")
    finally:
        await server.stop()
    assert rc == 1
    assert "FC03 holding 0x01F4 x14: DeviceTimeout" in out
    assert "pm10 " in out and "try dustgate scan" in out
    assert rc_unknown == 2 and "no device 'no-such'" in err_unknown and "(gate)" in err_unknown


def test_render_shows_bits_and_failed_reads() -> None:
    relay = resolve_profile("relay-8ch")
    request = relay.plan()[0]
    rows = field_rows(relay.fields, [(request, [True, False] + [False] * (request.count - 2))])
    result = ProbeResult("r", "relay-8ch.yaml", ["header"], [
        ReadResult(request.table, request.function, request.address, request.count, None, 1.0, "DeviceTimeout: x")
    ], rows)  # fmt: skip
    text = render(result)
    assert "FC01 coil 0x0000 x" in text and "DeviceTimeout: x" in text
    first = next(line for line in text.splitlines() if line.startswith(rows[0].name + " "))
    assert first.split()[1:4] == ["coil", "0x0000", "bool"] and first.split()[-1] == "True"


async def test_probe_reads_a_uart_sensor(tmp_path: Path) -> None:
    sim, path = open_pty_sim("sds011", lambda: (0.0, 35.2, 71.9), period=0.2)
    sim.start()
    site = tmp_path / "site.yaml"
    site.write_text(
        f"site: s1\ndevices:\n  - {{id: sds, driver: sds011, port: {path}, mode: query,\n"
        "      calibration: {pm10: {points: [[50, 45], [150, 125]]}}}\n"
    )
    try:
        rc, out, err = await _probe(site, "sds", "--json")
    finally:
        await sim.stop()
    assert rc == 0, err
    rows = {r["name"]: (r["value"], r["calibrated"]) for r in json.loads(out)["rows"]}
    # the sensor's own values, and pm10 as the agent will publish it: 0.8 x 71.9 + 5
    assert rows == {"pm25": (35.2, None), "pm10": (71.9, 62.52)}
