"""HJ 212 backfill: a platform cut off for 5 minutes gets every minute record after.

Site time is a fake clock moved at 1 Hz steps as fast as the loop allows (a
5-minute cut takes about a second of real time); the sockets, the strict
platform simulator and the SQLite backlog in outbox.db are real. The agent's
uplink is also restarted in the middle of the cut, from the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from gateway.uplinks.hj212_link import Hj212Uplink
from gateway.uplinks.hj212_station import Record
from gateway.uplinks.hj212_store import Hj212Store
from tests.agent.hj212_platform import PlatformSim
from tests.agent.test_uplink_platform import T0, Clock, make_settings, reading, until

START = T0 - 10  # 10:00:00 Beijing time


def pm10_at(t: int) -> float:
    return 50.0 + (t * 37) % 101  # varies within every minute


async def test_five_minute_cut_and_a_restart_lose_no_minute_record(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    platform = await PlatformSim().start()
    clock = Clock(START)
    settings = make_settings(platform.port, hourly=False, reply_timeout=1.0)

    def start_uplink() -> tuple[Hj212Uplink, asyncio.Task[None]]:
        up = Hj212Uplink(settings, "site1", store_path=db, clock=clock, tick=0.005)
        return up, asyncio.create_task(up.run())

    async def stop_uplink(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    up, task = start_uplink()
    try:
        await until(lambda: bool(up.stats()["connected"]))
        for t in range(0, 600):  # 10:00:00 .. 10:09:59, one reading a second
            clock.t = START + t
            if t == 120:  # 10:02:00: every minute so far is acknowledged; cut
                await until(lambda: up.stats()["backlog"] == 0)  # noqa: B023
                await platform.cut()
            if t == 270:  # 10:04:30: the agent restarts during the cut
                await stop_uplink(task)
                up, task = start_uplink()
            if t == 420:  # 10:07:00: the platform is back after 5 minutes
                assert up.stats()["backlog"] == 5  # 10:01 .. 10:05 closed while cut off
                await platform.start()
            up.on_reading("dust1", reading(START + t, {"pm10": pm10_at(t)}))
            await asyncio.sleep(0.002 if t % 60 else 0.05)  # let the link work
        clock.t = START + 600 + 5  # minute 10:09 closes
        await platform.wait_for("10 minute records", lambda: len(platform.uploads("2051")) == 10)
        await until(lambda: up.stats()["backlog"] == 0)
    finally:
        await stop_uplink(task)
        await platform.cut()

    assert platform.problems == []
    got = platform.uploads("2051")
    assert [r.data_time[8:12] for r in got] == [f"10{m:02d}" for m in range(10)]  # in order
    assert platform.duplicates("2051") == []  # once
    for minute, record in enumerate(got):
        values = [pm10_at(t) for t in range(60 * minute, 60 * minute + 60)]
        fields = record.values()
        assert fields["a34002-Avg"] == f"{sum(values) / 60:.1f}", minute  # every reading counted
        assert fields["a34002-Min"] == f"{min(values):.1f}"
        assert fields["a34002-Max"] == f"{max(values):.1f}"
        assert fields["a34002-Flag"] == "N"
    raw = [r for r in platform.received if r.cn == "2051"]
    assert len(raw) == 10  # nothing was sent twice


def test_store_keeps_order_bounds_and_qn_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    store = Hj212Store(db, "city", max_records=3)
    store.append(
        [Record("2051", f"2026112710{m:02d}00", f"DataTime=2026112710{m:02d}00") for m in range(5)]
    )
    assert store.count() == 3 and store.evicted == 2
    head = store.head()
    assert head is not None and head[1].data_time == "20261127100200" and head[2] is None
    store.set_qn(head[0], "20261127100305000")
    store.save_runtime({"pw": "NEW"}, {"pw": "OLD"})
    store.save_periods({"2051": {"period_s": 60.0}})
    store.close()

    again = Hj212Store(db, "city", max_records=3)
    head2 = again.head()
    assert head2 is not None and head2[0] == head[0] and head2[2] == "20261127100305000"
    assert again.load_state() == ({"pw": "NEW"}, {"pw": "OLD"}, {"2051": {"period_s": 60.0}})
    again.remove(head2[0])
    assert [again.head() is not None, again.count()] == [True, 2]
    other = Hj212Store(db, "province", max_records=3)  # another platform: its own backlog
    assert other.count() == 0 and other.load_state() == ({}, {}, {})
