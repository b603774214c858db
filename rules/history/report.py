"""``dustgate report``: the weekly site ranking, on the terminal and as CSV.

    dustgate report [--url URL] [--db DB] [--site S] [--from T] [--to T] [--csv FILE]
                    [--pm10-limit N] [--min-completeness PCT]
    dustgate report --quality [--stuck-after 30m] [--site S] [--from T] [--to T] [--csv FILE]

``--quality`` gives, instead of the ranking, the data quality per site,
device and day (:mod:`rules.history.quality`).

Only valid data counts (see ``rules.sink.points``): flagged readings and
metrics are left out of the means and the exceedance minutes and hours (an
hourly mean needs 45 minutes of valid data, GB 3095-2012), and data
completeness is the time valid readings stand for (each reading's
``interval_s``, the device's own read interval) over the range.  A site
with no valid PM10, or under ``--min-completeness``, is listed after the
ranking, marked, never ranked as clean.

Default range: this week, Monday 00:00 local time, to now.  The InfluxQL is
:data:`DISTRICT_QUERIES` -- the very strings the Grafana district dashboard
(``deploy/grafana/dashboards/district.json``) is generated from -- with
Grafana's macros expanded by :func:`expand_macros`, so the report and the
dashboard cannot drift apart (a test checks the JSON against these constants).
The incidents' figures per site (incidents, overdue, median/p90 minutes to
acknowledge and to resolve, hours over the limit) follow, from
:data:`rules.incidents.ranking.INCIDENT_QUERIES`, the dashboard's second table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo

from rules.incidents.ranking import INCIDENT_COLUMNS, INCIDENT_QUERIES, INCIDENT_ZERO_IF_MISSING
from rules.sink.points import VALID_READING, valid_metric

SITE_FILTER = '"site" =~ /^$site$/ AND $timeFilter'
# What is valid: rules.sink.points (the schema) says, as InfluxQL conditions.
VALID_PM10 = valid_metric("pm10")
MIN_HOUR_S = 45 * 60  # valid data a device needs in an hour for its hourly mean to count

# per device: the time its valid readings stand for, and a 0 row with a device count
# for every device that sent anything (so a device with only invalid readings counts 0)
COVER = (
    '(SELECT sum("interval_s") AS "valid_s" FROM "telemetry" '
    f'WHERE {SITE_FILTER} AND {VALID_READING} GROUP BY "site", "device"), '
    '(SELECT count("seq") AS "devices", count("seq") * 0 AS "valid_s" FROM "telemetry" '
    f'WHERE {SITE_FILTER} GROUP BY "site", "device")'
)
COMPLETENESS = 'sum("valid_s") * 100000 / (count("devices") * (${__to} - ${__from}))'

DISTRICT_QUERIES: dict[str, str] = {
    # A: mean of valid PM10 over the range (the ranking key)
    "A": 'SELECT mean("pm10") AS "pm10_week" FROM "telemetry" '
    f'WHERE {SITE_FILTER} AND {VALID_PM10} GROUP BY "site"',
    # B: mean of valid PM10 since local midnight of the range's end
    "B": 'SELECT mean("pm10") AS "pm10_today" FROM "telemetry" '
    "WHERE \"site\" =~ /^$site$/ AND time >= '${__to:date:YYYY-MM-DD}T00:00:00${__to:date:Z}'"
    f' AND $timeFilter AND {VALID_PM10} GROUP BY "site"',
    # C: minutes whose 1-minute site mean of valid PM10 is above the limit
    "C": 'SELECT count("pm10_1m") AS "exceedance_min" FROM ('
    'SELECT mean("pm10") AS "pm10_1m" FROM "telemetry" '
    f'WHERE {SITE_FILTER} AND {VALID_PM10} GROUP BY time(1m), "site") '
    'WHERE "pm10_1m" > $pm10_limit AND $timeFilter GROUP BY "site"',
    # F: hours whose site mean of valid PM10 is above the limit; an hourly mean
    # counts only from a device with valid PM10 for 45 of its 60 minutes (GB 3095-2012
    # table 4), the site's hour is the mean of those devices' hours
    "F": 'SELECT count("site_1h") AS "exceedance_h" FROM ('
    'SELECT mean("pm10_1h") AS "site_1h" FROM ('
    'SELECT mean("pm10") AS "pm10_1h", sum("interval_s") AS "valid_s" FROM "telemetry" '
    f'WHERE {SITE_FILTER} AND {VALID_PM10} GROUP BY time(1h), "site", "device") '
    f'WHERE "valid_s" >= {MIN_HOUR_S} AND $timeFilter GROUP BY time(1h), "site") '
    'WHERE "site_1h" > $pm10_limit AND $timeFilter GROUP BY "site"',
    # D: minutes with a fog cannon on (summed over the site's actuators)
    "D": 'SELECT sum("on_1m") AS "spray_min" FROM ('
    'SELECT max("on") AS "on_1m" FROM "actuator" '
    f'WHERE {SITE_FILTER} GROUP BY time(1m), "site", "actuator" fill(previous)) '
    'WHERE $timeFilter GROUP BY "site"',
    # E: data completeness: the time valid readings stand for (their interval_s)
    # over the range, averaged over the site's devices; a device that sent only
    # invalid readings counts 0 (the second subquery gives each device a 0 row)
    "E": f'SELECT {COMPLETENESS} AS "completeness_pct" FROM {COVER} '
    'WHERE $timeFilter GROUP BY "site"',
    # G: ranked or not (>= 1 / 0): completeness at least $min_completeness and some
    # valid PM10 (floor() of completeness over the limit, times the valid PM10 rows:
    # InfluxQL has no comparison in SELECT); `dustgate report` ranks by the same rule
    "G": f'SELECT floor({COMPLETENESS} / $min_completeness) * count("pm10_n") AS "ranked" '
    f'FROM {COVER}, (SELECT count("pm10") AS "pm10_n" FROM "telemetry" '
    f'WHERE {SITE_FILTER} AND {VALID_PM10} GROUP BY "site") '
    'WHERE $timeFilter GROUP BY "site"',
}

DISTRICT_COLUMNS: dict[str, tuple[str, str]] = {
    # refId: (column alias in the query, header shown), in the order shown:
    # completeness beside the site, read before any figure it qualifies
    "E": ("completeness_pct", "Data completeness (%)"),
    "G": ("ranked", "Ranked"),
    "A": ("pm10_week", "PM10 mean, range (ug/m3)"),
    "B": ("pm10_today", "PM10 mean, today (ug/m3)"),
    "C": ("exceedance_min", "Exceedance minutes"),
    "F": ("exceedance_h", "Exceedance hours"),
    "D": ("spray_min", "Spray minutes"),
}
RANKED = "ranked"  # the dashboard's marker; the report says it with its rank and note

# count()/sum() return no row for a site with nothing to count: that is a zero
# (exceedance minutes only where there is valid PM10 to exceed with).
ZERO_IF_MISSING = ("exceedance_min", "exceedance_h", "spray_min", *INCIDENT_ZERO_IF_MISSING)
NEED_VALID_PM10 = ("exceedance_min", "exceedance_h")
# the incidents' figures follow (rules.incidents.ranking: the `incident` measurement)
COLUMNS: dict[str, tuple[str, str]] = {**DISTRICT_COLUMNS, **INCIDENT_COLUMNS}
# what the report prints: its own rank and note say what the dashboard's marker says
SHOWN: list[tuple[str, str]] = [c for c in COLUMNS.values() if c[0] != RANKED]

DEFAULT_PM10_LIMIT = 150  # GB 3095-2012 grade II 24 h; the example rule's ON threshold
# Below this share of valid data a site is listed, marked, and not ranked.  GB
# 3095-2012 (table 4) accepts an hourly mean from 45 of 60 minutes of data: 75 %.
DEFAULT_MIN_COMPLETENESS = 75.0
NO_VALID_DATA = "no valid data"


class ReportError(RuntimeError):
    """The database could not be queried or answered with an error."""


# ------------------------------------------------------------ macros (pure)

_MACRO = re.compile(r"\$\{(\w+)(?::([^}]*))?\}|\[\[(\w+)\]\]|\$(\w+)")
_MOMENT = re.compile(r"YYYY|MM|DD|HH|mm|ss|Z")


def _moment(dt: datetime, fmt: str) -> str:
    """The few moment.js tokens our dashboards use."""
    if fmt == "iso":
        return dt.astimezone().isoformat()
    if fmt == "seconds":
        return str(int(dt.timestamp()))

    def token(m: re.Match[str]) -> str:
        t = m.group(0)
        if t == "Z":
            off = dt.strftime("%z")
            return f"{off[:3]}:{off[3:]}"
        return dt.strftime(
            {"YYYY": "%Y", "MM": "%m", "DD": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}[t]
        )

    return _MOMENT.sub(token, fmt)


def regex_value(value: str | Sequence[str]) -> str:
    """Grafana's regex formatting of a (multi-)value variable."""
    if isinstance(value, str):
        return value
    escaped = [re.sub(r"([\\/.^$*+?()\[\]{}|-])", r"\\\1", v) for v in value]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand_macros(
    query: str,
    *,
    start_ms: int,
    end_ms: int,
    variables: Mapping[str, str | Sequence[str]] | None = None,
    interval_ms: int | None = None,
    tz: tzinfo | None = None,
) -> str:
    """Expand Grafana's InfluxQL macros the way Grafana does for an absolute range.

    ``$timeFilter`` -> ``time >= Sms and time <= Ems``; ``$__interval`` /
    ``$__interval_ms``; ``${__from}``/``${__to}`` (ms) and
    ``${__to:date:FORMAT}`` (moment tokens YYYY MM DD HH mm ss Z, in ``tz``,
    default local); template variables: a string is inserted as is, a list
    is formatted as a regex alternation (Grafana's multi-value format).
    Unknown ``$names`` are left alone.
    """
    variables = variables or {}
    if interval_ms is None:
        interval_ms = max(1000, (end_ms - start_ms) // 1000 // 1000 * 1000)
    zone = tz
    times = {
        "__from": datetime.fromtimestamp(start_ms / 1000, zone).astimezone(zone),
        "__to": datetime.fromtimestamp(end_ms / 1000, zone).astimezone(zone),
    }
    interval = f"{interval_ms // 1000}s" if interval_ms % 1000 == 0 else f"{interval_ms}ms"

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3) or m.group(4)
        fmt = m.group(2)
        if name == "timeFilter":
            return f"time >= {start_ms}ms and time <= {end_ms}ms"
        if name == "__interval":
            return interval
        if name == "__interval_ms":
            return str(interval_ms)
        if name in times:
            if fmt is None:
                return str(start_ms if name == "__from" else end_ms)
            if fmt.startswith("date:"):
                return _moment(times[name], fmt[5:])
            return m.group(0)
        if name in variables:
            return regex_value(variables[name])
        return m.group(0)

    return _MACRO.sub(repl, query)


