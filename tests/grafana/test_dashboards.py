"""Grafana provisioning and dashboards: every InfluxQL query runs against a real influxd
loaded through the sink with synthetic data, and returns the expected series and values.
Also: ``dustgate report`` on the same data (it shares the district dashboard's queries)."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import influxload
import pytest
import yaml

from gateway.localservices import Influxd
from gateway.protocol import (
    ActuatorState,
    DeviceHealth,
    Event,
    GatewayStatus,
    Status,
    Telemetry,
    UplinkHealth,
)
from rules.history import report
from rules.history.report import DISTRICT_COLUMNS, DISTRICT_QUERIES, expand_macros
from rules.incidents.machine import Book, CausePolicy, Changed, Effect, Signal
from rules.incidents.points import incident_line
from rules.incidents.ranking import (
    INCIDENT_COLUMNS,
    INCIDENT_QUERIES,
    figures,
    over_closed,
    spans_of,
)
from rules.sink import points
from rules.sink.lineprotocol import encode_line
from rules.sink.settings import InfluxSettings
from rules.sink.writer import InfluxSink, SinkCounters

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DB = "dustgate"

# Synthetic week: Monday 2026-11-23 00:00 UTC to Wednesday 12:00 UTC, one reading per
# device per minute (at :30), read period 60 s.
T0 = datetime(2026, 11, 23, tzinfo=UTC)
END = T0 + timedelta(days=2, hours=12)
WED = T0 + timedelta(days=2)
START_MS, END_MS = int(T0.timestamp() * 1000), int(END.timestamp() * 1000)
MIN = 60_000
N_MIN = (END_MS - START_MS) // MIN  # 3600 minutes


TUE10 = START_MS + 34 * 3600_000
MON12 = START_MS + 12 * 3600_000
MON05 = START_MS + 5 * 3600_000


def pm10(site: str, device: str, t_ms: int) -> float | None:
    """The data, as a function: None = a failed poll that minute (comm_error)."""
    minute = (t_ms - START_MS) // MIN
    wed_min = (t_ms - int(WED.timestamp() * 1000)) // MIN
    if site == "site-a" and device == "gate":
        return 260.0 if 0 <= wed_min < 30 else 100.0 + (minute % 5)
    if site == "site-a" and device == "north":
        if 0 <= wed_min < 30:
            return 260.0  # with gate: 30 minutes and the hour Wed 00:00 over the limit
        return 5000.0 if TUE10 <= t_ms < TUE10 + 30 * MIN else 80.0
    if site == "site-b" and device == "gate":
        if minute % 2:
            return None  # half the polls fail
        # an hour over the limit, but with 30 minutes of data: no valid hourly mean
        return 400.0 if MON05 <= t_ms < MON05 + 60 * MIN else 50.0 + (minute % 3)
    raise AssertionError(device)


def quality(site: str, device: str, t_ms: int) -> tuple[Status, dict[str, Status] | None]:
    """Status and per-metric flags: a frozen spell at north (every metric a fault, the
    value absurd), ten minutes of PM10 over its range at gate (the other metrics ok)."""
    if pm10(site, device, t_ms) is None:
        return Status.COMM_ERROR, None
    if site == "site-a" and device == "north" and TUE10 <= t_ms < TUE10 + 30 * MIN:
        return Status.FAULT, None
    if site == "site-a" and device == "gate" and MON12 <= t_ms < MON12 + 10 * MIN:
        return Status.OK, {"pm10": Status.OVER_RANGE}
    return Status.OK, None


def gate_value(site: str, device: str, t_ms: int) -> float | None:
    """PM10 as sent: the over-range spell sends 3000 (and must not count)."""
    v = pm10(site, device, t_ms)
    if quality(site, device, t_ms)[1]:
        return 3000.0
    return v


DEVICES = [("site-a", "gate"), ("site-a", "north"), ("site-b", "gate")]


def readings() -> Iterator[tuple[str, str, int, float | None]]:
    """Every poll: (site, device, t, PM10 as sent or None for a failed poll)."""
    for site, device in DEVICES:
        for k in range(N_MIN):
            t = START_MS + k * MIN + 30_000
            yield site, device, t, gate_value(site, device, t)


def valid_pm10(site: str, device: str, t: int) -> bool:
    status, flags = quality(site, device, t)
    return status is Status.OK and not (flags and "pm10" in flags)


def valid_reading(site: str, device: str, t: int) -> bool:
    status, flags = quality(site, device, t)
    return status is Status.OK and not flags


def wed(minutes: int) -> int:
    return int((WED + timedelta(minutes=minutes)).timestamp() * 1000)


# (site, actuator, since, on): site-a sprays Wed 00:05-00:35, site-b Tue 10:00-10:10
ACTUATIONS = [
    ("site-a", "cannon-1", START_MS, False),
    ("site-a", "cannon-1", wed(5), True),
    ("site-a", "cannon-1", wed(35), False),
    ("site-b", "cannon-1", START_MS, False),
    ("site-b", "cannon-1", START_MS + 34 * 3600_000, True),
    ("site-b", "cannon-1", START_MS + 34 * 3600_000 + 10 * MIN, False),
]


def incident_steps() -> list[tuple[Changed, float | None]]:
    """Incidents as the incident machine makes them, each step with the ``over_s`` of
    its cleared point: site-a's Wednesday spike (00:05-00:35; acknowledged after 10
    min, overdue at 30, resolved at 40), site-b's Tuesday one (10:00-10:10;
    acknowledged after 2 min, resolved at 6)."""
    book = Book({"rule_active": CausePolicy(0, 1800)})
    out: list[tuple[Changed, float | None]] = []

    def take(effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Changed):
                log = [
                    (c.incident.updated_at, c.kind)
                    for c, _ in out
                    if c.incident.id == e.incident.id
                ]
                log.append((e.incident.updated_at, e.kind))
                out.append((e, over_closed(e.incident, log, e.incident.updated_at)))

    for site, start, ack, clear, done in (
        ("site-b", TUE10 / 1000, 120, 600, 360),
        ("site-a", wed(5) / 1000, 600, 1800, 2400),
    ):
        take(
            book.signal(Signal(site, "rule_active", "pm10-gate", True, start, "PM10 > 150"), start)
        )
        inc = book.open_incident(site, "rule_active")
        assert inc is not None
        steps = sorted([(ack, "ack"), (clear, "clear"), (1800, "tick"), (done, "resolve")])
        for dt, what in steps:
            now = start + dt
            if what == "ack":
                take(book.acknowledge(inc.id, "ines", book.incidents[inc.id].version, now))
            elif what == "clear":
                take(book.signal(Signal(site, "rule_active", "pm10-gate", False, now), now))
            elif what == "tick":
                take(book.tick(now))
            elif inc.id in book.incidents:
                take(book.resolve(inc.id, "ines", book.incidents[inc.id].version, now))
    return out


async def load(url: str, state: Path) -> None:
    s = InfluxSettings(url=url, database=DB, flush_interval=0.1)
    async with InfluxSink(s, state) as sink:
        seqs: dict[tuple[str, str], int] = {}
        for site, device, t, v in readings():
            seq = seqs.get((site, device), 0)
            seqs[(site, device)] = seq + 1
            status, flags = quality(site, device, t)
            values = (
                {}
                if v is None
                else {
                    "pm10": v,
                    "pm25": v / 2,
                    "tsp": v * 2,
                    "noise": 60.0,
                    "wind_speed": 2.5,
                    "wind_dir": 90.0,
                }
            )
            msg = Telemetry(ts=t, seq=seq, values=values, status=status, flags=flags, interval_s=60)
            sink.add(points.telemetry_line(site, device, msg))
        for site, act, since, on in ACTUATIONS:
            sink.add(
                points.actuator_line(
                    site,
                    act,
                    ActuatorState(
                        state="on" if on else "off", since=since, source="rule", cmd_id="c"
                    ),
                )
            )
        sink.add(
            points.event_line(
                "site-a",
                Event(
                    ts=wed(5),
                    kind="rule_on",
                    rule="pm10-gate",
                    severity="warning",
                    text="PM10 170 > 150",
                ),
            )
        )
        for k in range(0, N_MIN, 10):
            t = START_MS + k * MIN
            sink.add(
                points.gateway_line(
                    "site-a",
                    "gw1",
                    GatewayStatus(
                        state="online",
                        ts=t,
                        uptime_s=k * 60.0,
                        backlog=k % 4,
                        poll_errors=k // 10,
                        devices={
                            "gate": DeviceHealth(state="online"),
                            "north": DeviceHealth(state="offline"),
                        },
                        uplinks={
                            "city": UplinkHealth(connected=k < 30, backlog=max(0, k - 20)),
                            "district": UplinkHealth(connected=True, backlog=1),
                        },
                    ),
                )
            )
            sink.add(
                points.engine_line(
                    "eng-1",
                    points.EngineStats(t, 3.0, k // 100, 0),
                    SinkCounters(dead_lettered=k // 1000).as_dict(),
                )
            )
            # the service's own fields on the same point (rules.service: notify_*)
            notify = {"sent": k // 10, "failed": k // 500, "retried": k // 100,
                      "suppressed": k // 20, "flushed": k // 40}  # fmt: skip
            sink.add(
                encode_line(
                    points.GATEWAY,
                    {"engine": "eng-1"},
                    {f"notify_{n}": v for n, v in notify.items()},
                    t,
                )
            )
        for ch, over in incident_steps():
            sink.add(incident_line(ch, over))
        assert await sink.flush(60)
        assert sink.counters.dead_lettered == 0


@pytest.fixture(scope="module")
def loaded_influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    with influxload.loaded_influxd(tmp_path_factory, load) as ix:
        yield ix


VARS: dict[str, Any] = {
    "site": ["site-a"],
    "device": ".*",
    "pm10_limit": "150",
    "min_completeness": "75",
}


def expand(q: str, **variables: Any) -> str:
    return expand_macros(
        q,
        start_ms=START_MS,
        end_ms=END_MS,
        interval_ms=MIN,
        variables={**VARS, **variables},
        tz=UTC,
    )


def run(ix: Influxd, q: str) -> list[dict[str, Any]]:
    res = ix.query(q, db=DB)["results"][0]  # type: ignore[index]
    assert "error" not in res, f"{res['error']}\n  in: {q}"
    return res.get("series", [])  # type: ignore[no-any-return]


def all_queries() -> list[tuple[str, str]]:
    """(where, query) for every InfluxQL string in every dashboard."""
    out = []
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        for var in d["templating"]["list"]:
            if var["type"] == "query":
                out.append((f"{path.name} var {var['name']}", var["query"]))
        for ann in d["annotations"]["list"]:
            if "target" in ann and "query" in ann["target"]:
                out.append((f"{path.name} annotation {ann['name']}", ann["target"]["query"]))
        for panel in d["panels"]:
            for t in panel.get("targets", []):
                out.append((f"{path.name} {panel['title']} {t['refId']}", t["query"]))
    return out


# ----------------------------------------------------------- static checks


def _generate_module() -> Any:
    spec = importlib.util.spec_from_file_location("dg_generate", GRAFANA / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_dashboards_match_the_generator():
    gen = _generate_module()
    assert sorted(gen.DASHBOARDS) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text(encoding="utf-8") == gen.render(path.name), (
            f"{path.name} is stale: run python deploy/grafana/generate.py"
        )


def test_provisioning_files():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/dustgate.yaml").read_text())
    [source] = ds["datasources"]
    assert source["type"] == "influxdb" and source["jsonData"]["version"] == "InfluxQL"
    assert re.fullmatch(r"\$\{DUSTGATE_INFLUX_URL:-http://[^}]+\}", source["url"])
    assert source["jsonData"]["dbName"] == "${DUSTGATE_INFLUX_DB:-dustgate}"
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/dustgate.yaml").read_text())
    [provider] = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/dustgate"
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["schemaVersion"] >= 36 and d["uid"].startswith("dustgate-")
        for panel in d["panels"]:
            assert panel["datasource"]["uid"] == source["uid"]
            for t in panel["targets"]:
                assert t["rawQuery"] is True and t["datasource"]["uid"] == source["uid"]
    site = json.loads((GRAFANA / "dashboards/site.json").read_text())
    assert {v["name"] for v in site["templating"]["list"]} >= {"site", "device"}


def test_district_dashboard_uses_the_report_queries():
    d = json.loads((GRAFANA / "dashboards/district.json").read_text())
    table, incidents = d["panels"]
    assert {t["refId"]: t["query"] for t in table["targets"]} == DISTRICT_QUERIES
    assert {t["refId"]: t["query"] for t in incidents["targets"]} == INCIDENT_QUERIES


def test_site_dashboard_thresholds_are_the_documented_limits():
    d = json.loads((GRAFANA / "dashboards/site.json").read_text())
    by_title = {p["title"]: p for p in d["panels"]}

    def steps(title: str) -> list[float]:
        th = by_title[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        return [s["value"] for s in th if s["value"] is not None]

    assert steps("PM2.5") == [75] and steps("PM10") == [100, 150] and steps("TSP") == [300]


# -------------------------------------------------------- against influxd


@pytest.mark.parametrize("where,query", all_queries(), ids=[w for w, _ in all_queries()])
def test_every_query_runs_and_returns_data(loaded_influxd: Influxd, where: str, query: str):
    series = run(loaded_influxd, expand(query))
    assert series, f"{where}: no data for\n  {expand(query)}"
    assert any(any(v is not None for row in s["values"] for v in row[1:]) for s in series)


def test_multi_value_and_all_site_selection(loaded_influxd: Influxd):
    q = next(q for w, q in all_queries() if w == "site.json PM10 A")
    for value in (["site-a", "site-b"], ".*"):
        series = run(loaded_influxd, expand(q, site=value))
        assert {s["tags"]["device"] for s in series} == {"gate", "north"}


def _at(series: list[dict[str, Any]], tag: str, value: str, ts: int) -> Any:
    [s] = [s for s in series if s["tags"][tag] == value]
    [row] = [r for r in s["values"] if r[0] == ts]
    return row[1]


def test_site_panels_exact_values(loaded_influxd: Influxd):
    q = dict((w, q) for w, q in all_queries())
    pm = run(loaded_influxd, expand(q["site.json PM10 A"]))
    assert _at(pm, "device", "gate", wed(0)) == 260.0
    assert _at(pm, "device", "north", wed(0)) == 260.0
    assert _at(pm, "device", "north", wed(40)) == 80.0
    # flagged data are not drawn as concentrations: a fault hides every metric, a flag on
    # PM10 hides PM10 only
    assert _at(pm, "device", "north", TUE10 + 5 * MIN) is None
    assert _at(pm, "device", "gate", MON12 + 5 * MIN) is None
    pm25 = run(loaded_influxd, expand(q["site.json PM2.5 A"]))
    assert _at(pm25, "device", "gate", MON12 + 5 * MIN) == 1500.0
    assert _at(pm25, "device", "north", TUE10 + 5 * MIN) is None
    bad = run(loaded_influxd, expand(q["site.json Invalid readings by cause A"]))
    assert {(s["tags"]["device"], s["tags"]["quality"]) for s in bad} == {
        ("north", "fault"),
        ("gate", "over_range"),
    }
    [frozen] = [s for s in bad if s["tags"]["quality"] == "fault"]
    assert sum(r[1] or 0 for r in frozen["values"]) == 30
    cannons = run(loaded_influxd, expand(q["site.json Fog cannons A"]))
    assert _at(cannons, "actuator", "cannon-1", wed(10)) == 1
    assert _at(cannons, "actuator", "cannon-1", wed(40)) == 0
    per_interval = run(loaded_influxd, expand(q["site.json Data completeness per interval A"]))
    assert _at(per_interval, "device", "gate", wed(0)) == 100
    assert _at(per_interval, "device", "north", TUE10 + 5 * MIN) == 0  # frozen: not valid
    total = run(
        loaded_influxd, expand(q["site.json Data completeness (time range) A"], site=["site-b"])
    )
    assert _at(total, "device", "gate", START_MS) == pytest.approx(50.0)  # half the polls failed
    total = run(loaded_influxd, expand(q["site.json Data completeness (time range) A"]))
    assert _at(total, "device", "north", START_MS) == pytest.approx(100 * (1 - 30 / N_MIN))
    [anno] = run(loaded_influxd, expand(q["site.json annotation Rule events"]))
    assert anno["columns"] == ["time", "text", "kind", "rule", "severity"]
    assert anno["values"] == [[wed(5), "PM10 170 > 150", "rule_on", "pm10-gate", "warning"]]
    sites = run(loaded_influxd, expand(q["site.json var site"]))
    assert [v[1] for v in sites[0]["values"]] == ["site-a", "site-b"]
    devs = run(loaded_influxd, expand(q["site.json var device"], site=["site-b"]))
    assert [v[1] for v in devs[0]["values"]] == ["gate"]


def test_gateway_panels_exact_values(loaded_influxd: Influxd):
    q = dict((w, q) for w, q in all_queries())
    offline = run(loaded_influxd, expand(q["gateway.json Devices offline A"]))
    assert _at(offline, "gateway", "gw1", START_MS) == 1
    errors = run(loaded_influxd, expand(q["gateway.json Poll errors per interval A"]))
    assert _at(errors, "gateway", "gw1", START_MS + 10 * MIN) == 1  # counter went 0 -> 1
    rate = run(loaded_influxd, expand(q["gateway.json Rule engine: messages/s A"]))
    assert _at(rate, "engine", "eng-1", START_MS) == 3.0
    name = "gateway.json Rule engine: notifications per interval"
    held = run(loaded_influxd, expand(q[f"{name} D"]))
    assert _at(held, "engine", "eng-1", START_MS + 20 * MIN) == 1  # counter went 0 -> 1
    failed = run(loaded_influxd, expand(q[f"{name} B"]))
    assert _at(failed, "engine", "eng-1", START_MS + 500 * MIN) == 1
    down = run(
        loaded_influxd, expand(q["gateway.json HJ 212 platform links: down / records waiting A"])
    )
    waiting = run(
        loaded_influxd, expand(q["gateway.json HJ 212 platform links: down / records waiting B"])
    )
    assert _at(down, "gateway", "gw1", START_MS + 20 * MIN) == 0
    assert _at(down, "gateway", "gw1", START_MS + 30 * MIN) == 1  # the city link dropped
    assert _at(waiting, "gateway", "gw1", START_MS + 30 * MIN) == 11  # 10 + 1


def exceedance_hours(site: str, rows: list[tuple[str, int, float]]) -> int:
    """Hours whose site mean of the devices' valid hourly means is over 150, a device's
    hour counting only with 45 minutes of valid PM10 (one reading a minute here)."""
    per_device: dict[tuple[int, str], list[float]] = {}
    for d, t, v in rows:
        per_device.setdefault((t // 3600_000, d), []).append(v)
    hours: dict[int, list[float]] = {}
    for (h, _), vs in per_device.items():
        if len(vs) >= 45:
            hours.setdefault(h, []).append(sum(vs) / len(vs))
    return sum(1 for ms in hours.values() if sum(ms) / len(ms) > 150)


def expected_district() -> dict[str, dict[str, float]]:
    """The ranking computed in plain Python from the generator functions: valid data only."""
    out: dict[str, dict[str, float]] = {}
    wed_ms = int(WED.timestamp() * 1000)
    for site in ("site-a", "site-b"):
        polls = [(d, t, v) for s, d, t, v in readings() if s == site]
        rows = [(d, t, v) for d, t, v in polls if v is not None and valid_pm10(site, d, t)]
        minute_means: dict[int, list[float]] = {}
        for _, t, v in rows:
            minute_means.setdefault(t // MIN, []).append(v)
        valid = [
            sum(1 for d, t, _ in polls if d == dev and valid_reading(site, d, t))
            for s, dev in DEVICES
            if s == site
        ]
        out[site] = {
            "pm10_week": sum(v for _, _, v in rows) / len(rows),
            "pm10_today": (
                sum(v for _, t, v in rows if t >= wed_ms)
                / sum(1 for _, t, _ in rows if t >= wed_ms)
            ),
            "exceedance_min": sum(1 for vs in minute_means.values() if sum(vs) / len(vs) > 150),
            "completeness_pct": sum(n * 100 * 60 * 1000 / (END_MS - START_MS) for n in valid)
            / len(valid),
            "exceedance_h": exceedance_hours(site, rows),
        }
    out["site-a"]["spray_min"] = 30
    out["site-b"]["spray_min"] = 10
    return out


def test_district_ranking_values(loaded_influxd: Influxd):
    want = expected_district()
    # the synthetic data do what we meant: 30 minutes over the limit on Wednesday; the
    # over-range spell (3000 at gate) and the frozen spell (5000 at north) do not count
    assert want["site-a"]["exceedance_min"] == 30
    assert want["site-a"]["exceedance_h"] == 1  # Wed 00:00
    # site-b: an hour at 400, but every other poll failed: 30 minutes over the limit and
    # no valid hourly mean, so no exceedance hour
    assert (want["site-b"]["exceedance_min"], want["site-b"]["exceedance_h"]) == (30, 0)
    assert want["site-a"]["completeness_pct"] == pytest.approx(100 * (1 - 20 / N_MIN))
    answers = {
        ref: loaded_influxd.query(expand(q, site=".*"), db=DB)
        for ref, q in DISTRICT_QUERIES.items()
    }
    rows = {r.site: r for r in report.rank(report.rows_from_results(answers))}
    assert set(rows) == {"site-a", "site-b"}
    for site, values in want.items():
        for alias, value in values.items():
            assert rows[site].get(alias) == pytest.approx(value), (site, alias)
    assert rows["site-b"].get("exceedance_h") == 0  # count() gives no row; the report says 0


@pytest.mark.parametrize("limit", [75.0, 40.0])
def test_dashboard_marks_as_ranked_what_the_report_ranks(loaded_influxd: Influxd, limit: float):
    answers = {
        ref: loaded_influxd.query(expand(q, site=".*", min_completeness=f"{limit:g}"), db=DB)
        for ref, q in DISTRICT_QUERIES.items()
    }
    rows = report.rank(report.rows_from_results(answers), limit)
    marks = {r.site: ((r.get(report.RANKED) or 0) >= 1, r.rank is not None) for r in rows}
    assert marks == {"site-a": (True, True), "site-b": (limit < 50, limit < 50)}


@pytest.mark.parametrize("min_completeness", [None, "40"])
def test_report_cli_on_known_data(
    loaded_influxd: Influxd,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    min_completeness: str | None,
):
    out_csv = tmp_path / "ranking.csv"
    argv = ["--url", loaded_influxd.url, "--db", DB, "--from", T0.isoformat()]
    argv += ["--to", END.isoformat(), "--csv", str(out_csv)]
    if min_completeness:
        argv += ["--min-completeness", min_completeness]
    assert report.main(argv, now=END) == 0
    printed = capsys.readouterr().out
    assert "site-a" in printed and "site-b" in printed
    assert printed.index("site-a") < printed.index("site-b")  # dirtier site ranked first
    with out_csv.open() as f:
        table = list(csv.DictReader(f))
    want = expected_district()
    assert [r["site"] for r in table] == ["site-a", "site-b"]
    if min_completeness:
        assert [(r["rank"], r["note"]) for r in table] == [("1", ""), ("2", "")]
    else:
        # site-b has half its data: listed, marked, not ranked (whatever its PM10)
        assert [(r["rank"], r["note"]) for r in table] == [
            ("1", ""),
            ("", "completeness under 75 %"),
        ]
        assert "completeness under 75 %" in printed.splitlines()[-1]
    for r in table:
        for alias, _ in DISTRICT_COLUMNS.values():
            if alias == report.RANKED:
                assert alias not in r  # said by the rank and the note
                continue
            expected = want[r["site"]][alias]
            assert float(r[alias]) == pytest.approx(expected, abs=1e-3), (r["site"], alias)


def test_report_unreachable_database_is_a_clean_error(capsys: pytest.CaptureFixture[str]):
    from gateway.localservices import free_port

    assert report.main(["--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "dustgate report:" in capsys.readouterr().err


def test_incident_figures_in_influxdb_agree_with_the_console(loaded_influxd: Influxd):
    """The report's and Grafana's incident figures (InfluxQL over the incident points)
    equal the console's (rules.incidents.ranking over the incidents themselves)."""
    steps = incident_steps()
    final = {ch.incident.id: ch.incident for ch, _ in steps}
    spans = [
        span
        for inc in final.values()
        for span in spans_of(
            inc, [(ch.incident.updated_at, ch.kind) for ch, _ in steps if ch.incident.id == inc.id]
        )
    ]
    want = {f.site: f for f in figures(final.values(), spans, START_MS / 1000, END_MS / 1000)}
    assert want["site-a"].overdue == 1 and want["site-a"].resolve_median_min == 40
    answers = {
        ref: loaded_influxd.query(expand(q, site=".*"), db=DB)
        for ref, q in INCIDENT_QUERIES.items()
    }
    rows = {r.site: r for r in report.rows_from_results(answers)}
    assert set(rows) == {"site-a", "site-b"}
    for site, fig in want.items():
        for alias, _ in INCIDENT_COLUMNS.values():
            assert rows[site].get(alias) == pytest.approx(getattr(fig, alias)), (site, alias)
    table = report.format_table(list(rows.values()))
    assert "To resolve, median (min)" in table.splitlines()[0]
