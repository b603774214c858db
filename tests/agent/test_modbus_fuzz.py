"""Fuzz the Modbus door: hostile replies from a simulated slave into the agent's bus.

The agent (built from a site config, its real bus scheduler, Modbus client and outbox; no
broker needed for this door) polls a dust station on a pty. Hypothesis scripts what the
simulator sends back to each request: a good reply, garbage bytes, a truncated frame, a bad
CRC, another unit's address, a Modbus exception, silence, or arbitrary bytes. Whatever it
sends: no traceback is logged, the bus task lives on, every stored reading is either the
station's true values with status ok or a comm_error with no values, and every refusal is
counted (poll errors = comm_error readings, each bad reply one of them), and the link is
not left out of step. Over RTU on a pty and over Modbus TCP; bounded for CI: eight scripts of
up to five replies per link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import modbus_pdu as pdu
from drivers.profiles import resolve_profile
from drivers.sim.modbus_server import RtuPtyServer, TcpServer
from drivers.sim.units import ProfileUnit
from gateway.agent import Agent
from gateway.backoff import Backoff
from gateway.config import SiteConfig

TRUTH = {"wind_speed": 3.4, "wind_force": 3, "wind_sector": 5, "wind_dir": 225, "rh": 61.2,
         "temp": -2.5, "noise": 71.3, "pm25": 48, "pm10": 133, "pressure": 1009}  # fmt: skip
SPEC = resolve_profile("dust-station")


def _valid_reply() -> bytes:
    unit = ProfileUnit(SPEC, lambda: TRUTH)
    from drivers.sim.units import handle_request

    request = SPEC.plan()[0].pdu
    return pdu.build_rtu(1, handle_request(unit, request, 0.0))


VALID = _valid_reply()
RTU_REPLIES = st.one_of(
    st.none(),  # a good reply
    st.sampled_from(["garbage", "truncated", "bad_crc", "wrong_slave", "exception", "silent"]),
    st.binary(min_size=1, max_size=40),  # whatever is on the line
    # a good frame with a byte changed, or cut, or with noise in front
    st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)).map(
        lambda e: VALID[: e[0]] + bytes([VALID[e[0]] ^ e[1]]) + VALID[e[0] + 1 :]
    ),
    st.integers(1, len(VALID) - 1).map(lambda n: VALID[:n]),
    st.binary(min_size=1, max_size=6).map(lambda noise: noise + VALID),
)
# Modbus TCP has no checksum of its own (TCP guards the bytes), so a complete, well-formed
# frame with wrong values cannot be told from a good one: the garbage here is everything else
TCP_REPLIES = st.one_of(
    st.none(),
    st.sampled_from(["wrong_slave", "exception", "silent"]),
    st.binary(min_size=1, max_size=40),
    # an MBAP header announcing more than follows, or another protocol id
    st.builds(
        lambda tid, protocol, length, body: (
            struct.pack(">HHH", tid, protocol, length) + body[: max(0, length - 2)]
        ),
        st.integers(0, 0xFFFF),
        st.integers(0, 3),
        st.integers(0, 300),
        st.binary(max_size=20),
    ),
)


def _agent(tmp: Path, where: str | int, overrides: dict[str, object] | None = None) -> Agent:
    """The agent with one station on a pty (``where`` its path) or a TCP gateway (a port)."""
    bus: dict[str, object] = {"id": "rs485", "type": "rtu", "port": where, "baudrate": 115200}
    if isinstance(where, int):
        bus = {"id": "rs485", "type": "tcp", "host": "127.0.0.1", "port": where}
    site = SiteConfig.model_validate(
        {
            "site": "fuzz",
            "buses": [bus],
            "devices": [
                {
                    "id": "station",
                    "bus": "rs485",
                    "profile": "dust-station",
                    "interval": 0.05,
                    "overrides": {"timeout": 0.25, "retries": 0, **(overrides or {})},
                }
            ],
            "outbox": {"path": str(tmp / "outbox.db"), "commit_interval": 0.05},
        }
    )
    agent = Agent(site, base_dir=tmp)
    # the backoff of a failed device is not what is under test here: keep the pace
    agent.buses["rs485"].device_backoff = Backoff(base=0.05, maximum=0.05, jitter=0.0)
    return agent


def _take_stored(agent: Agent, into: list[dict[str, object]]) -> int:
    """Move the readings committed since the last call into ``into``; returns its length."""
    agent.outbox.commit(0.0)
    rows = agent.outbox.pending_for_publish(1000)
    into += [json.loads(r.payload) for r in rows if r.topic.endswith("/telemetry")]
    return len(into)


@pytest.mark.parametrize("link", ["rtu", "tcp"])
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_replies_never_become_good_readings(
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
    link: str,
    data: st.DataObject,
) -> None:
    replies = RTU_REPLIES if link == "rtu" else TCP_REPLIES
    script: list[str | bytes | None] = data.draw(st.lists(replies, min_size=1, max_size=5))
    tmp = tmp_path_factory.mktemp("fuzz")
    caplog.clear()

    async def run() -> tuple[list[dict[str, object]], int, bool]:
        server: RtuPtyServer | TcpServer
        if link == "rtu":
            server = RtuPtyServer([ProfileUnit(SPEC, lambda: TRUTH)])
            agent = _agent(tmp, await server.start())
        else:
            server = TcpServer([ProfileUnit(SPEC, lambda: TRUTH)])
            agent = _agent(tmp, await server.start())
        server.faults.script.extend(script)  # type: ignore[arg-type]
        bus = agent.buses["rs485"]
        task = asyncio.create_task(bus.run())
        stored: list[dict[str, object]] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            # every scripted reply used, and two good polls after them
            while _take_stored(agent, stored) < len(script) + 2 and loop.time() < deadline:
                await asyncio.sleep(0.02)
            alive = not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await server.stop()
        _take_stored(agent, stored)
        errors = agent.counters["poll_errors"]
        agent.outbox.close()
        return stored, errors, alive

    with caplog.at_level(logging.WARNING):
        stored, errors, alive = asyncio.run(run())
    assert alive, "the bus task ended"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert len(stored) >= len(script) + 2, f"{len(stored)} readings for {len(script)} replies"
    assert [r["seq"] for r in stored] == list(range(len(stored)))  # each poll stored once
    bad = 0
    for reading in stored:
        if reading["status"] == "ok":
            assert reading["values"] == pytest.approx(TRUTH), f"{reading} stored as good"
        else:
            assert reading["status"] == "comm_error" and reading["values"] == {}
            bad += 1
    assert errors == bad  # each refusal counted
    # a scripted reply that is not the valid frame is refused (and a good one is not)
    must_fail = sum(1 for s in script if s is not None and s != VALID)
    assert bad >= must_fail
    # the link is not left out of step: good replies after the script are read again (a
    # garbled TCP frame once made the client take the next replies for its missing body)
    after = stored[len(script) :]
    assert any(r["status"] == "ok" for r in after[:2]), f"after the script: {after}"


@pytest.mark.parametrize("special", [math.nan, math.inf, -math.inf])
def test_a_non_finite_float_register_is_flagged_and_counted(tmp_path: Path, special: float) -> None:
    """A float32 register holding NaN/inf: that metric is flagged fault and left out, the
    others stay good, the refusal is counted (never a value, never a dead reading)."""
    overrides = {"fields": {"pm10": {"type": "float32"}, "pressure": None}}
    spec = resolve_profile("dust-station", overrides)
    truth = {**TRUTH, "pm10": special}

    async def run() -> tuple[list[dict[str, object]], int]:
        server = RtuPtyServer([ProfileUnit(spec, lambda: truth)])
        agent = _agent(tmp_path, await server.start(), overrides)
        task = asyncio.create_task(agent.buses["rs485"].run())
        stored: list[dict[str, object]] = []
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while _take_stored(agent, stored) < 2 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await server.stop()
        rejected = agent.counters["values_rejected"]
        agent.outbox.close()
        return stored, rejected

    stored, rejected = asyncio.run(run())
    assert len(stored) >= 2
    for reading in stored:
        assert reading["status"] == "ok"
        assert reading["flags"] == {"pm10": "fault"}
        values = reading["values"]
        assert isinstance(values, dict) and "pm10" not in values
        assert values["pm25"] == 48
    assert rejected == len(stored)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x01\x00\x00\x00\x40\x01\x03", b"\x00\x05\x00\x00\x00", b"\xff\xff\xff"],
    ids=["long-header", "half-header", "noise"],
)
def test_a_garbled_tcp_frame_does_not_take_the_next_replies(garbage: bytes) -> None:
    """Found by the fuzz above: the rest of a garbled MBAP frame stayed in the client's
    buffer, and its announced length swallowed the next good replies (three polls lost)."""
    from drivers.errors import DriverError
    from drivers.modbus_client import ModbusClient

    spec = resolve_profile("dust-station", {"timeout": 0.2, "retries": 0})

    async def run() -> list[str]:
        server = TcpServer([ProfileUnit(spec, lambda: TRUTH)])
        client = ModbusClient.tcp("127.0.0.1", await server.start())
        outcomes = []
        try:
            await client.connect()
            server.faults.script.append(garbage)
            for _ in range(3):
                try:
                    values = await client.read_device(spec)
                    outcomes.append("ok" if values == pytest.approx(TRUTH) else "wrong")
                except DriverError as exc:
                    outcomes.append(type(exc).__name__)
        finally:
            await client.close()
            await server.stop()
        return outcomes

    assert asyncio.run(run()) == ["FrameError", "ok", "ok"]
