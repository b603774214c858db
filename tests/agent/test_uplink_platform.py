"""HJ 212 uplink against a strict platform simulator on 127.0.0.1 (hj212_platform.py).

The platform checks every packet with its own code. The uplink's clock is a
fake the test moves (site time runs as fast as the test wants); the network,
the sockets and the SQLite backlog are real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.protocol import Status, Telemetry
from gateway.uplinks.hj212_link import Hj212Uplink
from gateway.uplinks.hj212_settings import Hj212Settings
from tests.agent.hj212_platform import WAIT, PlatformSim, crc, frame

T0 = datetime(2026, 11, 27, 2, 0, 10, tzinfo=UTC).timestamp()  # 10:00:10 Beijing time


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def until(cond: Callable[[], bool], what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not cond():
        assert loop.time() < deadline, f"{what} not reached in time"
        await asyncio.sleep(0.01)


def make_settings(port: int, **over: Any) -> Hj212Settings:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "mn": "MN0001",
        "pw": "123456",
        "devices": ["dust1"],
        "reply_timeout": 2.0,
        "retries": 1,
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
    }
    return Hj212Settings.model_validate(base | over)


def reading(ts: float, values: dict[str, float], **kw: Any) -> Telemetry:
    return Telemetry(ts=round(ts * 1000), seq=0, values=values, **kw)


@pytest.fixture
async def platform() -> AsyncIterator[PlatformSim]:
    p = await PlatformSim().start()
    try:
        yield p
    finally:
        await p.stop()
        assert p.problems == []


@contextlib.asynccontextmanager
async def running(up: Hj212Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(up.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def segment(raw: bytes) -> str:
    assert raw[-6:-2] == b"%04X" % crc(raw[6:-6])
    return raw[6:-6].decode()


async def test_uploads_replies_requests_and_reconnect(platform: PlatformSim) -> None:
    clock = Clock(T0)
    up = Hj212Uplink(make_settings(platform.port), "site1", clock=clock, tick=0.01)
    async with running(up):
        await until(lambda: bool(up.stats()["connected"]))
        up.on_reading("dust1", reading(T0 + 10, {"pm10": 80.0, "pm25": 40.0, "noise": 60.5}))
        up.on_reading("dust1", reading(T0 + 20, {"pm10": 100.0, "rain": 1.0}))
        up.on_reading("dust1", reading(T0 + 30, {"pm10": 500.0}, status=Status.FAULT))
        up.on_reading("other", reading(T0 + 31, {"pm10": 9999.0}))

        clock.t = T0 + 50  # 10:01:00: real-time is due
        await platform.wait_for("real-time data", lambda: platform.uploads("2011"))
        raw = platform.uploads("2011")[0].raw
        assert raw == frame(
            "QN=20261127100100000;ST=39;CN=2011;PW=123456;MN=MN0001;Flag=5;"
            "CP=&&DataTime=20261127100100;a34002-Rtd=500.0,a34002-Flag=D;"
            "a34004-Rtd=40.0,a34004-Flag=N;LA-Rtd=60.5,LA-Flag=N&&"
        )
        await until(lambda: up.stats()["acked"] == 1)

        clock.t = T0 + 55  # 10:01:05: minute 10:00 closes
        await platform.wait_for("minute 10:00", lambda: platform.uploads("2051"))
        assert segment(platform.uploads("2051")[0].raw) == (
            "QN=20261127100105000;ST=39;CN=2051;PW=123456;MN=MN0001;Flag=5;"
            "CP=&&DataTime=20261127100000;"
            "a34002-Min=80.0,a34002-Avg=90.0,a34002-Max=100.0,a34002-Flag=D;"
            "a34004-Min=40.0,a34004-Avg=40.0,a34004-Max=40.0,a34004-Flag=N;"
            "LA-Min=60.5,LA-Avg=60.5,LA-Max=60.5,LA-Flag=N&&"
        )
        await until(lambda: up.stats()["acked"] == 2)

        # garbage, then a get-time request split across two writes
        req = frame(
            "QN=20261127100106000;ST=91;CN=1011;PW=123456;MN=MN0001;Flag=5;CP=&&PolId=a34002&&"
        )
        platform.send(b"\x00\xffnoise##9" + req[:20])
        await asyncio.sleep(0.05)  # let the halves arrive apart
        platform.send(req[20:])
        qn = "20261127100106000"
        await platform.wait_for("the answers", lambda: len(platform.answers_to(qn)) == 3)
        assert platform.answers_to(qn) == [
            ("9011", "QnRtn=1"),
            ("1011", "PolId=a34002;SystemTime=20261127100105"),
            ("9012", "ExeRtn=1"),
        ]
        assert up.stats()["bad_packets"] >= 1

        # the platform goes away; two minutes close while it is down
        await platform.cut()
        await until(lambda: not up.stats()["connected"])
        up.on_reading("dust1", reading(T0 + 60, {"pm10": 70.0}))  # 10:01:10
        up.on_reading("dust1", reading(T0 + 120, {"pm10": 60.0}))  # 10:02:10
        clock.t = T0 + 115  # 10:02:05
        await until(lambda: up.stats()["backlog"] == 1)
        clock.t = T0 + 175  # 10:03:05
        await until(lambda: up.stats()["backlog"] == 2)
        assert up.stats()["realtime_skipped"] >= 2  # 10:02 and 10:03 were due offline

        await platform.start()
        await platform.wait_for("the backlog", lambda: len(platform.uploads("2051")) == 3)
        late = platform.uploads("2051")[1:]
        assert [r.data_time for r in late] == ["20261127100100", "20261127100200"]
        assert late[0].values()["a34002-Avg"] == "70.0"
        assert late[1].values()["a34002-Min"] == "60.0"
        assert [r.header["QN"] for r in late] == ["20261127100305000", "20261127100305001"]
        await until(lambda: up.stats()["backlog"] == 0 and up.stats()["acked"] == 4)
        s = up.stats()
        assert s["reconnects"] == 1 and s["records_sent"] == 3
        assert s["retries"] == 0 and s["evicted"] == 0


async def test_unanswered_upload_is_resent_then_the_link_is_reopened(
    platform: PlatformSim,
) -> None:
    clock = Clock(T0)
    s = make_settings(platform.port, reply_timeout=0.3, retries=1, realtime=False)
    up = Hj212Uplink(s, "site1", clock=clock, tick=0.01)
    async with running(up):
        await until(lambda: bool(up.stats()["connected"]))
        platform.skip_replies = 3  # the first try, its retry, and the try after reconnect
        up.on_reading("dust1", reading(T0, {"pm10": 55.0}))
        clock.t = T0 + 60
        await until(lambda: up.stats()["acked"] == 1 and up.stats()["backlog"] == 0)
        tries = [r.raw for r in platform.received if r.cn == "2051"]
        assert len(tries) == 4
        # the same bytes every time, after the reconnect too: one upload to the platform
        assert len(set(tries)) == 1
        assert len(platform.uploads("2051")) == 1
        st = up.stats()
        assert st["retries"] == 2 and st["link_timeouts"] == 1 and st["reconnects"] == 1
        assert st["sent"] == 4
        assert platform.connections == 2


async def test_split_upload_is_sent_part_by_part(platform: PlatformSim) -> None:
    clock = Clock(T0)
    platform.factors = frozenset(f"a{i:05d}" for i in range(40))
    many = {f"x{i}": f"a{i:05d}" for i in range(40)}
    s = make_settings(platform.port, factors=many, realtime=False, hourly=False)
    up = Hj212Uplink(s, "site1", clock=clock, tick=0.01)
    async with running(up):
        await until(lambda: bool(up.stats()["connected"]))
        up.on_reading("dust1", reading(T0, {f"x{i}": float(i) for i in range(40)}))
        clock.t = T0 + 60
        await platform.wait_for("a whole split upload", lambda: platform.uploads("2051"))
        parts = [r.header for r in platform.received if r.cn == "2051"]
        assert len(parts) > 1 and {p["Flag"] for p in parts} == {"7"}
        assert [p["PNO"] for p in parts] == [str(i + 1) for i in range(len(parts))]
        assert {p["QN"] for p in parts} == {parts[0]["QN"]}
        [whole] = platform.uploads("2051")
        assert whole.values()["a00039-Avg"] == "39.0" and len(whole.groups) == 41
        await until(lambda: up.stats()["acked"] == len(parts))


async def test_cancel_ends_run_even_while_a_reply_is_arriving(platform: PlatformSim) -> None:
    # Python 3.11's wait_for could swallow this cancellation and hang the agent's shutdown.
    for i in range(3):
        clock = Clock(T0 + 3600 * i)  # a new QN each round
        up = Hj212Uplink(make_settings(platform.port), "site1", clock=clock, tick=0.01)
        task = asyncio.create_task(up.run())
        await until(lambda: bool(up.stats()["connected"]))  # noqa: B023
        up.on_reading("dust1", reading(clock.t, {"pm10": float(i)}))
        clock.t += 50
        await platform.wait_for("an upload", lambda: len(platform.uploads("2011")) > i)  # noqa: B023
        task.cancel()
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert task.cancelled()


async def test_keeps_trying_until_the_platform_appears() -> None:
    late = PlatformSim()
    await late.start()
    await late.cut()  # a free port with nobody listening
    clock = Clock(T0)
    up = Hj212Uplink(make_settings(late.port, reply=False), "site1", clock=clock, tick=0.01)
    async with running(up):
        await until(lambda: up.stats()["connect_failures"] >= 3)
        up.on_reading("dust1", reading(T0, {"pm10": 42.0}))
        clock.t = T0 + 55  # minute 10:00 closes while nobody listens
        await until(lambda: up.stats()["backlog"] == 1)
        await late.start()
        try:
            await late.wait_for("minute 10:00", lambda: late.uploads("2051"))
            assert late.uploads("2051")[0].header["Flag"] == "4"
            # no reply wanted: written once, off the backlog, nothing to acknowledge
            await until(lambda: up.stats()["backlog"] == 0)
            s = up.stats()
            assert s["sent"] == 1 and s["acked"] == 0 and s["reconnects"] == 0
        finally:
            await late.stop()
        assert late.problems == []


async def test_bad_and_unknown_requests_get_refusals_and_the_link_survives(
    platform: PlatformSim,
) -> None:
    up = Hj212Uplink(make_settings(platform.port, realtime=False), "site1", tick=0.01)
    async with running(up):
        await until(lambda: bool(up.stats()["connected"]))
        platform.request("20261127100000001", "3020")  # no such command
        good = frame("QN=20261127100000002;ST=91;CN=1011;PW=123456;MN=MN0001;Flag=5;CP=&&&&")
        platform.send(good[:-6] + b"0000\r\n")  # the CRC is wrong
        platform.request("20261127100000003", "1011", pw="999999")
        platform.send(b"\x00\x01##12ab junk\r\n##0010QN=1;CN=9&&ABCD\r\n")  # not packets at all
        platform.request("20261127100000004", "1062", "RtdInterval=1")  # out of range
        platform.request("20261127100000006", "9013")  # a reply to nothing: never answered
        platform.request("20261127100000005", "1011")  # a good one, after all that
        await platform.wait_for("the last answer", lambda: platform.answers_to("20261127100000005"))
        await platform.wait_for(
            "all answers", lambda: len(platform.answers_to("20261127100000005")) == 3
        )
        assert platform.answers_to("20261127100000001") == [("9011", "QnRtn=8")]
        assert platform.answers_to("20261127100000002") == [("9011", "QnRtn=9")]
        assert platform.answers_to("20261127100000003") == [("9011", "QnRtn=3")]
        assert platform.answers_to("20261127100000004") == [
            ("9011", "QnRtn=1"),
            ("9012", "ExeRtn=3"),
        ]
        assert platform.answers_to("20261127100000005")[2] == ("9012", "ExeRtn=1")
        assert platform.answers_to("20261127100000006") == []
        s = up.stats()
        assert platform.connections == 1 and s["reconnects"] == 0 and s["connected"]
        assert s["bad_packets"] >= 2 and s["refused"] == 3 and s["unmatched_replies"] == 1
        assert up.stats()["rtd_interval"] == 60.0


async def test_platform_commands_take_effect_and_outlive_a_restart(
    platform: PlatformSim, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.db"
    clock = Clock(T0)
    platform.clock_text = "20261127100210"  # two minutes ahead of the site
    s = make_settings(
        platform.port,
        realtime=False,
        hourly=False,
        request_time=True,
        heartbeat={"interval": "0.2s", "cn": "9015"},
    )
    up = Hj212Uplink(s, "site1", store_path=db, clock=clock, tick=0.01)
    async with running(up):
        # CN 1013 on connect; the platform's 1012 shows the skew (the clock is not set)
        await until(lambda: up.stats()["platform_skew"] == 120.0, "the platform's time")
        await platform.wait_for("a heartbeat", lambda: platform.uploads("9015"))
        platform.request("20261127100011000", "1072", "NewPW=654321")
        await platform.wait_for(
            "ExeRtn", lambda: len(platform.answers_to("20261127100011000")) == 2
        )
        platform.pw = "654321"  # from now on the platform checks the new password
        platform.request("20261127100012000", "1064", "MinInterval=5")
        platform.request("20261127100013000", "1062", "RtdInterval=30")
        await platform.wait_for(
            "ExeRtn", lambda: len(platform.answers_to("20261127100013000")) == 2
        )
        assert up.stats()["minute_interval"] == 300.0 and up.stats()["rtd_interval"] == 30.0
        up.on_reading("dust1", reading(T0, {"pm10": 42.0}))
        clock.t = T0 + 55  # minute 10:00 closes, still under the 1-minute interval
        await platform.wait_for("minute 10:00", lambda: platform.uploads("2051"))
        assert platform.uploads("2051")[0].header["PW"] == "654321"

    again = Hj212Uplink(s, "site1", store_path=db, clock=clock, tick=0.01)
    st = again.stats()
    assert (st["rtd_interval"], st["minute_interval"]) == (30.0, 300.0)
    assert again.station.runtime.pw == "654321"
    # an interval the operator then changes in site.yaml wins; the platform's password stays
    edited = Hj212Uplink(s.model_copy(update={"realtime_interval": 120.0}), "s", store_path=db)
    assert edited.stats()["rtd_interval"] == 120.0 and edited.station.runtime.pw == "654321"
    assert platform.problems == []


async def test_a_5000_digit_number_is_refused_and_the_session_kept(
    platform: PlatformSim,
) -> None:
    """int() of 5,000 digits raised ValueError in the station and dropped the session."""
    up = Hj212Uplink(make_settings(platform.port, realtime=False), "site1", tick=0.01)
    async with running(up):
        await until(lambda: bool(up.stats()["connected"]))
        platform.request("20261127100000001", "1062", "RtdInterval=" + "9" * 5000)
        platform.request("20261127100000002", "1000", "OverTime=" + "5" * 5000 + ";ReCount=3")
        platform.request("20261127100000003", "1064", "MinInterval=" + "1" * 4400)
        platform.request("20261127100000004", "1011")
        await platform.wait_for(
            "the last answer", lambda: len(platform.answers_to("20261127100000004")) == 3
        )
        for qn in ("20261127100000001", "20261127100000002", "20261127100000003"):
            assert platform.answers_to(qn) == [("9011", "QnRtn=1"), ("9012", "ExeRtn=3")]
        s = up.stats()
        assert platform.connections == 1 and s["reconnects"] == 0 and s["connected"]
        assert s["bad_requests"] == 0 and s["rtd_interval"] == 60.0


async def test_a_garbage_flood_is_counted_and_logged_once_a_minute(
    platform: PlatformSim, caplog: pytest.LogCaptureFixture
) -> None:
    up = Hj212Uplink(make_settings(platform.port, realtime=False), "site1", tick=0.01)
    caplog.set_level("INFO", logger="gateway.uplinks")
    async with running(up):
        await until(lambda: bool(up.stats()["connected"]))
        for i in range(40):  # forty writes of decoys, each its own read on our side
            platform.send(b"##9999" + b"x" * 10 + b"##0000ab\r\n" * 3)
            await asyncio.sleep(0.005)
            if i % 10 == 0:  # and requests in between, answered at once
                platform.request(f"2026112710000{i:04d}", "1011")
        platform.request("20261127100000999", "1011")
        await platform.wait_for(
            "the last answer", lambda: len(platform.answers_to("20261127100000999")) == 3
        )
        s = up.stats()
        assert s["bad_packets"] >= 40 * 4 and platform.connections == 1
        bad_lines = [r for r in caplog.records if "bad data from platform" in r.getMessage()]
        request_lines = [r for r in caplog.records if "platform request CN=1011" in r.getMessage()]
        assert len(bad_lines) == 1 and len(request_lines) == 1
