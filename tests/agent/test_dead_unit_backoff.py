"""A dead unit behind a shared Modbus TCP gateway costs the live units little, across restarts.

The bus scheduler and the Modbus client of the agent, against a simulated gateway on a real
TCP socket that stays silent for its dead unit (as gateways that wait out their serial
timeout do). Three live units and a dead one at 2 Hz; the agent "restarts" twice (a new client
and scheduler, the backoff carried over by ``gateway.backoffstore`` as the agent does). Before
this, a probe of the dead unit held the line for every retry and each start probed it again
from the shortest backoff: about a fifth of the live intervals were off by more than 10 %.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from itertools import pairwise
from pathlib import Path

from drivers.errors import DriverError
from drivers.modbus_client import ModbusClient
from drivers.profiles import resolve_profile
from drivers.sim.modbus_server import TcpServer
from drivers.sim.units import ProfileUnit
from gateway.backoff import Backoff
from gateway.backoffstore import BackoffStore
from gateway.devices import modbus_poll, modbus_probe, poll_budget
from gateway.scheduler import BusScheduler

INTERVAL = 0.5
LIVE = (1, 2, 3)
DEAD = 4
RUN_S = 4.0


def _spec(unit: int):  # type: ignore[no-untyped-def]
    return resolve_profile("noise", {"slave_id": unit, "timeout": 0.1, "retries": 1})


async def _run_agent(port: int, store: BackoffStore, seen: dict[int, list[float]]) -> int:
    """One agent run; returns how many times the dead unit was polled."""
    client = ModbusClient.tcp("127.0.0.1", port)
    loop = asyncio.get_running_loop()

    def on_result(dev: str, _wall: float, values: object, error: DriverError | None) -> None:
        if error is None:
            seen.setdefault(int(dev), []).append(loop.time())

    bus = BusScheduler(
        "gw",
        client,
        on_result,
        device_backoff=Backoff(base=0.5, maximum=8.0),
        rng=random.Random(3),
        on_backoff=store.update,
    )
    for unit in (*LIVE, DEAD):
        spec = _spec(unit)
        bus.add_device(
            str(unit),
            INTERVAL,
            modbus_poll(client, spec),
            poll_budget(spec),
            probe=modbus_probe(client, spec),
            probe_hold=spec.timeout,
            resume=store.resume(str(unit)),
        )
    probes = 0
    poll = bus._poll

    async def counting(slot, due, lp):  # type: ignore[no-untyped-def]
        nonlocal probes
        probes += slot.id == str(DEAD)
        await poll(slot, due, lp)

    bus._poll = counting  # type: ignore[method-assign]
    task = asyncio.create_task(bus.run())
    await asyncio.sleep(RUN_S)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.close()
    return probes


async def test_dead_unit_behind_a_gateway_across_restarts(tmp_path: Path) -> None:
    units = [ProfileUnit(_spec(u), lambda: {"noise": 55.0}) for u in LIVE]
    server = TcpServer(units, absent="silent")
    port = await server.start()
    store_path = tmp_path / "device-backoff.json"
    errors: list[float] = []
    probes = 0
    try:
        for _run in range(3):  # the agent starts, runs, stops; twice more
            seen: dict[int, list[float]] = {}
            store = BackoffStore(store_path)  # read afresh, as a new process would
            probes += await _run_agent(port, store, seen)
            for unit in LIVE:
                ts = seen[unit]
                assert len(ts) >= RUN_S / INTERVAL - 1, f"unit {unit}: {len(ts)} reads"
                errors += [abs(b - a - INTERVAL) / INTERVAL for a, b in pairwise(ts[1:])]
    finally:
        await server.stop()
    # every poll of the dead unit is a probe of one try: the first one of a run (not heard
    # from yet) too, and after a restart the backoff goes on where it was
    assert probes >= 3
    assert server.asked[DEAD] == probes
    off = sorted(errors)
    p95 = off[int(0.95 * (len(off) - 1))]
    assert p95 <= 0.10, f"live interval error p95 {p95:.2f}; worst {off[-3:]}"
    assert BackoffStore(store_path).resume(str(DEAD)) is not None  # still dead: kept on disk


async def test_the_agent_keeps_a_dead_units_backoff_across_a_restart(tmp_path: Path) -> None:
    """The agent itself: its buses report backoff changes to device-backoff.json beside the
    outbox, and a new agent on the same files starts the dead unit in backoff."""
    from gateway.agent import Agent
    from gateway.config import SiteConfig

    server = TcpServer([ProfileUnit(_spec(1), lambda: {"noise": 55.0})], absent="silent")
    port = await server.start()
    devices = [
        {"id": f"n{u}", "bus": "gw", "profile": "noise", "slave_id": u, "interval": 0.2,
         "overrides": {"timeout": 0.1, "retries": 1}}
        for u in (1, DEAD)
    ]  # fmt: skip
    site = SiteConfig.model_validate(
        {
            "site": "s",
            "buses": [
                {"id": "gw", "type": "tcp", "host": "127.0.0.1", "port": port, "backoff_max": 0.4}
            ],
            "devices": devices,
            "outbox": {"path": str(tmp_path / "outbox.db")},
        }
    )
    try:
        first = Agent(site, base_dir=tmp_path)
        bus = first.buses["gw"]
        task = asyncio.create_task(bus.run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while bus.devices[f"n{DEAD}"].failures < 2 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        first.outbox.close()
        saved = BackoffStore(tmp_path / "device-backoff.json").resume(f"n{DEAD}")
        assert saved is not None and saved[0] >= 2
        assert BackoffStore(tmp_path / "device-backoff.json").resume("n1") is None

        again = Agent(site, base_dir=tmp_path)
        slot = again.buses["gw"].devices[f"n{DEAD}"]
        assert slot.failures == saved[0] and slot.state != "starting"
        assert again.buses["gw"].devices["n1"].failures == 0
        again.outbox.close()
    finally:
        await server.stop()
