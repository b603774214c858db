"""HJ 212 uplink against a fake platform: a TCP server on 127.0.0.1 in this test.

The platform side checks frames with its own code (length, CRC, fields), not
with gateway.hj212. The uplink's clock is a fake the test moves; only the
network is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.protocol import Status, Telemetry
from gateway.uplink import Hj212Settings, Hj212Uplink

T0 = datetime(2026, 11, 27, 2, 0, 10, tzinfo=UTC).timestamp()  # 10:00:10 Beijing time
WAIT = 10.0  # generous deadline for a noisy 2-core machine; never a sleep for logic


def crc(data: bytes) -> int:
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            lsb = reg & 1
            reg >>= 1
            if lsb:
                reg ^= 0xA001
    return reg


def frame(segment: str) -> bytes:
    data = segment.encode()
    return b"##%04d%s%04X\r\n" % (len(data), data, crc(data))


def check_frame(raw: bytes) -> str:
    """The data segment of a well-formed packet, asserting length and CRC."""
    m = re.fullmatch(rb"##(\d{4})(.*)([0-9A-F]{4})\r\n", raw, re.S)
    assert m, raw
    segment = m.group(2)
    assert int(m.group(1)) == len(segment) <= 1024
    assert int(m.group(3), 16) == crc(segment)
    return segment.decode("ascii")


def fields(segment: str) -> dict[str, str]:
    head, _, _ = segment.partition("CP=&&")
    return dict(part.split("=", 1) for part in head.rstrip(";").split(";"))


class FakePlatform:
    """Collects packets (split on CRLF); answers Flag=5 uploads with 9014."""

    def __init__(self, port: int = 0, reply: bool = True) -> None:
        self.port = port
        self.reply = reply
        self.skip_replies = 0  # stay silent for this many uploads
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> FakePlatform:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        buf = b""
        with contextlib.suppress(OSError):
            while data := await reader.read(4096):
                buf += data
                while b"\r\n" in buf:
                    raw, buf = buf.split(b"\r\n", 1)
                    raw += b"\r\n"
                    self.received.put_nowait(raw)
                    f = fields(check_frame(raw))
                    if int(f.get("Flag", "0")) & 1 and self.reply:  # A bit: reply wanted
                        if self.skip_replies:
                            self.skip_replies -= 1
                            continue
                        writer.write(frame(reply_9014(f["QN"])))

    def send(self, data: bytes) -> None:
        self.writers[-1].write(data)

    async def next(self) -> bytes:
        async with asyncio.timeout(WAIT):
            return await self.received.get()


def reply_9014(qn: str) -> str:
    return f"QN={qn};ST=91;CN=9014;PW=123456;MN=MN0001;Flag=4;CP=&&&&"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def until(cond: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not cond():
        assert loop.time() < deadline, "condition not reached in time"
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
async def platform() -> AsyncIterator[FakePlatform]:
    p = await FakePlatform().start()
    try:
        yield p
    finally:
        await p.stop()


@contextlib.asynccontextmanager
async def running(up: Hj212Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(up.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_uploads_replies_requests_and_restart(platform: FakePlatform) -> None:
    clock = Clock(T0)
    up = Hj212Uplink(make_settings(platform.port), "site1", clock=clock, tick=0.01)
    async with running(up):
        await until(lambda: bool(up.stats()["connected"]))
        up.on_reading("dust1", reading(T0 + 10, {"pm10": 80.0, "pm25": 40.0, "noise": 60.5}))
        up.on_reading("dust1", reading(T0 + 20, {"pm10": 100.0, "rain": 1.0}))
        up.on_reading("dust1", reading(T0 + 30, {"pm10": 500.0}, status=Status.FAULT))
        up.on_reading("other", reading(T0 + 31, {"pm10": 9999.0}))

        clock.t = T0 + 50  # 10:01:00: real-time is due
        raw = await platform.next()
        assert check_frame(raw) == (
            "QN=20261127100100000;ST=39;CN=2011;PW=123456;MN=MN0001;Flag=5;"
            "CP=&&DataTime=20261127100100;a34002-Rtd=500.0,a34002-Flag=D;"
            "a34004-Rtd=40.0,a34004-Flag=N;LA-Rtd=60.5,LA-Flag=N&&"
        )
        assert raw == (
            b"##0175QN=20261127100100000;ST=39;CN=2011;PW=123456;MN=MN0001;Flag=5;"
            b"CP=&&DataTime=20261127100100;a34002-Rtd=500.0,a34002-Flag=D;"
            b"a34004-Rtd=40.0,a34004-Flag=N;LA-Rtd=60.5,LA-Flag=N&&%04X\r\n"
            % crc(check_frame(raw).encode())
        )
        await until(lambda: up.stats()["acked"] == 1)

        clock.t = T0 + 55  # 10:01:05: minute 10:00 closes
        assert check_frame(await platform.next()) == (
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
        platform.send(req[20:])
        answers = [check_frame(await platform.next()) for _ in range(3)]
        assert answers == [
            "QN=20261127100106000;ST=91;CN=9011;PW=123456;MN=MN0001;Flag=4;CP=&&QnRtn=1&&",
            "QN=20261127100106000;ST=39;CN=1011;PW=123456;MN=MN0001;Flag=4;"
            "CP=&&PolId=a34002;SystemTime=20261127100105&&",
            "QN=20261127100106000;ST=91;CN=9012;PW=123456;MN=MN0001;Flag=4;CP=&&ExeRtn=1&&",
        ]
        assert up.stats()["bad_packets"] >= 1

        # the platform goes away; two minutes close while it is down
        await platform.stop()
        await until(lambda: not up.stats()["connected"])
        up.on_reading("dust1", reading(T0 + 60, {"pm10": 70.0}))  # 10:01:10
        up.on_reading("dust1", reading(T0 + 120, {"pm10": 60.0}))  # 10:02:10
        clock.t = T0 + 115  # 10:02:05
        await until(lambda: up.stats()["backlog"] == 1)
        clock.t = T0 + 175  # 10:03:05
        await until(lambda: up.stats()["backlog"] == 2)
        assert up.stats()["realtime_skipped"] >= 2  # 10:02 and 10:03 were due offline

        back = await FakePlatform(port=platform.port).start()
        try:
            first, second = check_frame(await back.next()), check_frame(await back.next())
            assert first == (
                "QN=20261127100205000;ST=39;CN=2051;PW=123456;MN=MN0001;Flag=5;"
                "CP=&&DataTime=20261127100100;"
                "a34002-Min=70.0,a34002-Avg=70.0,a34002-Max=70.0,a34002-Flag=N&&"
            )
            assert fields(second)["QN"] == "20261127100305000"
            assert "DataTime=20261127100200;a34002-Min=60.0" in second
            await until(lambda: up.stats()["backlog"] == 0 and up.stats()["acked"] == 4)
            s = up.stats()
            assert s["reconnects"] == 1
            assert s["retries"] == 0 and s["dropped"] == 0
            assert back.received.empty()
        finally:
            await back.stop()


async def test_unanswered_upload_is_resent_then_the_link_is_reopened(
    platform: FakePlatform,
) -> None:
    clock = Clock(T0)
    s = make_settings(platform.port, reply_timeout=0.3, retries=1, realtime=False)
    up = Hj212Uplink(s, "site1", clock=clock, tick=0.01)
    async with running(up):
        await until(lambda: bool(up.stats()["connected"]))
        platform.skip_replies = 3  # the first try, its retry, and the try after reconnect
        up.on_reading("dust1", reading(T0, {"pm10": 55.0}))
        clock.t = T0 + 60
        tries = [await platform.next() for _ in range(4)]
        assert len(set(tries)) == 1  # the same bytes, same QN, every time
        assert "CN=2051" in check_frame(tries[0])
        await until(lambda: up.stats()["acked"] == 1 and up.stats()["backlog"] == 0)
        st = up.stats()
        assert st["retries"] == 2 and st["link_timeouts"] == 1 and st["reconnects"] == 1
        assert st["sent"] == 4
        assert platform.connections == 2


async def test_split_upload_is_sent_part_by_part(platform: FakePlatform) -> None:
    clock = Clock(T0)
    many = {f"x{i}": f"a{i:05d}" for i in range(40)}
    s = make_settings(platform.port, factors=many, realtime=False, hourly=False)
    up = Hj212Uplink(s, "site1", clock=clock, tick=0.01)
    async with running(up):
        await until(lambda: bool(up.stats()["connected"]))
        up.on_reading("dust1", reading(T0, {f"x{i}": float(i) for i in range(40)}))
        clock.t = T0 + 60
        first = fields(check_frame(await platform.next()))
        assert first["Flag"] == "7" and first["PNO"] == "1"
        parts = [first] + [
            fields(check_frame(await platform.next())) for _ in range(int(first["PNUM"]) - 1)
        ]
        assert [p["PNO"] for p in parts] == [str(i + 1) for i in range(len(parts))]
        assert {p["QN"] for p in parts} == {first["QN"]}
        await until(lambda: up.stats()["acked"] == len(parts))


async def test_cancel_ends_run_even_while_a_reply_is_arriving(platform: FakePlatform) -> None:
    # Python 3.11's wait_for could swallow this cancellation and hang the agent's shutdown.
    for i in range(3):
        await cancel_right_after_an_upload(platform, float(i))


async def cancel_right_after_an_upload(platform: FakePlatform, value: float) -> None:
    clock = Clock(T0)
    up = Hj212Uplink(make_settings(platform.port), "site1", clock=clock, tick=0.01)
    task = asyncio.create_task(up.run())
    await until(lambda: bool(up.stats()["connected"]))
    up.on_reading("dust1", reading(T0, {"pm10": value}))
    clock.t = T0 + 50
    await platform.next()
    task.cancel()
    async with asyncio.timeout(WAIT):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_keeps_trying_until_the_platform_appears() -> None:
    probe = await FakePlatform().start()
    port = probe.port
    await probe.stop()  # a free port with nobody listening
    clock = Clock(T0)
    up = Hj212Uplink(make_settings(port, reply=False), "site1", clock=clock, tick=0.01)
    async with running(up):
        await until(lambda: up.stats()["connect_failures"] >= 3)
        up.on_reading("dust1", reading(T0, {"pm10": 42.0}))
        clock.t = T0 + 55  # minute 10:00 closes while nobody listens
        await until(lambda: up.stats()["backlog"] == 1)
        late = await FakePlatform(port=port).start()
        try:
            segment = check_frame(await late.next())
            assert fields(segment)["Flag"] == "4" and fields(segment)["CN"] == "2051"
            # no reply wanted: written once, off the backlog, nothing to acknowledge
            await until(lambda: up.stats()["backlog"] == 0)
            s = up.stats()
            assert s["sent"] == 1 and s["acked"] == 0 and s["reconnects"] == 0
        finally:
            await late.stop()
