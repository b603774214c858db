"""The sink against a real influxd (Debian's 1.6.7): dead letters and an outage."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from sinkhelpers import count_points, wait_for

from gateway.localservices import Influxd
from gateway.protocol import Telemetry
from rules.sink.points import telemetry_line
from rules.sink.settings import InfluxSettings
from rules.sink.writer import InfluxSink

pytestmark = pytest.mark.integration

FAST = {"flush_interval": 0.1, "retry_base_delay": 0.2, "max_retry_delay": 2.0}


def reading(seq: int, t0: int = 1_700_000_000_000) -> str:
    msg = Telemetry(ts=t0 + seq * 50, seq=seq, values={"pm10": 50.0 + seq % 7, "pm25": 20.0})
    line = telemetry_line("site-1", "gate", msg)
    assert line is not None
    return line


async def test_type_conflict_goes_to_dead_letters_rest_is_stored(
    shared_influxd: Influxd, tmp_path: Path
):
    db = "conflict"
    shared_influxd.create_database(db)
    shared_influxd.write(db, "telemetry,site=site-1,device=gate pm10=1.0,seq=0i 1000")
    batch = [reading(i) for i in range(1, 11)]
    bad = 'telemetry,site=site-1,device=gate pm10="n/a",seq=99i 1700000099000'
    unparsable = "telemetry,site=site-1,device=gate pm10= 1700000098000"
    batch.insert(4, bad)
    batch.insert(8, unparsable)
    s = InfluxSettings.model_validate({"url": shared_influxd.url, "database": db, **FAST})
    async with InfluxSink(s, tmp_path) as sink:
        sink.add_many(batch)
        assert await sink.flush(30)
        c = sink.counters
    assert count_points(shared_influxd, db) == 11  # the preloaded point + 10 good ones
    dead = [json.loads(x) for x in (tmp_path / "dead-letter.jsonl").read_text().splitlines()]
    by_line = {d["line"]: d["error"] for d in dead}
    assert set(by_line) == {bad, unparsable}
    assert (
        'field type conflict: input field "pm10" on measurement "telemetry" is type string'
        in by_line[bad]
    )
    assert "unable to parse" in by_line[unparsable]
    assert (c.dead_lettered, c.written, c.retried) == (2, 10, 0)


@pytest.mark.slow
async def test_two_minute_outage_at_20_points_per_second_loses_nothing(tmp_path: Path):
    """influxd is stopped for 2 minutes while 20 points/s flow in; the sink process is
    also restarted in the middle of the outage.  Afterwards every point is stored."""
    ix = Influxd(tmp_path / "influxd").start()
    try:
        s = InfluxSettings.model_validate(
            {"url": ix.url, "database": "outage", **FAST, "timeout": 2.0}
        )
        state = tmp_path / "state"
        sink = InfluxSink(s, state)
        await sink.start()
        produced = 0

        async def produce(seconds: float) -> None:
            """20 points/s by the clock, however slowly the loop runs."""
            nonlocal produced
            start, first = time.monotonic(), produced
            while (elapsed := time.monotonic() - start) < seconds:
                while produced < first + int(elapsed * 20):
                    sink.add(reading(produced))
                    produced += 1
                await asyncio.sleep(0.05)

        await produce(5)
        ix.stop()
        await produce(60)
        spooled_before_restart = sink.counters.spooled
        await sink.close()  # the engine restarts mid-outage
        sink = InfluxSink(s, state)
        await sink.start()
        await produce(60)
        assert sink.spooling and spooled_before_restart > 0
        ix.start()
        await produce(5)
        assert await sink.flush(120)
        await sink.close()
        wait_for(lambda: count_points(ix, "outage") == produced, 30, "all points stored")
        assert produced >= 20 * 120  # the outage really covered 2 min of data
        assert sink.counters.replayed > 0 and sink.counters.dead_lettered == 0
    finally:
        ix.stop()
