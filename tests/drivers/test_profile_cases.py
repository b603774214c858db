"""Golden cases per shipped profile: a register dump and the telemetry it must give.

``tests/drivers/cases/<profile>/registers.yaml`` is what the device holds (``unit`` and one
mapping per table: address -> word, or bit for coils); ``telemetry.yaml`` the values the agent
must publish for it. The dump is served by a simulated slave over TCP and read through the
agent's own poll (plan, client, decoding), so a profile edit that changes an address, a type,
a scale or a word order shows here. Add a case with every new profile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from drivers.modbus_client import ModbusClient
from drivers.profiles import PROFILE_DIR, resolve_profile
from drivers.sim.modbus_server import TcpServer
from drivers.sim.units import SimUnit
from gateway.devices import modbus_poll

CASES = Path(__file__).parent / "cases"
SHIPPED = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def test_every_shipped_profile_has_a_case() -> None:
    assert sorted(p.name for p in CASES.iterdir() if p.is_dir()) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_reads_its_register_dump(name: str) -> None:
    dump = yaml.safe_load((CASES / name / "registers.yaml").read_text())
    expected = yaml.safe_load((CASES / name / "telemetry.yaml").read_text())["values"]
    unit = SimUnit(dump["unit"])
    for table in ("holding", "input", "coil", "discrete"):
        unit.tables[table].update(dump.get(table) or {})
    spec = resolve_profile(name)
    assert spec.slave_id == dump["unit"], "the dump is of the profile's factory unit id"

    async def read() -> dict[str, float]:
        server = TcpServer([unit])
        client = ModbusClient.tcp("127.0.0.1", await server.start())
        try:
            await client.connect()
            return await modbus_poll(client, spec)()
        finally:
            await client.close()
            await server.stop()

    values = asyncio.run(read())
    assert values == pytest.approx(expected)
    assert values.keys() == expected.keys()


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_cites_a_vendor_document_not_a_path(name: str) -> None:
    profile = resolve_profile(name)
    assert profile.source is not None, f"{name}: no source (vendor, document, model, version)"
    text = (PROFILE_DIR / f"{name}.yaml").read_text()
    for marker in ("/work/", "/home/", "/Users/", "DOMAIN.md", "C:\\\\"):
        assert marker not in text, f"{name}: cites {marker!r}"
