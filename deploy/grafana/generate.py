"""Generate the Grafana dashboards (``dashboards/*.json``) from one Python source.

Run ``python deploy/grafana/generate.py`` after editing; a test checks that
the committed JSON equals what this script writes, and runs every InfluxQL
query in it against a real influxd.  ``dustgate report`` reads its queries
from ``district.json`` (by refId), so the terminal ranking and the dashboard
can never disagree.

Thresholds drawn on the site dashboard, and where they come from:

* PM2.5 75, PM10 150, TSP 300 ug/m3: GB 3095-2012 grade II 24-hour limits
  (PM10 150 is also the ON threshold of the example rule ``pm10-gate``, whose
  clear threshold 100 is drawn in yellow);
* noise 70 / 55 dB(A): GB 12523-2011 construction-site boundary limits, day /
  night.

Schema: Grafana 10/11 (schemaVersion 39), InfluxQL in raw mode only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
from rules.history.report import (
    DEFAULT_MIN_COMPLETENESS,
    DISTRICT_COLUMNS,
    DISTRICT_QUERIES,
    NO_VALID_DATA,
)
from rules.incidents.ranking import INCIDENT_COLUMNS, INCIDENT_QUERIES
from rules.sink.points import VALID_READING, valid_metric

DS = {"type": "influxdb", "uid": "dustgate-influxdb"}
HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"

SITE_DEVICE = '"site" =~ /^$site$/ AND "device" =~ /^$device$/ AND $timeFilter'
SITE_ONLY = '"site" =~ /^$site$/ AND $timeFilter'
# the time valid readings stand for, and a 0 for every device that sent anything
VALID_COVER = (
    f'SELECT sum("interval_s") AS "valid_s" FROM "telemetry" WHERE {SITE_DEVICE} '
    f"AND {VALID_READING}"
)
ZERO_COVER = f'SELECT count("seq") * 0 AS "valid_s" FROM "telemetry" WHERE {SITE_DEVICE}'
COMPLETENESS_NOTE = (
    "Valid data / expected: the time the device's valid readings stand for (each reading "
    "carries the device's read interval) over the interval. Only readings with status ok "
    "and no flagged metric count; a device sending only faults or communication errors "
    "shows 0."
)

# GB 3095-2012 grade II 24 h limits; example rule pm10-gate: above 150, clear 100.
PM25_LIMIT, PM10_LIMIT, PM10_CLEAR, TSP_LIMIT = 75, 150, 100, 300
NOISE_DAY, NOISE_NIGHT = 70, 55  # GB 12523-2011


def target(ref: str, query: str, alias: str = "", fmt: str = "time_series") -> dict[str, Any]:
    t: dict[str, Any] = {
        "refId": ref,
        "datasource": DS,
        "rawQuery": True,
        "query": query,
        "resultFormat": fmt,
    }
    if alias:
        t["alias"] = alias
    return t


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def panel(
    pid: int,
    title: str,
    kind: str,
    grid: tuple[int, int, int, int],
    targets: list[dict[str, Any]],
    *,
    unit: str = "",
    steps: dict[str, Any] | None = None,
    threshold_style: str = "off",
    description: str = "",
    extra_defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    transformations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    defaults: dict[str, Any] = {"unit": unit} if unit else {}
    if steps:
        defaults["thresholds"] = steps
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "spanNulls": False,
            "thresholdsStyle": {"mode": threshold_style},
        }
    defaults.update(extra_defaults or {})
    p: dict[str, Any] = {
        "id": pid,
        "type": kind,
        "title": title,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or {},
    }
    if description:
        p["description"] = description
    if transformations:
        p["transformations"] = transformations
    return p


def query_var(name: str, label: str, query: str, *, multi: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def custom_var(name: str, label: str, values: list[str], default: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": ",".join(values),
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": v == default, "text": v, "value": v} for v in values],
    }


SITE_VAR = query_var("site", "Site", 'SHOW TAG VALUES FROM "telemetry" WITH KEY = "site"')
DEVICE_VAR = query_var(
    "device",
    "Device",
    'SHOW TAG VALUES FROM "telemetry" WITH KEY = "device" WHERE "site" =~ /^$site$/',
)
PM10_LIMIT_VAR = custom_var(
    "pm10_limit", "PM10 exceedance limit (ug/m3)", ["80", "100", "150", "250"], str(PM10_LIMIT)
)
MIN_COMPLETENESS_VAR = custom_var(
    "min_completeness",
    "Ranked from completeness (%)",
    ["50", "75", "90"],
    f"{DEFAULT_MIN_COMPLETENESS:g}",
)


INCIDENT_ANNOTATIONS: dict[str, Any] = {
    "name": "Incidents",
    "enable": True,
    "iconColor": "red",
    "datasource": DS,
    "target": {
        "refId": "Inc",
        "fromAnnotations": True,
        "rawQuery": True,
        "query": f'SELECT "text", "kind", "cause", "site" FROM "incident" WHERE {SITE_ONLY}',
        "textColumn": "text",
        "tagsColumn": "kind,cause,site",
    },
}


def dashboard(
    uid: str,
    title: str,
    panels: list[dict[str, Any]],
    variables: list[dict[str, Any]],
    *,
    time_from: str = "now-6h",
    annotations: list[dict[str, Any]] | None = None,
    description: str = "",
) -> dict[str, Any]:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["dustgate"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": [builtin, *(annotations or [])]},
        "panels": panels,
    }


# ------------------------------------------------------------------ site


def metric_query(fn: str, metric: str) -> str:
    """One metric per device and interval, valid values only (see rules.sink.points)."""
    return (
        f'SELECT {fn}("{metric}") FROM "telemetry" WHERE {SITE_DEVICE} AND {valid_metric(metric)} '
        'GROUP BY time($__interval), "device" fill(null)'
    )


def pm_panel(
    pid: int,
    metric: str,
    title: str,
    grid: tuple[int, int, int, int],
    steps: dict[str, Any],
    note: str,
) -> dict[str, Any]:
    q = metric_query("mean", metric)
    return panel(
        pid,
        title,
        "timeseries",
        grid,
        [target("A", q, "$tag_device")],
        unit="conμgm3",
        steps=steps,
        threshold_style="line+area",
        description=note,
    )


def site_dashboard() -> dict[str, Any]:
    gb = "Threshold: GB 3095-2012 grade II 24-hour limit"
    panels = [
        pm_panel(
            1,
            "pm25",
            "PM2.5",
            (0, 0, 8, 8),
            thresholds(("green", None), ("red", PM25_LIMIT)),
            f"{gb} ({PM25_LIMIT}).",
        ),
        pm_panel(
            2,
            "pm10",
            "PM10",
            (8, 0, 8, 8),
            thresholds(("green", None), ("yellow", PM10_CLEAR), ("red", PM10_LIMIT)),
            f"{gb} ({PM10_LIMIT}); also the ON threshold of the example rule pm10-gate, "
            f"whose clear threshold ({PM10_CLEAR}) is the yellow band.",
        ),
        pm_panel(
            3,
            "tsp",
            "TSP",
            (16, 0, 8, 8),
            thresholds(("green", None), ("red", TSP_LIMIT)),
            f"{gb} ({TSP_LIMIT}).",
        ),
        panel(
            4,
            "Noise LAeq",
            "timeseries",
            (0, 8, 8, 8),
            [
                target(
                    "A",
                    metric_query("mean", "noise"),
                    "$tag_device",
                )
            ],
            unit="dB",
            threshold_style="line",
            steps=thresholds(("green", None), ("yellow", NOISE_NIGHT), ("red", NOISE_DAY)),
            description="GB 12523-2011 site boundary limits: 70 dB(A) day, 55 dB(A) night.",
        ),
        panel(
            5,
            "Wind speed",
            "timeseries",
            (8, 8, 8, 8),
            [
                target(
                    "A",
                    metric_query("mean", "wind_speed"),
                    "$tag_device",
                )
            ],
            unit="velocityms",
        ),
        panel(
            6,
            "Wind direction",
            "timeseries",
            (16, 8, 8, 8),
            [
                target(
                    "A",
                    metric_query("last", "wind_dir"),
                    "$tag_device",
                )
            ],
            unit="degree",
            description="Last reading per interval (a mean of angles is wrong around north).",
            extra_defaults={
                "min": 0,
                "max": 360,
                "custom": {
                    "drawStyle": "points",
                    "pointSize": 4,
                    "thresholdsStyle": {"mode": "off"},
                },
            },
        ),
        panel(
            7,
            "Fog cannons",
            "state-timeline",
            (0, 16, 24, 6),
            [
                target(
                    "A",
                    f'SELECT last("on") FROM "actuator" WHERE {SITE_ONLY} '
                    'GROUP BY time($__interval), "actuator" fill(previous)',
                    "$tag_actuator",
                )
            ],
            description="Actuator state as reported by the agent (read back from the relay).",
            extra_defaults={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "off", "color": "transparent", "index": 0},
                            "1": {"text": "on", "color": "blue", "index": 1},
                        },
                    }
                ]
            },
            options={"mergeValues": True, "showValue": "never"},
        ),
        panel(
            8,
            "Data completeness per interval",
            "timeseries",
            (0, 22, 12, 8),
            [
                target(
                    "A",
                    f'SELECT sum("valid_s") * 100000 / $__interval_ms FROM ({VALID_COVER} '
                    'GROUP BY time($__interval), "device"), '
                    f'({ZERO_COVER} GROUP BY time($__interval), "device") '
                    'WHERE $timeFilter GROUP BY time($__interval), "device" fill(0)',
                    "$tag_device",
                )
            ],
            unit="percent",
            description=COMPLETENESS_NOTE,
            extra_defaults={"min": 0, "max": 100},
        ),
        panel(
            9,
            "Data completeness (time range)",
            "stat",
            (12, 22, 6, 8),
            [
                target(
                    "A",
                    'SELECT sum("valid_s") * 100000 / (${__to} - ${__from}) '
                    f'FROM ({VALID_COVER} GROUP BY "device"), ({ZERO_COVER} GROUP BY "device") '
                    'WHERE $timeFilter GROUP BY "device"',
                    "$tag_device",
                )
            ],
            unit="percent",
            description=COMPLETENESS_NOTE,
            steps=thresholds(("red", None), ("yellow", DEFAULT_MIN_COMPLETENESS), ("green", 95)),
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                "colorMode": "background",
            },
        ),
        panel(
            10,
            "Invalid readings by cause",
            "timeseries",
            (18, 22, 6, 8),
            [
                target(
                    "A",
                    f'SELECT count("seq") FROM "telemetry" WHERE {SITE_DEVICE} '
                    "AND \"quality\"::tag != 'ok' "
                    'GROUP BY time($__interval), "device", "quality" fill(null)',
                    "$tag_device $tag_quality",
                )
            ],
            description="Readings that are not valid, per device and cause (the worst of the "
            "reading's status and its per-metric flags: comm_error, fault, over_range, "
            "calibrating, maintenance, stopped). `dustgate report --quality` gives the "
            "per-day figures.",
            extra_defaults={"custom": {"drawStyle": "bars", "stacking": {"mode": "normal"}}},
        ),
    ]
    events = {
        "name": "Rule events",
        "enable": True,
        "iconColor": "orange",
        "datasource": DS,
        "target": {
            "refId": "Anno",
            "fromAnnotations": True,
            "rawQuery": True,
            "query": 'SELECT "text", "kind", "rule", "severity" FROM "rule_event" '
            f"WHERE {SITE_ONLY}",
            "textColumn": "text",
            "tagsColumn": "kind,rule,severity",
        },
    }
    return dashboard(
        "dustgate-site",
        "dustgate: site",
        panels,
        [SITE_VAR, DEVICE_VAR],
        annotations=[events, INCIDENT_ANNOTATIONS],
        description="Dust, noise, wind, fog cannons and rule events of one site.",
    )


# -------------------------------------------------------------- district


def site_table(columns: dict[str, tuple[str, str]], sort_desc: str) -> list[dict[str, Any]]:
    """Transformations joining one-query-per-column answers into one row per site, the
    columns in ``columns``' order under their headers, sorted by ``sort_desc``."""
    rename = {alias: header for alias, header in columns.values()}
    return [
        {"id": "joinByField", "options": {"byField": "site", "mode": "outer"}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {
                    "Time": True,
                    **{f"Time {i}": True for i in range(1, len(columns) + 1)},
                },
                "indexByName": {"site": 0, **{a: i + 1 for i, a in enumerate(rename)}},
                "renameByName": rename,
            },
        },
        {"id": "sortBy", "options": {"sort": [{"field": rename[sort_desc], "desc": True}]}},
    ]


