"""Acceptance: a dead, a frozen and a healthy monitor, one hour of 10 s readings stored
through the sink into a real influxd, then ``dustgate report`` on it.

- dead: every poll failed (``comm_error``, no values);
- frozen: every reading carries the same values and the gateway flagged it ``fault``
  (its PM10, 35 ug/m3, would make it the cleanest site if flagged data counted);
- healthy: PM10 around 120, two failed polls in the hour.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import influxload
import pytest

from gateway.localservices import Influxd
from gateway.protocol import Status, Telemetry
from rules.history import quality, report
from rules.sink import points
from rules.sink.settings import InfluxSettings
from rules.sink.writer import InfluxSink

pytestmark = pytest.mark.integration

DB = "dustgate"
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
END = T0 + timedelta(hours=1)
START_MS = int(T0.timestamp() * 1000)
INTERVAL = 10
N = 3600 // INTERVAL  # 360 polls per device
HEALTHY_FAILED = {100, 101}  # two failed polls


def telemetry(site: str, k: int) -> Telemetry:
    ts = START_MS + k * INTERVAL * 1000 + 5000
    if site == "dead" or (site == "healthy" and k in HEALTHY_FAILED):
        return Telemetry(ts=ts, seq=k, values={}, status=Status.COMM_ERROR, interval_s=INTERVAL)
    if site == "frozen":
        values = {"pm10": 35.0, "pm25": 20.0, "rh": 41.0}
        return Telemetry(ts=ts, seq=k, values=values, status=Status.FAULT, interval_s=INTERVAL)
    values = {"pm10": 120.0 + k % 11, "pm25": 60.0 + k % 5, "rh": 40.0 + k % 3}
    return Telemetry(ts=ts, seq=k, values=values, interval_s=INTERVAL)


SITES = ("dead", "frozen", "healthy")


async def load(url: str, state: Path) -> None:
    async with InfluxSink(InfluxSettings(url=url, database=DB, flush_interval=0.1), state) as sink:
        for site in SITES:
            for k in range(N):
                sink.add(points.telemetry_line(site, "monitor", telemetry(site, k)))
        assert await sink.flush(60)
        assert sink.counters.dead_lettered == 0


@pytest.fixture(scope="module")
def influxd_hour(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    with influxload.loaded_influxd(tmp_path_factory, load) as ix:
        yield ix


def test_ranking_counts_only_valid_data(influxd_hour: Influxd, tmp_path: Path) -> None:
    rows = {r.site: r for r in report.run_report(influxd_hour.url, DB, T0, END, pm10_limit=150)}
    assert set(rows) == set(SITES)
    healthy = rows["healthy"]
    assert healthy.rank == 1 and healthy.note == ""
    assert (healthy.get("exceedance_min"), healthy.get("exceedance_h")) == (0, 0)
    assert healthy.get("completeness_pct") == pytest.approx(100 * (N - 2) / N)
    valid_pm10 = [120.0 + k % 11 for k in range(N) if k not in HEALTHY_FAILED]
    assert healthy.get("pm10_week") == pytest.approx(sum(valid_pm10) / len(valid_pm10))
    for site in ("dead", "frozen"):
        assert rows[site].get("completeness_pct") == 0, site
        assert rows[site].get("pm10_week") is None, site  # not 35: the frozen value
        assert rows[site].get("exceedance_min") is None, site  # unknown, not zero
        assert rows[site].get("exceedance_h") is None, site
        assert (rows[site].rank, rows[site].note) == (None, report.NO_VALID_DATA), site
        assert not rows[site].get(report.RANKED), site  # 0 or none: the dashboard says "no"
    assert (healthy.get(report.RANKED) or 0) >= 1


def test_report_cli_lists_the_frozen_site_after_the_ranking(
    influxd_hour: Influxd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ranking.csv"
    argv = ["--url", influxd_hour.url, "--db", DB, "--from", T0.isoformat()]
    assert report.main([*argv, "--to", END.isoformat(), "--csv", str(out)], now=END) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[3].split()[:2] == ["1", "healthy"]
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert (table[0]["rank"], table[0]["site"]) == ("1", "healthy")
    for r in table[1:]:
        assert (r["rank"], r["completeness_pct"], r["pm10_week"], r["note"]) == (
            "",
            "0.000",
            "",
            report.NO_VALID_DATA,
        )


def test_quality_report_names_the_causes(influxd_hour: Influxd) -> None:
    rows = {r.site: r for r in quality.run_quality(influxd_hour.url, DB, T0, END)}
    assert set(rows) == set(SITES)
    dead, frozen, healthy = rows["dead"], rows["frozen"], rows["healthy"]
    for r in rows.values():
        assert (r.device, r.day, r.span_s, r.interval_s) == ("monitor", T0.date(), 3600, 10)
        assert r.expected == N
    # dead: every poll failed -> nothing received, nothing valid, the hour is one gap
    assert (dead.readings, dead.received_pct, dead.valid_pct) == (N, 0, 0)
    assert dead.causes == {"comm_error": 100.0} and dead.longest_gap_s == 3600
    assert dead.stuck_s == {}  # no values at all: nothing to be stuck
    # frozen: everything received, nothing valid, the cause and the frozen metrics named
    assert (frozen.readings, frozen.received_pct, frozen.valid_pct) == (N, 100, 0)
    assert frozen.causes == {"fault": 100.0} and frozen.longest_gap_s == 3600
    assert set(frozen.stuck_s) == {"pm10", "pm25", "rh"}
    assert all(s >= 3600 - 2 * quality.BUCKET_MS / 1000 for s in frozen.stuck_s.values())
    # healthy: two failed polls
    assert healthy.valid_pct == healthy.received_pct == pytest.approx(100 * (N - 2) / N)
    assert healthy.causes == {"comm_error": pytest.approx(100 * 2 / N)}
    assert healthy.longest_gap_s == 3 * INTERVAL  # the readings before and after the two
    assert healthy.stuck_s == {}


def test_quality_cli_prints_a_table_per_site(
    influxd_hour: Influxd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quality.csv"
    argv = ["--url", influxd_hour.url, "--db", DB, "--quality", "--from", T0.isoformat()]
    assert report.main([*argv, "--to", END.isoformat(), "--csv", str(out)], now=END) == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if line.startswith("site ")] == [
        "site dead",
        "site frozen",
        "site healthy",
    ]
    with out.open() as f:
        table = {r["site"]: r for r in csv.DictReader(f)}
    assert table["dead"]["invalid readings by cause"] == "comm_error 100.0 %"
    assert table["frozen"]["invalid readings by cause"] == "fault 100.0 %"
    assert table["frozen"]["valid %"] == "0.0" and table["frozen"]["received %"] == "100.0"
    assert table["frozen"]["stuck"].startswith("pm10 ")
    assert table["healthy"]["valid %"] == "99.4" and table["healthy"]["longest gap"] == "30 s"
    with pytest.raises(SystemExit) as exc:
        report.main([*argv, "--stuck-after", "soon"])
    assert exc.value.code == 2
    assert "--stuck-after: expected a duration" in capsys.readouterr().err
