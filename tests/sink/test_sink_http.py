"""The sink against a scriptable fake InfluxDB on loopback: request formation,
retries (429 + Retry-After, 503, timeouts), bisection, dead letters, spool."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path

import pytest
from sinkhelpers import FakeInflux, Reply, Request

from gateway.localservices import free_port
from rules.sink.settings import InfluxSettings
from rules.sink.spool import Spool, SpoolError
from rules.sink.writer import InfluxSink, backoff_delay

FAST = {
    "flush_interval": 0.05,
    "retry_base_delay": 0.05,
    "max_retry_delay": 0.5,
    "create_database": False,
}


def lines(a: int, b: int) -> list[str]:
    return [f"telemetry,site=s,device=d pm10={i}.5,seq={i}i {1000 + i}" for i in range(a, b)]


def settings(url: str, **kw: object) -> InfluxSettings:
    return InfluxSettings.model_validate({"url": url, **FAST, **kw})


async def test_v2_request_formation(fake_influx: FakeInflux, tmp_path: Path):
    s = settings(fake_influx.url, api="v2", org="acme", bucket="dust", token="s3cret")
    async with InfluxSink(s, tmp_path) as sink:
        sink.add_many(lines(0, 3))
        assert await sink.flush(10)
    [req] = fake_influx.requests
    path, _, query = req.path.partition("?")
    assert path == "/api/v2/write"
    assert urllib.parse.parse_qs(query) == {
        "org": ["acme"],
        "bucket": ["dust"],
        "precision": ["ms"],
    }
    assert req.headers["Authorization"] == "Token s3cret"
    assert req.headers["Content-Encoding"] == "gzip"  # the fixture decompressed it
    assert req.body.splitlines() == lines(0, 3)


async def test_v1_request_formation_with_auth_rp_and_create(
    fake_influx: FakeInflux, tmp_path: Path
):
    s = settings(
        fake_influx.url + "/influx",
        username="dg",
        password="pw",
        retention_policy="autogen",
        create_database=True,
        gzip=False,
    )
    async with InfluxSink(s, tmp_path) as sink:
        sink.add_many(lines(0, 2))
        assert await sink.flush(10)
    create, write = fake_influx.requests
    assert create.path == "/influx/query"
    assert urllib.parse.parse_qs(create.body)["q"] == ['CREATE DATABASE "dustgate"']
    path, _, query = write.path.partition("?")
    assert path == "/influx/write"
    assert urllib.parse.parse_qs(query) == {
        "db": ["dustgate"],
        "rp": ["autogen"],
        "precision": ["ms"],
    }
    assert write.headers["Authorization"] == "Basic " + base64.b64encode(b"dg:pw").decode()
    assert "Content-Encoding" not in write.headers


async def test_429_retry_after_is_honoured(fake_influx: FakeInflux, tmp_path: Path):
    fake_influx.script = [Reply(429, b'{"error":"slow down"}', {"Retry-After": "1"})]
    async with InfluxSink(settings(fake_influx.url), tmp_path) as sink:
        sink.add_many(lines(0, 5))
        assert await sink.flush(20)
        c = sink.counters
    first, second = fake_influx.requests
    assert second.at - first.at >= 1.0  # waited as told (a lower bound, safe on slow CI)
    assert fake_influx.accepted_lines() == lines(0, 5)
    assert (c.retried, c.spooled, c.replayed, c.written) == (1, 5, 5, 5)


async def test_503_and_timeout_are_retried_and_nothing_is_lost(
    fake_influx: FakeInflux, tmp_path: Path
):
    fake_influx.script = [Reply(503), Reply(204, delay=1.5), Reply(500)]
    async with InfluxSink(settings(fake_influx.url, timeout=0.3), tmp_path) as sink:
        sink.add_many(lines(0, 10))
        assert await sink.flush(30)
        c = sink.counters
    assert fake_influx.accepted_lines()[-10:] == lines(0, 10)
    assert c.retried == 3 and c.dead_lettered == 0
    assert not sink.spooling


async def test_live_data_keeps_order_behind_the_backlog(fake_influx: FakeInflux, tmp_path: Path):
    fake_influx.script = [Reply(503)] * 4
    async with InfluxSink(settings(fake_influx.url, batch_size=7), tmp_path) as sink:
        for i in range(0, 60, 6):
            sink.add_many(lines(i, i + 6))
            assert await sink.flush(0.02) in (True, False)  # let the writer run a bit
        assert await sink.flush(30)
    assert fake_influx.accepted_lines() == lines(0, 60)  # exactly once each, in order


async def test_unexplained_400_is_bisected_to_the_bad_lines(
    fake_influx: FakeInflux, tmp_path: Path
):
    def decide(req: Request) -> Reply:
        if "BAD" in req.body:
            return Reply(400, b'{"error":"something odd"}')
        return Reply(204)

    fake_influx.decide = decide
    batch = lines(0, 20)
    bad = [4, 13]
    for i in bad:
        batch[i] = batch[i].replace("device=d", "device=BAD")
    async with InfluxSink(settings(fake_influx.url, batch_size=100), tmp_path) as sink:
        sink.add_many(batch)
        assert await sink.flush(20)
        c = sink.counters
    assert sorted(fake_influx.accepted_lines()) == sorted(
        x for i, x in enumerate(batch) if i not in bad
    )
    dead = [json.loads(x) for x in (tmp_path / "dead-letter.jsonl").read_text().splitlines()]
    assert [d["line"] for d in dead] == [batch[i] for i in bad]
    assert {d["error"] for d in dead} == {"something odd"}
    assert (c.written, c.dead_lettered) == (18, 2)


async def test_413_splits_the_batch(fake_influx: FakeInflux, tmp_path: Path):
    fake_influx.decide = lambda req: Reply(413) if len(req.body.splitlines()) > 4 else Reply(204)
    async with InfluxSink(settings(fake_influx.url, batch_size=20), tmp_path) as sink:
        sink.add_many(lines(0, 20))
        assert await sink.flush(20)
    assert fake_influx.accepted_lines() == lines(0, 20)


async def test_close_spools_when_unreachable_and_next_start_replays(
    fake_influx: FakeInflux, tmp_path: Path
):
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sink = InfluxSink(settings(dead_url, close_timeout=0.5), tmp_path)
    await sink.start()
    sink.add_many(lines(0, 50))
    await sink.close()
    assert sink.counters.spooled == 50 and sink.spool_bytes > 0
    again = InfluxSink(settings(fake_influx.url), tmp_path)  # a "restarted process"
    await again.start()
    again.add_many(lines(50, 55))
    assert await again.flush(20)
    await again.close()
    assert fake_influx.accepted_lines() == lines(0, 55)
    assert again.counters.replayed == 50 and again.counters.written == 55
    assert not again.spooling


async def test_spool_bound_drops_oldest_and_counts(tmp_path: Path):
    dead_url = f"http://127.0.0.1:{free_port()}"
    s = settings(
        dead_url, spool_max_bytes=4096, spool_segment_bytes=512, close_timeout=0.2, batch_size=10
    )
    sink = InfluxSink(s, tmp_path)
    await sink.start()
    for i in range(0, 400, 10):
        sink.add_many(lines(i, i + 10))
    await sink.close()
    c = sink.counters
    assert c.dropped_spool_full > 0
    assert sink.spool_bytes <= 4096 + 512 + 1024
    assert c.spooled == 400  # every line reached the spool; the bound then dropped the oldest


@pytest.mark.parametrize("attempt", [1, 2, 5, 30])
def test_backoff_is_bounded_exponential_with_jitter(attempt: int):
    lo = backoff_delay(attempt, 0.5, 30.0, 0.0)
    hi = backoff_delay(attempt, 0.5, 30.0, 1.0)
    d = min(30.0, 0.5 * 2 ** (attempt - 1))
    assert (lo, hi) == (d / 2, d)


async def test_a_sink_is_used_once_and_refuses_lines_after_close(
    fake_influx: FakeInflux, tmp_path: Path
):
    sink = InfluxSink(settings(fake_influx.url), tmp_path)
    await sink.start()
    sink.add("m v=1i 1")
    await sink.close()
    assert fake_influx.accepted_lines() == ["m v=1i 1"]  # close() flushed
    with pytest.raises(RuntimeError):
        sink.add("m v=2i 2")
    with pytest.raises(RuntimeError):
        await sink.start()


async def test_disk_errors_keep_lines_in_memory_then_spool_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real_append = Spool.append
    failures = {"left": 2}

    def flaky_append(self: Spool, lines_: list[str]) -> int:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise SpoolError(28, "No space left on device")
        return real_append(self, lines_)

    monkeypatch.setattr(Spool, "append", flaky_append)
    dead_url = f"http://127.0.0.1:{free_port()}"
    sink = InfluxSink(settings(dead_url, close_timeout=5.0), tmp_path)
    await sink.start()
    sink.add_many(lines(0, 30))
    await sink.close()
    assert failures["left"] == 0
    assert sink.counters.spooled == 30 and sink.counters.dropped_buffer_full == 0


async def test_close_gives_up_when_neither_database_nor_disk_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def broken(self: Spool, lines_: list[str]) -> int:
        raise SpoolError(5, "Input/output error")

    monkeypatch.setattr(Spool, "append", broken)
    sink = InfluxSink(settings(f"http://127.0.0.1:{free_port()}", close_timeout=0.3), tmp_path)
    await sink.start()
    sink.add_many(lines(0, 30))
    await sink.close()  # returns instead of spinning forever
    assert sink.counters.dropped_buffer_full == 30
