"""Relay outputs against the simulated relay board (RTU on a pty), and the board's logic."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from drivers.errors import ModbusExceptionResponse, RelayMismatch
from drivers.modbus_client import ModbusClient
from drivers.profiles import RelaySpec, resolve_profile
from drivers.relay import RelayOutput
from drivers.sim import units
from drivers.sim.modbus_server import RtuPtyServer
from drivers.sim.relay_board import RelayBoardUnit

Rig = tuple[ModbusClient, RelayBoardUnit, RelayBoardUnit]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    waveshare = RelayBoardUnit(1, channels=8, flash_base=0x0200)
    lctech = RelayBoardUnit(
        255, channels=2, coil_base=1, register_base=1, on_value=0x0100, flash_base=None
    )
    server = RtuPtyServer([waveshare, lctech])
    client = ModbusClient.rtu(await server.start(), baudrate=115200)
    await client.connect()
    try:
        yield client, waveshare, lctech
    finally:
        await client.close()
        await server.stop()


def _now() -> float:
    import asyncio

    return asyncio.get_running_loop().time()


async def test_coil_relay_switches_and_reads_back(rig: Rig) -> None:
    client, board, _ = rig
    out = RelayOutput.from_profile(client, resolve_profile("relay-8ch"), 2)
    assert await out.switch(True) is True
    assert board.is_on(2, _now())
    assert [board.is_on(ch, _now()) for ch in (0, 1, 3)] == [False, False, False]
    assert await out.read() is True
    assert await out.switch(False) is False
    assert not board.is_on(2, _now())
    assert board.switch_count == 2


async def test_fc15_for_boards_that_reject_fc05(rig: Rig) -> None:
    client, board, _ = rig
    board.reject_fc05 = True
    plain = RelayOutput(client, 1, 0, RelaySpec(write_function=5), retries=0)
    with pytest.raises(ModbusExceptionResponse):
        await plain.switch(True)
    fc15 = RelayOutput(client, 1, 0, RelaySpec(write_function=15))
    assert await fc15.switch(True) is True
    assert board.is_on(0, _now())


async def test_register_mode_board_with_on_value_and_base_1(rig: Rig) -> None:
    client, _, lctech = rig
    out = RelayOutput.from_profile(client, resolve_profile("relay-lctech"), 1)
    assert await out.switch(True) is True
    assert lctech.tables["holding"][2] == 0x0100
    assert lctech.is_on(1, _now())
    # the profile's fields read the same state
    state = await client.read_device(resolve_profile("relay-lctech"))
    assert state == {"relay1": False, "relay2": True}
    assert await out.switch(False) is False


async def test_hardware_flash_timer_is_armed(rig: Rig) -> None:
    client, board, _ = rig
    out = RelayOutput.from_profile(client, resolve_profile("relay-8ch"), 3)
    assert await out.switch(True, hardware_timer_s=30) is True
    deadline = board.flash_deadline[3]
    assert deadline - _now() == pytest.approx(30, abs=5)
    assert not board.is_on(3, deadline + 0.01)  # the board drops it by itself


async def test_readback_mismatch_is_raised(rig: Rig) -> None:
    client, board, _ = rig

    def stuck(table: str, address: int, values: list[int], now: float) -> None:
        pass  # a welded contact: accepts the write, state never changes

    board.write = stuck  # type: ignore[method-assign]
    out = RelayOutput(client, 1, 4, RelaySpec())
    with pytest.raises(RelayMismatch) as info:
        await out.switch(True)
    assert (info.value.wanted, info.value.got) == (True, False)


def test_flash_expiry_uses_the_given_clock() -> None:
    board = RelayBoardUnit(1, channels=2)
    board.write_single_coil_raw(0x0201, 25, now=100.0)  # FC05 flash, 2.5 s
    assert board.is_on(1, 102.4)
    assert board.active_count(102.4) == 1
    assert not board.is_on(1, 102.5)
    assert board.active_count(102.5) == 0
    # a plain write cancels a pending flash
    board.write("holding", 0x0200, [50], now=200.0)  # FC06 flash, 5 s
    board.write("coil", 0, [1], now=201.0)
    assert board.is_on(0, 1000.0)


def test_board_rejects_illegal_values() -> None:
    board = RelayBoardUnit(1, channels=2, register_base=0x10, on_value=0x0100)
    with pytest.raises(units.SimException) as info:
        board.write_single_coil_raw(0, 0x1234, now=0.0)
    assert info.value.code == units.ILLEGAL_VALUE
    with pytest.raises(units.SimException):
        board.write("holding", 0x10, [7], now=0.0)
    with pytest.raises(units.SimException) as info:
        board.write("coil", 2, [1], now=0.0)
    assert info.value.code == units.ILLEGAL_ADDRESS


def test_board_from_relay_profiles() -> None:
    lctech = RelayBoardUnit.from_profile(resolve_profile("relay-lctech"))
    assert (lctech.unit_id, lctech.register_base, lctech.on_value) == (255, 1, 0x0100)
    assert lctech.flash_base is None
    waveshare = RelayBoardUnit.from_profile(resolve_profile("relay-8ch"))
    assert (waveshare.channels, waveshare.register_base, waveshare.flash_base) == (8, None, 0x200)
    with pytest.raises(ValueError):
        RelayBoardUnit.from_profile(resolve_profile("noise"))
