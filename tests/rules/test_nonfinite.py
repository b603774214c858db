"""Non-finite values on every entry path of the engine: live MQTT telemetry (refused
at decoding), replay CSV (wide and long), InfluxDB history, and the engine's own
ingest (any path funnels there). Property per path: no NaN or infinity reaches a
window, a rule decision or a point for InfluxDB, and each one is counted.

The issue's case: ``dustgate replay --csv`` took a ``nan`` cell as a value (``float()``
accepts it), did not count it, and one such cell during an episode halved the
minutes over the limit and stretched the spray.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rulehelpers import rules_file

from gateway import protocol as p
from gateway.localservices import LOOPBACK, free_port
from rules.core.engine import Engine
from rules.history.replay import read_csv, replay
from rules.history.sources import _influx_rows, read_influx

RULES = """
sites: [site-01]
actuators:
  site-01/cannon-1: {litres_per_minute: 10}
defaults: {min_staleness: 10s, max_staleness: 60s}
rules:
  - id: pm10
    site: site-01
    metric: pm10
    devices: [m]
    aggregate: mean
    window: 5s
    above: 150
    clear: 100
    actions: {lease: [cannon-1]}
  - id: extra
    site: site-01
    metric: dust_index
    devices: [m]
    aggregate: max
    window: 5s
    above: 150
    clear: 100
    actions: {lease: [cannon-1]}