def district_dashboard() -> dict[str, Any]:
    queries = DISTRICT_QUERIES
    targets = [target(ref, q, fmt="table") for ref, q in queries.items()]
    rename = {alias: header for alias, header in DISTRICT_COLUMNS.values()}
    ranking = panel(
        1,
        "Site ranking (by mean PM10 over the time range)",
        "table",
        (0, 0, 24, 14),
        targets,
        description="One row per site, dirtiest first: the weekly ranking city bureaus run. "
        "Only valid data counts: readings with status ok, metrics without a flag. PM10 means "
        f"with no valid reading read '{NO_VALID_DATA}'. Exceedance minutes: 1-minute site "
        "means of PM10 above $pm10_limit; exceedance hours: hourly site means above it, "
        "an hourly mean counting only from a device with 45 minutes of valid PM10 in the "
        "hour (GB 3095-2012). Spray minutes: minutes with any fog cannon on. "
        "Completeness: the time valid readings stand for (each carries its device's read "
        "interval) over the range, averaged over the site's devices, red under "
        f"{DEFAULT_MIN_COMPLETENESS:g} %. Ranked: no for a site under $min_completeness % "
        "or without valid PM10: its PM10 is not a ranking, whatever its place in this table "
        "(`dustgate report` lists it after the ranked sites). Same queries as "
        "`dustgate report`.",
        transformations=site_table(DISTRICT_COLUMNS, "pm10_week"),
        extra_defaults={"decimals": 1},
        options={"showHeader": True, "cellHeight": "sm"},
    )
    no_valid = {
        "type": "special",
        "options": {"match": "null", "result": {"text": NO_VALID_DATA, "color": "red", "index": 0}},
    }
    ranking["fieldConfig"]["overrides"] = [
        *(
            {
                "matcher": {"id": "byName", "options": rename[alias]},
                "properties": [
                    {"id": "mappings", "value": [no_valid]},
                    {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                ],
            }
            for alias in ("pm10_week", "pm10_today")
        ),
        {
            "matcher": {"id": "byName", "options": rename["ranked"]},
            "properties": [
                {"id": "decimals", "value": 0},
                {
                    "id": "mappings",
                    "value": [
                        {
                            "type": "special",
                            "options": {
                                "match": "null",
                                "result": {"text": "no", "color": "red", "index": 0},
                            },
                        },
                        {
                            "type": "value",
                            "options": {"0": {"text": "no", "color": "red", "index": 1}},
                        },
                        {
                            "type": "range",
                            "options": {
                                "from": 1,
                                "to": None,
                                "result": {"text": "yes", "color": "green", "index": 2},
                            },
                        },
                    ],
                },
                {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            ],
        },
        {
            "matcher": {"id": "byName", "options": rename["completeness_pct"]},
            "properties": [
                {"id": "unit", "value": "percent"},
                {
                    "id": "thresholds",
                    "value": thresholds(
                        ("red", None), ("yellow", DEFAULT_MIN_COMPLETENESS), ("green", 95)
                    ),
                },
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
            ],
        },
    ]
    incidents = panel(
        2,
        "Incidents per site: found -> fixed",
        "table",
        (0, 14, 24, 10),
        [target(ref, q, fmt="table") for ref, q in INCIDENT_QUERIES.items()],
        description="From the incident measurement (rules.incidents): incidents opened, "
        "those that went overdue (unresolved 30 minutes after opening), median and p90 "
        "minutes from opening to acknowledgement and to resolution, and hours the "
        "over-the-limit causes held (cleared stretches). Same queries as `dustgate report`; "
        "the console's ranking page shows the same figures from its own store.",
        transformations=site_table(INCIDENT_COLUMNS, "overdue"),
        extra_defaults={"decimals": 1},
        options={"showHeader": True, "cellHeight": "sm"},
    )
    return dashboard(
        "dustgate-district",
        "dustgate: district ranking",
        [ranking, incidents],
        [SITE_VAR, PM10_LIMIT_VAR, MIN_COMPLETENESS_VAR],
        time_from="now/w",
        annotations=[INCIDENT_ANNOTATIONS],
        description="Weekly site ranking: PM10, exceedances, spraying, data completeness, "
        "incidents and how fast they were fixed.",
    )


# --------------------------------------------------------------- gateway


def gateway_dashboard() -> dict[str, Any]:
    gw = f'FROM "gateway" WHERE {SITE_ONLY} GROUP BY time($__interval), "gateway"'
    eng = (
        'FROM "gateway" WHERE "engine" =~ /.+/ AND $timeFilter GROUP BY time($__interval), "engine"'
    )
    panels = [
        panel(
            1,
            "Gateway online",
            "state-timeline",
            (0, 0, 24, 4),
            [target("A", f'SELECT last("online") {gw} fill(previous)', "$tag_gateway")],
            extra_defaults={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "offline", "color": "red", "index": 0},
                            "1": {"text": "online", "color": "green", "index": 1},
                        },
                    }
                ]
            },
        ),
        panel(
            2,
            "Outbox backlog (messages)",
            "timeseries",
            (0, 4, 8, 8),
            [target("A", f'SELECT last("backlog") {gw} fill(previous)', "$tag_gateway")],
        ),
        panel(
            3,
            "Poll errors per interval",
            "timeseries",
            (8, 4, 8, 8),
            [
                target(
                    "A", f'SELECT non_negative_difference(last("poll_errors")) {gw}', "$tag_gateway"
                )
            ],
        ),
        panel(
            4,
            "Devices offline",
            "timeseries",
            (16, 4, 8, 8),
            [target("A", f'SELECT last("devices_offline") {gw} fill(previous)', "$tag_gateway")],
            steps=thresholds(("green", None), ("red", 1)),
            threshold_style="line",
        ),
        panel(
            5,
            "Evicted / refused commands per interval",
            "timeseries",
            (0, 12, 12, 8),
            [
                target(
                    "A",
                    f'SELECT non_negative_difference(last("evicted")) {gw}',
                    "evicted $tag_gateway",
                ),
                target(
                    "B",
                    f'SELECT non_negative_difference(last("refused_commands")) {gw}',
                    "refused $tag_gateway",
                ),
            ],
        ),
        panel(
            6,
            "Uptime",
            "stat",
            (12, 12, 12, 8),
            [target("A", f'SELECT last("uptime") {gw}', "$tag_gateway")],
            unit="s",
            options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False}},
        ),
        panel(
            7,
            "Rule engine: messages/s",
            "timeseries",
            (0, 20, 8, 8),
            [target("A", f'SELECT mean("messages_per_s") {eng}', "$tag_engine")],
        ),
        panel(
            8,
            "Rule engine: decode errors / dropped per interval",
            "timeseries",
            (8, 20, 8, 8),
            [
                target(
                    "A",
                    f'SELECT non_negative_difference(last("decode_errors")) {eng}',
                    "decode errors $tag_engine",
                ),
                target(
                    "B",
                    f'SELECT non_negative_difference(last("dropped")) {eng}',
                    "dropped $tag_engine",
                ),
            ],
        ),
        panel(
            9,
            "InfluxDB sink: spooled / dead letters per interval",
            "timeseries",
            (16, 20, 8, 8),
            [
                target(
                    "A",
                    f'SELECT non_negative_difference(last("sink_spooled")) {eng}',
                    "spooled $tag_engine",
                ),
                target(
                    "B",
                    f'SELECT non_negative_difference(last("sink_dead_lettered")) {eng}',
                    "dead letters $tag_engine",
                ),
            ],
        ),
        panel(
            10,
            "HJ 212 platform links: down / records waiting",
            "timeseries",
            (0, 28, 24, 8),
            [
                target(
                    "A",
                    f'SELECT last("uplinks_down") {gw} fill(previous)',
                    "links down $tag_gateway",
                ),
                target(
                    "B",
                    f'SELECT last("uplink_backlog") {gw} fill(previous)',
                    "records waiting $tag_gateway",
                ),
            ],
        ),
        panel(
            11,
            "Rule engine: notifications per interval",
            "timeseries",
            (0, 36, 24, 8),
            [
                target(
                    ref,
                    f'SELECT non_negative_difference(last("notify_{field}")) {eng}',
                    f"{label} $tag_engine",
                )
                for ref, field, label in (
                    ("A", "sent", "sent"),
                    ("B", "failed", "failed"),
                    ("C", "retried", "retried"),
                    ("D", "suppressed", "held back"),
                    ("E", "flushed", "folded, sent later"),
                )
            ],
            description="Webhook and robot messages: sent, failed after the retries, tries "
            "repeated (timeouts, 5xx/429, a robot's 'too fast'), held back by a notifier's "
            "min_interval for a site and rule (folded into the next message, never lost) "
            "and sent as a folded message when the interval ran out.",
        ),
    ]
    return dashboard(
        "dustgate-gateway",
        "dustgate: gateway health",
        panels,
        [SITE_VAR],
        description="Edge agents (backlog, polling, devices) and the rule engine.",
    )


DASHBOARDS = {
    "site.json": site_dashboard,
    "district.json": district_dashboard,
    "gateway.json": gateway_dashboard,
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        (OUT / name).write_text(render(name), encoding="utf-8")
        print(f"wrote {OUT / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
