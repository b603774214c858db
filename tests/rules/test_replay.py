"""Replay statistics on hand-made data with known answers; CSV formats; CLI; InfluxDB."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.localservices import Influxd
from gateway.protocol import Status, Telemetry
from rules.core.config import load_rules_file
from rules.history.replay import ReplayError, main, read_csv, read_influx, replay
from rules.sink.points import telemetry_line

RULES = """\
actuators:
  site-01/cannon-1: {litres_per_minute: 10}
defaults: {min_staleness: 10s, max_staleness: 60s}
rules:
  - id: pm10
    site: site-01
    metric: pm10
    devices: [m]
    aggregate: last
    window: 1m
    above: 150
    clear: 100
    actions: {lease: [cannon-1]}
    unless:
      - {name: wind, metric: wind_speed, devices: [m], above: 10}
"""
T0 = 1_780_000_000  # whole seconds


def scenario() -> Iterator[tuple[int, float, float]]:
    """(second, pm10, wind): 2 min of dust, later 1 min of dust in a gale."""
    for s in range(600):
        pm10 = 200.0 if 60 <= s < 180 or 300 <= s < 360 else 50.0
        wind = 15.0 if 300 <= s < 360 else 2.0
        yield s, pm10, wind


def wide_csv(iso: bool = False) -> str:
    lines = ["ts,site,device,pm10,wind_speed"]
    for s, pm10, wind in scenario():
        ts = (
            datetime.fromtimestamp(T0 + s, UTC).isoformat().replace("+00:00", "Z")
            if iso
            else str((T0 + s) * 1000)
        )
        lines.append(f"{ts},site-01,m,{pm10},{wind}")
    return "\n".join(lines) + "\n"


def long_csv() -> str:
    lines = ["ts,site,device,metric,value,status"]
    for s, pm10, wind in scenario():
        ms = (T0 + s) * 1000
        lines.append(f"{ms},site-01,m,pm10,{pm10},ok")
        lines.append(f"{ms},site-01,m,wind_speed,{wind},ok")
    return "\n".join(lines) + "\n"


EXPECTED = {
    "triggers": 1,
    "active_min": 2.0,  # seconds 60..179
    "water_l": 20.0,  # 10 l/min x 2 min
    "longest_exceed_min": 2.0,
    "over_min": 3.0,  # 2 min + 1 min in the gale
    "blocked_min": 1.0,  # the gale minute: over threshold, interlock holding
}


def stats_of(text: str, rules: str = RULES) -> dict:
    (res,) = replay(read_csv(io.StringIO(text)), [load_rules_file("r.yaml", text=rules)])
    row = res.rules["pm10"].row()
    return {k: row[k] for k in EXPECTED}


@pytest.mark.parametrize("make", [wide_csv, long_csv, lambda: wide_csv(iso=True)])
def test_known_answers_for_every_csv_format(make) -> None:  # type: ignore[no-untyped-def]
    assert stats_of(make()) == EXPECTED


def test_stop_reasons_and_counters() -> None:
    (res,) = replay(read_csv(io.StringIO(wide_csv())), [load_rules_file("r.yaml", text=RULES)])
    assert res.rules["pm10"].stops == {"cleared": 1}
    assert res.readings == 600 and res.counters["readings"] == 600


def test_gaps_are_ticked_through_so_timers_and_staleness_run() -> None:
    # dust, then the sensor goes silent for an hour: the run must stop as stale
    lines = ["ts,site,device,pm10,wind_speed"]
    for s in range(100):
        lines.append(f"{(T0 + s) * 1000},site-01,m,200,2")
    lines.append(f"{(T0 + 3700) * 1000},site-01,m,50,2")
    (res,) = replay(read_csv(io.StringIO("\n".join(lines))), [load_rules_file("r", text=RULES)])
    st = res.rules["pm10"]
    assert st.stops == {"stale": 1}
    # active from tick 1 until stale (last reading at 99, stale 10 s later)
    assert 1.6 <= st.active_min <= 1.9


def test_bad_rows_are_counted_not_fatal() -> None:
    text = "ts,site,device,pm10\n1000,site-01,m,abc\n2000,site-01,m,10\n3000,site-01\n"
    c: Counter[str] = Counter()
    rows = list(read_csv(io.StringIO(text), c))
    assert len(rows) == 1 and rows[0][3] == {"pm10": 10.0}
    assert c["bad_rows"] == 2
    with pytest.raises(ReplayError):
        list(read_csv(io.StringIO("time,place\n1,2\n")))


def test_cli_json_and_compare(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(RULES)
    (tmp_path / "b.yaml").write_text(RULES.replace("above: 150", "above: 250"))
    (tmp_path / "data.csv").write_text(long_csv())
    out = tmp_path / "report.json"
    rc = main([str(tmp_path / "a.yaml"), "--csv", str(tmp_path / "data.csv"), "--compare",
               str(tmp_path / "b.yaml"), "--format", "json", "--out", str(out)])  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["runs"][0]["rules"][0]["triggers"] == 1
    assert doc["runs"][1]["rules"][0]["triggers"] == 0
    assert doc["delta"]["pm10"]["triggers"] == -1
    assert doc["delta"]["pm10"]["water_l"] == -20.0


def test_cli_table_and_csv_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(RULES)
    (tmp_path / "data.csv").write_text(wide_csv())
    assert main([str(tmp_path / "a.yaml"), "--csv", str(tmp_path / "data.csv")]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["rule", "triggers", "active_min", "water_l",
                                              "longest_exceed_min", "over_min", "blocked_min"]  # fmt: skip
    assert table.splitlines()[2].split() == ["pm10", "1", "2.0", "20.0", "2.0", "3.0", "1.0"]
    assert "600 readings" in table
    rc = main([str(tmp_path / "a.yaml"), "--csv", str(tmp_path / "data.csv"), "--format", "csv",
               "--from", str((T0 + 200) * 1000)])  # fmt: skip
    assert rc == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == (
        "rules_file,rule,triggers,active_min,water_l,longest_exceed_min,over_min,blocked_min"
    )
    assert rows[1] == "a.yaml,pm10,0,0.0,0.0,1.0,1.0,1.0"  # only the gale minute is left


def test_cli_reports_config_and_input_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("clear: 100", "clear: 200"))
    assert main([str(bad), "--csv", "x.csv"]) == 1
    assert f"{bad}:12:12: rules[0].clear" in capsys.readouterr().err
    (tmp_path / "a.yaml").write_text(RULES)
    assert main([str(tmp_path / "a.yaml"), "--csv", str(tmp_path / "missing.csv")]) == 1
    assert main([str(tmp_path / "a.yaml")]) == 2  # a source is required


@pytest.mark.integration
def test_influx_source_gives_the_same_answers(influxd: Influxd) -> None:
    influxd.create_database("dg")
    lines = [
        f"telemetry,site=site-01,device=m,model=x pm10={pm10},wind_speed={wind} {(T0 + s) * 1000}"
        for s, pm10, wind in scenario()
    ]
    influxd.write("dg", "\n".join(lines))
    rf = load_rules_file("r.yaml", text=RULES)
    src = read_influx(influxd.url, "dg", float(T0), float(T0 + 600), chunk_size=100)
    (res,) = replay(src, [rf])
    row = res.rules["pm10"].row()
    assert {k: row[k] for k in EXPECTED} == EXPECTED
    assert res.readings == 600
    with pytest.raises(ReplayError):
        list(read_influx(influxd.url, "nope", 0.0, 1.0))
    # points as the sink stores them: status and flags are tags, interval_s is no metric
    flagged = Telemetry(
        ts=(T0 + 700) * 1000,
        seq=1,
        values={"pm10": 900.0, "pm25": 40.0},
        flags={"pm10": Status.OVER_RANGE},
        interval_s=10,
    )
    frozen = Telemetry(ts=(T0 + 710) * 1000, seq=2, values={"pm10": 5.0}, status=Status.FAULT)
    influxd.write(
        "dg", "\n".join(telemetry_line("site-01", "m", t) or "" for t in (flagged, frozen))
    )
    got = list(read_influx(influxd.url, "dg", float(T0 + 650), float(T0 + 800)))
    assert [(g[3], g[4], g[5]) for g in got] == [
        ({"pm10": 900.0, "pm25": 40.0}, "ok", {"pm10": "over_range"}),
        ({"pm10": 5.0}, "fault", None),
    ]


# ------------------------------------------- figures independent of the poll interval
# The same physical episode (dust over the limit for a while, part of it in a gale
# that blocks the rule) sampled every 1 s, 10 s or 60 s must give the same minutes
# over the limit, minutes blocked and longest exceedance, within one poll: a
# reading's value holds until the next one, so the sampled episode starts and ends
# at most one poll late. Windows and staleness cover a 60 s poll.
SLOW_RULES = (
    RULES.replace("max_staleness: 60s", "max_staleness: 5m")
    .replace("window: 1m", "window: 2m")
    .replace("above: 10}", "above: 10, window: 5m}")
)
FIGURES = ("over_min", "blocked_min", "longest_exceed_min")


def sampled(
    interval: int, length: int, dust: tuple[int, int], gale: tuple[int, int], phase: int = 0
) -> str:
    """The episode every ``interval`` s: pm10 200 during ``dust`` [start, end), wind 15
    during ``gale``, quiet air otherwise."""
    lines = ["ts,site,device,pm10,wind_speed"]
    for s in range(phase, length, interval):
        pm10 = 200.0 if dust[0] <= s < dust[1] else 50.0
        wind = 15.0 if gale[0] <= s < gale[1] else 2.0
        lines.append(f"{(T0 + s) * 1000},site-01,m,{pm10},{wind}")
    return "\n".join(lines) + "\n"


def figures(text: str) -> dict[str, float]:
    (res,) = replay(read_csv(io.StringIO(text)), [load_rules_file("r.yaml", text=SLOW_RULES)])
    stats = res.rules["pm10"]
    return {k: float(getattr(stats, k)) for k in FIGURES}


def test_ten_second_data_counts_a_blocked_episode_in_full() -> None:
    """Issue 21's case: ``interval: 10s``, over the limit for 25 min, 20 of them in a
    gale (blocked). The replay skipped the seconds between readings while nothing
    was "busy", and an idle rule over its threshold but blocked was not: it counted
    about a fifth (over 9.0, blocked 4.0 min)."""
    dust, gale = (600, 2100), (900, 2100)
    one = figures(sampled(1, 3000, dust, gale))
    ten = figures(sampled(10, 3000, dust, gale))
    assert one == pytest.approx({"over_min": 25.0, "blocked_min": 20.0, "longest_exceed_min": 25.0})
    for k in FIGURES:
        assert abs(ten[k] - one[k]) <= 10 / 60, (k, ten, one)


@settings(max_examples=25, deadline=None)
@given(
    interval=st.sampled_from([10, 60]),
    phase=st.integers(0, 59),
    start=st.integers(120, 900),
    length=st.integers(60, 1200),
    gale_at=st.floats(0.0, 1.0),
    gale_len=st.floats(0.0, 1.0),
)
def test_figures_are_the_same_within_one_poll_at_any_poll_interval(
    interval: int, phase: int, start: int, length: int, gale_at: float, gale_len: float
) -> None:
    dust = (start, start + length)
    g0 = start + int(gale_at * length)
    gale = (g0, g0 + int(gale_len * (dust[1] - g0)))
    total = dust[1] + 600
    truth = figures(sampled(1, total, dust, gale))
    seen = figures(sampled(interval, total, dust, gale, phase % interval))
    for k in FIGURES:
        assert abs(seen[k] - truth[k]) <= interval / 60 + 1e-9, (k, seen, truth)
    assert truth["over_min"] * 60 == pytest.approx(length)  # the 1 s series: to the second