"""
T0 = 1_780_000_000
NON_FINITE_TEXT = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "+inf", " nan", "1e999"]

cells = st.one_of(
    st.floats(-1e6, 1e6).map(repr),
    st.sampled_from(NON_FINITE_TEXT),
    st.just(""),
)


def _is_non_finite_text(cell: str) -> bool:
    return bool(cell) and not math.isfinite(float(cell))


def engine_over(readings: list[Any]) -> Engine:
    """An engine fed ``readings`` as the replay feeds it, ticked after each."""
    eng = Engine(rules_file(RULES))
    for ts, site, dev, values, status, flags in readings:
        eng.ingest_values(site, dev, ts, 0, values, ts, status, flags)
        eng.tick(ts)
    return eng


def assert_engine_clean(eng: Engine) -> None:
    """No window holds a non-finite value and every decision input is finite or unknown."""
    for series in eng._series.values():
        for w in series.windows.values():
            assert all(math.isfinite(v) for v in w._values)
            assert all(math.isfinite(v) for _, v in (*w._maxq, *w._minq))
            assert math.isfinite(w._pos + w._neg) and math.isfinite(w._last_v)
    for v in eng.last_values.values():
        assert v is None or math.isfinite(v)
    for inputs in eng.last_inputs.values():
        assert inputs.value is None or math.isfinite(inputs.value)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(cells, cells), min_size=1, max_size=60))
def test_replay_csv_wide_counts_every_non_finite_cell(rows: list[tuple[str, str]]) -> None:
    text = "ts,site,device,pm10,dust_index,noise\n" + "".join(
        f"{(T0 + i) * 1000},site-01,m,{a},{b},{a}\n" for i, (a, b) in enumerate(rows)
    )
    expected = sum(_is_non_finite_text(c) for a, b in rows for c in (a, b, a))
    counters: Counter[str] = Counter()
    readings = list(read_csv(io.StringIO(text), counters))
    assert counters["non_finite"] == expected
    assert all(math.isfinite(v) for r in readings for v in r[3].values())
    # the replay's selection (noise is read by no rule) counts the same
    sel: Counter[str] = Counter()
    (res,) = replay(read_csv(io.StringIO(text), sel), [rules_file(RULES)])
    assert sel["non_finite"] == expected
    assert res.counters.get("non_finite", 0) == 0  # none reached the engine
    assert_engine_clean(engine_over(readings))


@settings(max_examples=60, deadline=None)
@given(st.lists(cells.filter(bool), min_size=1, max_size=60))
def test_replay_csv_long_counts_every_non_finite_cell(values: list[str]) -> None:
    text = "ts,site,device,metric,value\n" + "".join(
        f"{(T0 + i) * 1000},site-01,m,pm10,{v}\n" for i, v in enumerate(values)
    )
    counters: Counter[str] = Counter()
    readings = list(read_csv(io.StringIO(text), counters))
    assert counters["non_finite"] == sum(map(_is_non_finite_text, values))
    assert all(math.isfinite(v) for r in readings for v in r[3].values())


def test_a_nan_cell_during_an_episode_changes_no_figure() -> None:
    """The issue's case: the same episode with one ``nan`` cell in it gives the same
    minutes over the limit and the same spraying, and the cell is counted."""

    def csv(nan_at: int | None) -> str:
        lines = ["ts,site,device,pm10"]
        for s in range(900):
            v = "200.0" if 120 <= s < 600 else "50.0"
            lines.append(f"{(T0 + s) * 1000},site-01,m,{'nan' if s == nan_at else v}")
        return "\n".join(lines) + "\n"

    def run(text: str) -> tuple[Any, Counter[str]]:
        c: Counter[str] = Counter()
        (res,) = replay(read_csv(io.StringIO(text), c), [rules_file(RULES)])
        return res, c

    clean, _ = run(csv(None))
    dirty, counted = run(csv(300))
    assert counted["non_finite"] == 1
    a, b = clean.rules["pm10"], dirty.rules["pm10"]
    assert a.over_min > 7 and a.active_min > 7
    assert (b.over_min, b.active_min, b.triggers) == (a.over_min, a.active_min, a.triggers)


influx_values = st.one_of(
    st.floats(-1e6, 1e6),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400]),
    st.just("null"),
    st.just('"n/a"'),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(influx_values, influx_values), min_size=1, max_size=40))
def test_influx_history_counts_every_non_finite_value(rows: list[tuple[Any, Any]]) -> None:
    """InfluxDB's JSON as Python's json module reads it: NaN/Infinity tokens, numbers
    beyond the float range (the float() of a 400-digit integer raised OverflowError)."""

    def lit(x: Any) -> str:
        return repr(x) if isinstance(x, float) else str(x)

    body = ",".join(
        f'[{(T0 + i) * 1000},"site-01","m",{lit(a)},{lit(b)}]' for i, (a, b) in enumerate(rows)
    )
    text = (
        '{"results":[{"series":[{"name":"telemetry","columns":'
        '["time","site","device","pm10","dust_index"],"values":[' + body + "]}]}]}"
    )
    series = json.loads(text)["results"][0]["series"][0]
    counters: Counter[str] = Counter()
    readings = list(_influx_rows(series, counters))
    expected = sum(isinstance(x, str) and x not in ("null", '"n/a"') for pair in rows for x in pair)
    assert counters["non_finite"] == expected
    assert len(readings) == len(rows)
    assert all(math.isfinite(v) for r in readings for v in r[3].values())
    assert_engine_clean(engine_over(readings))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["pm10", "dust_index"]),
            st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e300])),
        ),
        min_size=1,
        max_size=80,
    )
)
def test_the_engine_itself_keeps_every_non_finite_value_out(
    readings: list[tuple[str, float]],
) -> None:
    """Whatever the entry path, the engine's ingest refuses NaN and infinities (counted
    ``non_finite``), also for a metric without plausibility limits."""
    eng = Engine(rules_file(RULES))
    for i, (metric, v) in enumerate(readings):
        eng.ingest_values("site-01", "m", T0 + i, i, {metric: v}, T0 + i)
        eng.tick(T0 + i)
    assert eng.counters["non_finite"] == sum(not math.isfinite(v) for _, v in readings)
    assert_engine_clean(eng)


@given(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]))
def test_live_telemetry_with_a_non_finite_value_is_refused_at_decoding(token: str) -> None:
    raw = b'{"ts": 1, "seq": 1, "values": {"pm10": ' + token.encode() + b"}}"
    try:
        p.decode(p.Telemetry, raw)
    except p.ProtocolError as exc:
        assert exc.reason == "non_finite"
    else:
        raise AssertionError("decoded")


def test_influx_replay_counts_across_the_read_ahead_process(tmp_path: Path) -> None:
    """``dustgate replay --influx`` reads in a second process: the source's counts come
    back (they were lost: only a CSV reader's counters crossed). The server, in a process
    of its own (a thread here would keep the replay in one process), answers as an
    InfluxDB whose JSON carries NaN tokens would."""
    rows = ",".join(
        f'[{(T0 + i) * 1000},"site-01","m",{"NaN" if i % 10 == 3 else "200.0"}]' for i in range(300)
    )
    (tmp_path / "query").write_text(
        '{"results":[{"statement_id":0,"series":[{"name":"telemetry","columns":'
        '["time","site","device","pm10"],"values":[' + rows + "]}]}]}\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", LOOPBACK,
         "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(url + "/query", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.05)
        counters: Counter[str] = Counter()
        src = read_influx(url, "dg", float(T0), float(T0 + 300), counters=counters)
        (res,) = replay(src, [rules_file(RULES)], ahead=True, counters=counters)
    finally:
        server.terminate()
        server.wait(5)
    assert counters["non_finite"] == 30
    assert res.readings == 300 and res.counters.get("non_finite", 0) == 0
    assert res.rules["pm10"].triggers == 1
