"""The launcher starts real services that answer, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aiomqtt
import pytest

from gateway import protocol as p
from gateway.localservices import Influxd, Mosquitto, mqtt_answers, running_services

pytestmark = pytest.mark.integration


async def test_message_through_the_real_broker(mosquitto: Mosquitto) -> None:
    topic = p.telemetry_topic("site-01", "gate")
    reading = p.Telemetry(ts=1700000000000, seq=1, values={"pm10": 88.1})
    async with aiomqtt.Client(
        mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as sub:
        await sub.subscribe(p.subscription("telemetry"), qos=1)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as pub:
            await pub.publish(topic, p.encode(reading), qos=1)
        async with asyncio.timeout(10):
            async for msg in sub.messages:
                assert str(msg.topic) == topic
                assert p.decode(p.Telemetry, msg.payload) == reading  # type: ignore[arg-type]
                break


def test_point_written_is_read_back_with_influxql(influxd: Influxd) -> None:
    influxd.create_database("dustgate")
    influxd.write("dustgate", "telemetry,site=site-01,device=gate pm10=88.1 1700000000000")
    res = influxd.query('SELECT "pm10" FROM "telemetry" WHERE "site" = \'site-01\'', "dustgate")
    series = res["results"][0]["series"][0]  # type: ignore[index]
    assert series["values"] == [[1700000000000, 88.1]]


def test_services_are_stopped_even_when_the_body_fails(tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError), running_services(workdir=tmp_path) as (mq, ix):
        assert mq is not None and ix is not None
        pids = [mq._proc.proc.pid, ix._proc.proc.pid]  # type: ignore[union-attr]
        raise RuntimeError("test body failed")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_broker_restart_on_the_same_port(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "m").start()
    try:
        port = broker.port
        broker.stop()
        assert not mqtt_answers("127.0.0.1", port)
        broker.start()
        assert broker.port == port and mqtt_answers("127.0.0.1", port)
    finally:
        broker.stop()


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    """A SIGKILLed test process must not leave a broker running."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from pathlib import Path
        from gateway.localservices import Mosquitto
        m = Mosquitto(Path({str(tmp_path)!r}) / "m").start()
        print(m._proc.proc.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        # reap if it became our zombie (it is not our child, so just wait)
        import time

        time.sleep(0.05)
    pytest.fail("broker outlived its parent")
