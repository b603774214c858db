"""Readers against the pty simulators: real bytes through a real tty, no mocks.

Success paths use generous deadlines (the machine is noisy); only the "must time out"
paths use short ones.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers import sds011
from drivers.errors import DeviceTimeout, LinkDown
from drivers.pms5003 import Pms5003Reader
from drivers.sds011 import Sds011Reader
from drivers.serial_reader import ReportingMode
from drivers.sim.uart import Pms5003Sim, Sds011Sim, open_pty_sim

OK = 5.0  # deadline for things that must happen
SHORT = 0.4  # deadline for things that must not happen


class Plume:
    """A settable source, like the plume model the site simulator plugs in."""

    def __init__(self) -> None:
        self.values = (4.0, 12.3, 45.6)

    def __call__(self) -> tuple[float, float, float]:
        return self.values


@pytest.fixture
def plume() -> Plume:
    return Plume()


@pytest.fixture
async def sds(plume: Plume) -> AsyncIterator[tuple[Sds011Sim, Sds011Reader]]:
    sim, path = open_pty_sim("sds011", plume, period=0.05)
    assert isinstance(sim, Sds011Sim)
    sim.start()
    reader = Sds011Reader(path)
    try:
        await reader.open()
        yield sim, reader
    finally:
        await reader.close()
        await sim.stop()


@pytest.fixture
async def pms(plume: Plume) -> AsyncIterator[tuple[Pms5003Sim, Pms5003Reader]]:
    sim, path = open_pty_sim("pms5003", plume, period=0.05)
    assert isinstance(sim, Pms5003Sim)
    sim.start()
    reader = Pms5003Reader(path)
    try:
        await reader.open()
        yield sim, reader
    finally:
        await reader.close()
        await sim.stop()


async def read_until(reader: Sds011Reader | Pms5003Reader, pm25: float) -> float:
    """Read in active mode until the reading shows ``pm25`` (a frame may be in flight)."""
    deadline = asyncio.get_running_loop().time() + OK
    while True:
        reading = await reader.read(OK)
        if reading.pm25 == pm25 or asyncio.get_running_loop().time() > deadline:
            return reading.pm25


# -- SDS011 -----------------------------------------------------------------------------------


async def test_sds011_active_read_follows_the_source(sds, plume: Plume) -> None:
    sim, reader = sds
    first = await reader.read(OK)
    assert (first.pm25, first.pm10, first.device_id) == (12.3, 45.6, sim.device_id)
    plume.values = (1.0, 77.7, 150.2)
    assert await read_until(reader, 77.7) == 77.7
    assert (await reader.read(OK)).pm10 == 150.2


async def test_sds011_passive_mode_query(sds, plume: Plume) -> None:
    sim, reader = sds
    await reader.set_mode(ReportingMode.PASSIVE, OK)
    assert sim.mode is ReportingMode.PASSIVE
    with pytest.raises(DeviceTimeout):
        await reader.read(SHORT)  # no more streaming
    plume.values = (0.0, 33.3, 66.6)
    reading = await reader.query(OK)
    assert (reading.pm25, reading.pm10) == (33.3, 66.6)
    await reader.set_mode(ReportingMode.ACTIVE, OK)
    assert sim.mode is ReportingMode.ACTIVE
    assert (await reader.read(OK)).pm25 == 33.3


async def test_sds011_sleep_stops_answers_and_wake_brings_them_back(sds) -> None:
    sim, reader = sds
    await reader.sleep(OK)
    assert sim.asleep
    with pytest.raises(DeviceTimeout):
        await reader.query(SHORT)
    with pytest.raises(DeviceTimeout):
        await reader.read(SHORT)
    with pytest.raises(DeviceTimeout):  # asleep it ignores settings too
        await reader.set_mode(ReportingMode.PASSIVE, SHORT)
    assert sim.mode is ReportingMode.ACTIVE
    await reader.wake(OK)
    assert not sim.asleep
    assert (await reader.query(OK)).pm25 == 12.3


async def test_sds011_wake_is_resent_when_the_first_is_lost(sds) -> None:
    sim, reader = sds
    await reader.sleep(OK)
    sim.drop_commands = 1  # a waking sensor's UART misses the first command
    await reader.wake(2.0)  # 1 s for each attempt
    assert not sim.asleep
    assert sim.drop_commands == 0


async def test_sds011_work_period_is_confirmed(sds) -> None:
    sim, reader = sds
    await reader.set_work_period(7, OK)
    assert sim.work_period == 7
    await reader.set_work_period(0, OK)
    assert sim.work_period == 0


async def test_sds011_commands_for_another_device_are_ignored(plume: Plume) -> None:
    sim, path = open_pty_sim("sds011", plume, period=0.05)
    sim.start()
    reader = Sds011Reader(path, device_id=0x0001)  # the sim is A160
    try:
        await reader.open()
        with pytest.raises(DeviceTimeout):
            await reader.set_mode(ReportingMode.PASSIVE, SHORT)
        with pytest.raises(DeviceTimeout):
            await reader.read(SHORT)  # its frames carry another id
        assert sim.mode is ReportingMode.ACTIVE
    finally:
        await reader.close()
        await sim.stop()


async def test_sds011_reader_survives_line_noise(sds) -> None:
    sim, reader = sds
    await reader.set_mode(ReportingMode.PASSIVE, OK)
    bad = bytearray(sds011.encode_reading(sds011.Sds011Reading(1.0, 2.0, sim.device_id)))
    bad[8] ^= 0x5A
    os.write(sim.master_fd, b"\x00\xaa\x13" + bytes(bad) + b"\xff" * 7)
    assert (await reader.query(OK)).pm25 == 12.3
    stats = reader.stats()
    assert stats["bad_checksum"] == 1
    assert stats["garbage_bytes"] >= 3 + 10 + 7


async def test_sds011_sim_survives_a_failing_source(plume: Plume) -> None:
    calls = 0

    def flaky() -> tuple[float, float, float]:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("plume model hiccup")
        return plume()

    sim, path = open_pty_sim("sds011", flaky, period=0.05)
    sim.start()
    reader = Sds011Reader(path)
    try:
        await reader.open()
        assert (await reader.read(OK)).pm25 == 12.3
        assert sim.source_errors == 3
    finally:
        await reader.close()
        await sim.stop()


# -- PMS5003 / PMS7003 ------------------------------------------------------------------------


async def test_pms_active_read_returns_the_source_values(pms, plume: Plume) -> None:
    _, reader = pms
    reading = await reader.read(OK)
    assert (reading.pm1, reading.pm25, reading.pm10) == (4.0, 12.0, 46.0)  # integer ug/m3
    plume.values = (20.0, 80.0, 120.0)
    assert await read_until(reader, 80.0) == 80.0


async def test_pms_passive_query_sleep_and_wake(pms, plume: Plume) -> None:
    sim, reader = pms
    await reader.set_mode(ReportingMode.PASSIVE)
    plume.values = (9.0, 19.0, 29.0)
    reading = await reader.query(OK)
    assert sim.mode is ReportingMode.PASSIVE
    assert (reading.pm1, reading.pm25, reading.pm10) == (9.0, 19.0, 29.0)
    assert reading.pm25_cf1 == 19.0
    await reader.sleep()
    with pytest.raises(DeviceTimeout):
        await reader.query(SHORT)
    assert sim.asleep
    assert reader.woke_at is None
    await reader.wake()
    assert reader.woke_at is not None
    assert (await reader.query(OK)).pm10 == 29.0


# -- link handling ----------------------------------------------------------------------------


async def test_open_missing_port_is_link_down(tmp_path: Path) -> None:
    reader = Sds011Reader(str(tmp_path / "ttyUSB9"))
    with pytest.raises(LinkDown):
        await reader.open()
    with pytest.raises(LinkDown):
        await reader.read(SHORT)
    with pytest.raises(LinkDown):
        await reader.query(SHORT)


@pytest.mark.parametrize("kind", ["sds011", "pms5003"])
async def test_unplug_gives_link_down_and_reopen_works_when_port_returns(
    kind: str, plume: Plume, tmp_path: Path
) -> None:
    # A stable path like /dev/serial/by-id/...: a symlink repointed at a new pty on "replug".
    port = tmp_path / "ttyUSB0"
    sim, pts = open_pty_sim(kind, plume, period=0.05)  # type: ignore[arg-type]
    port.symlink_to(pts)
    sim.start()
    reader: Sds011Reader | Pms5003Reader = (
        Sds011Reader(str(port)) if kind == "sds011" else Pms5003Reader(str(port))
    )
    try:
        await reader.open()
        await reader.read(OK)
        pending = asyncio.ensure_future(reader.read(30.0, max_age=0.0))
        await asyncio.sleep(0)
        await sim.stop()  # the adapter is unplugged
        with pytest.raises(LinkDown):
            await asyncio.wait_for(pending, OK)  # a waiting read is released, not left hanging
        assert not reader.is_open
        with pytest.raises(LinkDown):
            await reader.read(OK)

        sim, pts = open_pty_sim(kind, plume, period=0.05)  # type: ignore[arg-type]
        sim.start()
        port.unlink()
        port.symlink_to(pts)
        plume.values = (3.0, 55.0, 99.0)
        await reader.reopen()
        assert await read_until(reader, 55.0) == 55.0
        assert reader.stats()["link_losses"] == 1
        assert reader.stats()["opens"] == 2
    finally:
        await reader.close()
        await sim.stop()


async def test_close_is_idempotent_and_then_reads_are_link_down(sds) -> None:
    _, reader = sds
    await reader.close()
    await reader.close()
    with pytest.raises(LinkDown):
        await reader.read(SHORT)
    await reader.open()
    assert (await reader.read(OK)).pm25 == 12.3