# -------------------------------------------------------------- the report


@dataclass(frozen=True)
class SiteRow:
    """One site's figures (query alias -> value); after :func:`rank`, its place
    (``None``: not ranked) and why it is not ranked (``note``)."""

    site: str
    values: dict[str, float | None]
    rank: int | None = None
    note: str = ""

    def get(self, alias: str) -> float | None:
        return self.values.get(alias)


def week_start(now: datetime) -> datetime:
    """Monday 00:00 of ``now``'s week, in ``now``'s time zone."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def influx_query(url: str, db: str, q: str, timeout: float = 30.0) -> dict[str, object]:
    data = urllib.parse.urlencode({"q": q, "db": db, "epoch": "ms"}).encode()
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/query", data=data, timeout=timeout) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise ReportError(f"{url}: HTTP {exc.code}: {exc.read()[:300]!r}") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{url}: {exc}") from None


def rows_from_results(results: Mapping[str, dict[str, object]]) -> list[SiteRow]:
    """Join the per-query answers (refId -> /query JSON) into one row per site."""
    by_site: dict[str, dict[str, float | None]] = {}
    for ref, answer in results.items():
        alias = COLUMNS[ref][0]
        for result in answer.get("results", []):  # type: ignore[attr-defined]
            if "error" in result:
                raise ReportError(f"query {ref}: {result['error']}")
            for series in result.get("series", []):
                site = series.get("tags", {}).get("site", "")
                cols = series["columns"]
                idx = cols.index(alias)
                for value_row in series["values"]:
                    by_site.setdefault(site, {})[alias] = value_row[idx]
    for vals in by_site.values():
        for alias in ZERO_IF_MISSING:
            if vals.get(alias) is None and (
                alias not in NEED_VALID_PM10 or vals.get("pm10_week") is not None
            ):
                vals[alias] = 0
    return [SiteRow(site, vals) for site, vals in by_site.items()]


def rank(rows: list[SiteRow], min_completeness: float = DEFAULT_MIN_COMPLETENESS) -> list[SiteRow]:
    """Dirtiest first (highest mean of valid PM10 over the range).

    A site with no valid PM10, or whose data completeness is under
    ``min_completeness`` %, is not ranked: it follows the ranked ones, marked,
    so that missing or flagged data never passes for clean air.
    """

    def note(r: SiteRow) -> str:
        pm10, pct = r.get("pm10_week"), r.get("completeness_pct")
        if pm10 is None or not pct:
            return NO_VALID_DATA
        if pct < min_completeness:
            return f"completeness under {min_completeness:g} %"
        return ""

    noted = [(note(r), r) for r in rows]
    ranked = sorted(
        (r for n, r in noted if not n), key=lambda r: (-(r.get("pm10_week") or 0), r.site)
    )
    unranked = sorted(
        ((n, r) for n, r in noted if n),
        key=lambda nr: (nr[0] == NO_VALID_DATA, -(nr[1].get("completeness_pct") or 0), nr[1].site),
    )
    return [replace(r, rank=i, note="") for i, r in enumerate(ranked, 1)] + [
        replace(r, rank=None, note=n) for n, r in unranked
    ]


def run_report(
    url: str,
    db: str,
    start: datetime,
    end: datetime,
    *,
    sites: Sequence[str] | None = None,
    pm10_limit: float = DEFAULT_PM10_LIMIT,
    min_completeness: float = DEFAULT_MIN_COMPLETENESS,
) -> list[SiteRow]:
    variables: dict[str, str | Sequence[str]] = {
        "site": list(sites) if sites else ".*",
        "pm10_limit": f"{pm10_limit:g}",
        "min_completeness": f"{min_completeness:g}",
    }
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    answers = {}
    for ref, query in {**DISTRICT_QUERIES, **INCIDENT_QUERIES}.items():
        q = expand_macros(
            query, start_ms=start_ms, end_ms=end_ms, variables=variables, tz=end.tzinfo
        )
        answers[ref] = influx_query(url, db, q)
    return rank(rows_from_results(answers), min_completeness)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _cells(r: SiteRow) -> list[str]:
    cells = []
    for alias, _ in SHOWN:
        v = r.get(alias)
        if v is None and alias in ("pm10_week", "pm10_today"):
            cells.append(NO_VALID_DATA)  # never an empty cell that reads as "nothing measured"
        elif v is None and alias == "completeness_pct":
            cells.append("0.0")  # a site with no reading in the range
        else:
            cells.append(_fmt(v))
    return cells


def format_table(rows: list[SiteRow]) -> str:
    headers = ["#", "site", *(h for _, h in SHOWN), "not ranked: why"]
    body = [["-" if r.rank is None else str(r.rank), r.site, *_cells(r), r.note] for r in rows]
    widths = [max(len(row[c]) for row in [headers, *body]) for c in range(len(headers))]
    lines = [
        "  ".join(
            cell.ljust(w) if c in (1, len(headers) - 1) else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [headers, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_csv(rows: list[SiteRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["rank", "site", *(a for a, _ in SHOWN), "note"])
    for r in rows:
        w.writerow(
            [
                "" if r.rank is None else r.rank,
                r.site,
                *("" if r.get(a) is None else f"{r.get(a):.3f}" for a, _ in SHOWN),
                r.note,
            ]
        )
    return out.getvalue()


def _parse_time(text: str, now: datetime) -> datetime:
    if text == "now":
        return now
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or time such as 2026-11-23 or 2026-11-23T08:00, got {text!r}"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=now.tzinfo)


def main(argv: list[str], now: datetime | None = None) -> int:
    """Entry point of ``dustgate report``; returns the exit status."""
    now = now or datetime.now().astimezone()
    p = argparse.ArgumentParser(prog="dustgate report", description=__doc__.split("\n")[0])
    p.add_argument("--url", default=os.environ.get("DUSTGATE_INFLUX_URL", "http://127.0.0.1:8086"))
    p.add_argument("--db", default=os.environ.get("DUSTGATE_INFLUX_DB", "dustgate"))
    p.add_argument("--site", action="append", help="only this site (repeatable)")
    p.add_argument("--from", dest="start", help="start (ISO, local time); default Monday 00:00")
    p.add_argument("--to", dest="end", help="end (ISO, local time, or 'now'); default now")
    p.add_argument("--csv", help="also write the table as CSV to this file ('-' = stdout)")
    p.add_argument("--pm10-limit", type=float, default=DEFAULT_PM10_LIMIT)
    p.add_argument(
        "--min-completeness",
        type=_percent,
        default=DEFAULT_MIN_COMPLETENESS,
        metavar="PCT",
        help="sites with less valid data are listed but not ranked (default %(default)g)",
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help="instead of the ranking: data quality per site, device and day (completeness, "
        "invalid readings by cause, longest gap, stuck sensors)",
    )
    p.add_argument(
        "--stuck-after",
        type=_duration,
        default=30 * 60.0,
        metavar="DURATION",
        help="--quality: a metric unchanged this long is reported stuck (default 30m)",
    )
    args = p.parse_args(argv)
    try:
        start = _parse_time(args.start, now) if args.start else week_start(now)
        end = _parse_time(args.end, now) if args.end else now
    except argparse.ArgumentTypeError as exc:
        print(f"dustgate report: {exc}", file=sys.stderr)
        return 2
    if end <= start:
        print("dustgate report: --to must be after --from", file=sys.stderr)
        return 2
    if args.quality:
        return _quality(args, start, end)
    try:
        rows = run_report(
            args.url,
            args.db,
            start,
            end,
            sites=args.site,
            pm10_limit=args.pm10_limit,
            min_completeness=args.min_completeness,
        )
    except ReportError as exc:
        print(f"dustgate report: {exc}", file=sys.stderr)
        return 1
    print(f"Site ranking {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} ({args.db})")
    print(format_table(rows) if rows else "(no data)")
    if args.csv:
        text = format_csv(rows)
        if args.csv == "-":
            sys.stdout.write(text)
        else:
            with open(args.csv, "w", encoding="utf-8", newline="") as f:
                f.write(text)
    return 0


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(
            f"expected a percentage above 0, at most 100, got {text!r}"
        )
    return value


def _duration(text: str) -> float:
    from gateway.configfile import parse_duration

    try:
        value = float(parse_duration(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("expected a positive duration such as 30m")
    return value


def _quality(args: argparse.Namespace, start: datetime, end: datetime) -> int:
    from . import quality

    try:
        rows = quality.run_quality(
            args.url, args.db, start, end, sites=args.site, stuck_after_s=args.stuck_after
        )
    except ReportError as exc:
        print(f"dustgate report: {exc}", file=sys.stderr)
        return 1
    print(f"Data quality {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} ({args.db})")
    print(quality.format_quality(rows) if rows else "(no data)")
    if args.csv:
        text = quality.quality_csv(rows)
        if args.csv == "-":
            sys.stdout.write(text)
        else:
            with open(args.csv, "w", encoding="utf-8", newline="") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
