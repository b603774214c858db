"""The engine's MQTT door under fuzz: hypothesis-made telemetry (good, implausible,
malformed in every way the contract refuses) and garbage on the other topics it reads,
published through a real mosquitto into a real engine service (in-process, its sink a
list). Per corpus: no traceback logged, the service alive, every good reading stored
exactly once and as sent, nothing bad stored as good (implausible values stored
flagged), each refusal counted by reason. Bounded: a few corpora of up to ~80 messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rulehelpers import ListSink
from test_service_mqtt import SITE, rules_config, until, write_config

from gateway import protocol as p
from gateway.localservices import Influxd, Mosquitto
from rules.core.config import load_rules_file
from rules.service.service import RulesService, ServiceOptions
from rules.sink.writer import InfluxSink

pytestmark = pytest.mark.integration

_run = count()
METRICS = ["pm10", "pm25", "noise", "rh", "temp", "wind_speed"]
# plausible for every metric above under the default limits
good_values = st.dictionaries(
    st.sampled_from(METRICS),
    st.floats(31.0, 59.0) | st.integers(31, 59),
    min_size=1,
    max_size=4,
)
models = st.none() | st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\"),
    min_size=1,
    max_size=12,
)

# (what to change in a good document, the refusal reason)
MUTATIONS: list[tuple[dict[str, Any], str]] = [
    ({"values": {"pm10": True}}, "type"),
    ({"values": {"pm10": "777.5"}}, "type"),
    ({"values": {"pm10": None}}, "type"),
    ({"seq": 10**30}, "range"),
    ({"seq": -1}, "range"),
    ({"seq": 1.5}, "type"),
    ({"ts": "1780000000000"}, "type"),
    ({"ts": 10**14}, "range"),
    ({"model": "ab\\"}, "string"),
    ({"model": 5}, "type"),
    ({"status": "weird"}, "schema"),
    ({"flags": {"pm10": "bad"}}, "schema"),
    ({"values": {"PM10": 1.0}}, "string"),
    ({"values": {f"m{i}": 1.0 for i in range(65)}}, "range"),
    ({"extra": 1}, "schema"),
]
RAW: list[tuple[bytes, str]] = [
    (b'{"ts": 1780000000000, "seq": 1, "values": {"pm10": NaN}}', "non_finite"),
    (b'{"ts": 1780000000000, "seq": 1, "values": {"pm10": -Infinity}}', "non_finite"),
    (b'{"ts": 1780000000000, "seq": 1, "values": {"pm10": 1e400}}', "non_finite"),
    (b'{"ts": 1780000000000, "seq": 1, "values": {"pm10": 1', "json"),
    (b"[" * 5000 + b"]" * 5000, "json"),
    (b"", "json"),
    (b"null", "type"),
    (b'{"ts": 1, "seq": 1, "values": {}, "model": "' + b"x" * 70_000 + b'"}', "size"),
]

message = st.one_of(
    st.tuples(st.just("good"), st.sampled_from(["gate", "mast"]), good_values, models),
    st.tuples(
        st.just("implausible"),
        st.sampled_from(["gate", "mast"]),
        st.sampled_from([1e20, 1e300, 1.7e308, -5.0, 50_000.0]),
        st.none(),
    ),
    st.tuples(st.just("mutated"), st.sampled_from(range(len(MUTATIONS))), st.none(), st.none()),
    st.tuples(st.just("raw"), st.sampled_from(range(len(RAW))), st.none(), st.none()),
    st.tuples(st.just("binary"), st.binary(max_size=64), st.none(), st.none()),
    st.tuples(
        st.just("topic"), st.sampled_from(["Gate", "a b", "x" * 65, "gate!"]), st.none(), st.none()
    ),
    st.tuples(
        st.just("other"),
        st.sampled_from(["gateway/gw1/status", "cannon-1/state", "events", "cannon-1/override"]),
        st.binary(max_size=32) | st.sampled_from([b"{}", b'{"ts": true}', b"[]"]),
        st.none(),
    ),
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield b
    finally:
        b.stop()


def build(
    corpus: list[tuple[Any, Any, Any, Any]], t0_ms: int
) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """The messages to publish and what the engine must make of them."""
    out: list[tuple[str, bytes]] = []
    good: dict[tuple[str, int], dict[str, float]] = {}
    flagged: set[tuple[str, int]] = set()
    refusals: Counter[str] = Counter()
    seqs = count(1)
    for i, (kind, a, b, c) in enumerate(corpus):
        ts = t0_ms - 10 * len(corpus) + 10 * i  # in the past, increasing
        doc: dict[str, Any] = {"ts": ts, "seq": next(seqs), "values": {"pm10": 88.0}}
        topic = p.telemetry_topic(SITE, "gate")
        if kind == "good":
            doc["values"] = b
            if c is not None:
                doc["model"] = c
            topic = p.telemetry_topic(SITE, a)
            good[(a, doc["seq"])] = {k: float(v) for k, v in b.items()}
            payload = json.dumps(doc).encode()
        elif kind == "implausible":
            doc["values"] = {"pm10": b, "rh": 50.0}
            topic = p.telemetry_topic(SITE, a)
            flagged.add((a, doc["seq"]))
            payload = json.dumps(doc).encode()
        elif kind == "mutated":
            change, reason = MUTATIONS[a]
            doc.update(change)
            payload = json.dumps(doc).encode()
            refusals[reason] += 1
        elif kind == "raw":
            payload, reason = RAW[a]
            refusals[reason] += 1
        elif kind == "binary":
            payload = a
            try:
                p.decode(p.Telemetry, payload)
            except p.ProtocolError as exc:
                refusals[exc.reason] += 1
            else:  # pragma: no cover - a binary that is a valid reading: not generated
                raise AssertionError(payload)
        elif kind == "topic":
            topic = f"{p.ROOT}/{SITE}/{a}/telemetry"
            payload = json.dumps(doc).encode()
            refusals["topic"] += 1
        else:  # garbage on the other topics the engine reads
            topic = f"{p.ROOT}/{SITE}/{a}"
            payload = b
            refusals["other"] += 1
        out.append((topic, payload))
    return out, {"good": good, "flagged": flagged, "refusals": refusals}


async def scenario(
    broker: Mosquitto, tmp: Path, msgs: list[tuple[str, bytes]], influx: Influxd | None = None
) -> tuple[RulesService, Any]:
    """One engine service (its sink a list, or the real influxd) fed ``msgs``; returns it
    stopped (its sink flushed)."""
    n = next(_run)
    cfg = rules_config(tmp / f"s{n}", broker.port, influx_url=influx.url if influx else None)
    if influx is not None:
        cfg["influx"]["database"] = f"fuzz{n}"
    path = write_config(tmp / f"rules-{n}.yaml", cfg)
    text = path.read_text()
    opts = ServiceOptions(tick_interval=0.2, persist_interval=5, watch_interval=5,
                          stats_interval=5, client_id=f"fuzz-engine-{n}")  # fmt: skip
    rf = load_rules_file(path, text=text)
    sink: Any = ListSink() if influx is None else InfluxSink(rf.influx, rf.state_dir)  # type: ignore[arg-type]
    svc = RulesService(path, rf, opts, rules_text=text, sink=sink)
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    try:
        async with asyncio.timeout(10):
            await svc.connected.wait()
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier=f"fuzz-pub-{n}",
                                protocol=aiomqtt.ProtocolVersion.V5)  # fmt: skip
        async with client:
            for topic, payload in msgs:
                await client.publish(topic, payload, qos=1)
        await until(lambda: svc.counters["messages"] >= len(msgs), 15, "every message handled")
        assert not task.done(), "the service stopped"
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task
    return svc, sink


@settings(
    max_examples=15,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: bounded time
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(st.lists(message, min_size=20, max_size=80))
def test_the_engine_door_under_fuzz(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture, corpus: list[Any]
) -> None:
    msgs, want = build(corpus, int(time.time() * 1000))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        svc, sink = asyncio.run(scenario(broker, tmp_path, msgs))
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[0].getMessage()
    assert svc.counters["internal_errors"] == 0
    assert svc.counters["messages"] == len(msgs)

    check_stored(sink.points("telemetry"), want)
    check_counted(svc, want)


def check_stored(points: list[Any], want: dict[str, Any]) -> None:
    """Every good and every implausible reading stored exactly once, nothing else; good
    ones as sent, implausible ones flagged (nothing bad stored as good)."""
    stored = Counter((pt.tags["device"], int(pt.fields["seq"])) for pt in points)
    assert stored == Counter([*want["good"], *want["flagged"]])
    for pt in points:
        key = (pt.tags["device"], int(pt.fields["seq"]))
        if key in want["good"]:  # stored as sent
            assert {k: v for k, v in pt.fields.items() if k in METRICS} == want["good"][key]
            assert pt.tags["quality"] == "ok"
            assert not [t for t in pt.tags if t.endswith("_flag")]
        else:  # nothing bad stored as good
            assert pt.tags["pm10_flag"] in ("over_range", "fault"), pt
            assert pt.tags["quality"] != "ok"


def check_counted(svc: RulesService, want: dict[str, Any]) -> None:
    """Each refusal counted, by reason."""
    r = want["refusals"]
    c = svc.counters
    assert c["decode_errors"] == sum(r.values())
    assert c["refused_topic"] == r["topic"]
    assert c["refused_size"] >= r["size"]
    for reason in ("schema", "type", "json", "string", "range", "non_finite"):
        # the other topics' garbage is counted under its own reasons too
        assert c[f"refused_{reason}"] >= r[reason], (reason, dict(c))
    assert sum(c[f"refused_{x}"] for x in p.REFUSAL_REASONS) == c["decode_errors"]
    ec = svc.engine.counters
    assert ec["over_limit"] + ec["below_limit"] == sum(1 for d, _ in want["flagged"] if d == "gate")


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    db = Influxd(tmp_path_factory.mktemp("influxd")).start()
    try:
        yield db
    finally:
        db.stop()


@dataclass
class Row:
    tags: dict[str, str]
    fields: dict[str, Any]


def influx_points(db: Influxd, database: str) -> list[Row]:
    res = db.query('SELECT * FROM "telemetry"', database)
    series = res["results"][0].get("series") or []  # type: ignore[index]
    out = []
    for s in series:
        cols = s["columns"]
        for values in s["values"]:
            row = {c: v for c, v in zip(cols, values, strict=True) if v is not None}
            tags = {k: str(v) for k, v in row.items() if k in TAGS or k.endswith("_flag")}
            out.append(Row(tags, {k: v for k, v in row.items() if k not in tags}))
    return out


TAGS = {"site", "device", "model", "status", "quality"}


@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(st.lists(message, min_size=20, max_size=60))
def test_the_engine_door_into_a_real_influxd(
    broker: Mosquitto, influxd: Influxd, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    corpus: list[Any],
) -> None:  # fmt: skip
    """The same door with the real sink: what the engine took is in the database exactly
    once, and nothing was refused by it (no dead letter)."""
    msgs, want = build(corpus, int(time.time() * 1000))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        svc, sink = asyncio.run(scenario(broker, tmp_path, msgs, influxd))
    assert not [r for r in caplog.records if r.exc_info]
    assert sink.counters.dead_lettered == 0 and not sink.dead_letter_file.exists()
    check_stored(influx_points(influxd, f"fuzz{_run_of(svc)}"), want)
    check_counted(svc, want)


def _run_of(svc: RulesService) -> str:
    return svc.client_id.rsplit("-", 1)[1]
