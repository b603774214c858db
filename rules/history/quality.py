"""``dustgate report --quality``: data quality per site, device and day.

What a bureau asks a site to explain, from the stored telemetry (schema:
``rules.sink.points``):

- **expected** readings: the day (clipped to the range) over the device's own
  read interval (each reading carries it, ``interval_s``);
- **received %**: the time readings with a sensor answer stand for (every
  status but ``comm_error``) over the day; **valid %**: the same for valid
  readings only (status ``ok``, no metric flagged) -- the data completeness
  the ranking uses;
- **invalid readings by cause**: the share of the day's readings per cause
  (the worst of status and flags: ``comm_error``, ``fault``, ...), and per
  flagged metric (``pm10 over_range``);
- **longest gap**: the longest time without a valid reading, day edges
  included (a device with no valid reading: the whole day);
- **stuck sensors**: metrics whose value did not change for at least
  ``stuck_after`` (default 30 min), measured on 5-minute minima and maxima of
  every reading with values, flagged or not (a frozen sensor is often
  flagged, and the report says for how long it was frozen).  Metrics that
  are legitimately constant for hours (:data:`STEADY_METRICS`) are left out.

The arithmetic is pure (:func:`device_day`, :func:`longest_gap`,
:func:`longest_unchanged`, tested with hypothesis); :func:`run_quality`
asks influxd, a handful of queries per day.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from rules.sink.points import VALID_READING

from .report import ReportError, influx_query, regex_value

BUCKET_MS = 5 * 60_000
DEFAULT_STUCK_AFTER_S = 30 * 60.0
STEADY_METRICS = frozenset({"rain", "water_level"})  # constant for hours without a fault
_NOT_METRICS = frozenset({"seq", "interval_s"})
_COMM_ERROR = "comm_error"


@dataclass(frozen=True, slots=True)
class SeriesCount:
    """One stored series' readings in a day: its tags, how many, the time they stand for."""

    tags: Mapping[str, str]
    readings: int
    cover_s: float


@dataclass(frozen=True, slots=True)
class DeviceDay:
    site: str
    device: str
    day: date
    span_s: float
    interval_s: float | None  # the device's read interval (mean of interval_s), if known
    readings: int
    received_pct: float
    valid_pct: float
    causes: dict[str, float]  # cause -> share of the day's readings, %
    metric_flags: dict[str, float]  # "pm10 over_range" -> share of the day's readings, %
    longest_gap_s: float
    stuck_s: dict[str, float] = field(default_factory=dict)  # metric -> unchanged for, s

    @property
    def expected(self) -> float | None:
        return self.span_s / self.interval_s if self.interval_s else None


# ------------------------------------------------------------------ pure


def device_day(
    site: str,
    device: str,
    day: date,
    span_s: float,
    series: Iterable[SeriesCount],
    longest_gap_s: float,
    stuck_s: Mapping[str, float] | None = None,
    interval_s: float | None = None,
) -> DeviceDay:
    """Fold one device's series of one day into its figures.

    ``interval_s``: the device's interval known from other days, used when this
    day has no reading carrying one.
    """
    readings = 0
    cover = received = valid = 0.0
    by_cause: dict[str, int] = {}
    by_flag: dict[str, int] = {}
    for s in series:
        readings += s.readings
        cover += s.cover_s
        status = s.tags.get("status", "")
        quality = s.tags.get("quality", "")
        if status != _COMM_ERROR:
            received += s.cover_s
        if quality == "ok":
            valid += s.cover_s
        else:
            cause = quality or status or "unknown"
            by_cause[cause] = by_cause.get(cause, 0) + s.readings
        for key, flag in s.tags.items():
            if key.endswith("_flag") and flag and flag != "ok":
                name = f"{key[: -len('_flag')]} {flag}"
                by_flag[name] = by_flag.get(name, 0) + s.readings
    if readings and cover > 0:
        interval_s = cover / readings
    return DeviceDay(
        site=site,
        device=device,
        day=day,
        span_s=span_s,
        interval_s=interval_s,
        readings=readings,
        received_pct=pct(received, span_s),
        valid_pct=pct(valid, span_s),
        causes={k: 100.0 * n / readings for k, n in sorted(by_cause.items()) if n},
        metric_flags={k: 100.0 * n / readings for k, n in sorted(by_flag.items()) if n},
        longest_gap_s=longest_gap_s,
        stuck_s=dict(stuck_s or {}),
    )


def pct(cover_s: float, span_s: float) -> float:
    """The time readings stand for, as a share of the span (%)."""
    return 100.0 * cover_s / span_s if span_s > 0 else 0.0


def longest_gap(
    start_ms: int,
    end_ms: int,
    first_ms: int | None,
    last_ms: int | None,
    max_between_ms: int | None,
) -> float:
    """Longest time without a valid reading (s), the span's edges included.

    ``first_ms``/``last_ms``: the first and last valid reading (None: none);
    ``max_between_ms``: the longest time between two consecutive valid readings.
    """
    if first_ms is None or last_ms is None:
        return (end_ms - start_ms) / 1000.0
    gaps = [first_ms - start_ms, end_ms - last_ms, max_between_ms or 0]
    return max(gaps) / 1000.0


def longest_unchanged(buckets: Sequence[tuple[int, float | None, float | None]]) -> int:
    """Longest run (ms) of consecutive buckets in which a metric kept one value.

    ``buckets``: (start ms, min, max) of each :data:`BUCKET_MS` bucket in time
    order; min/max ``None`` where the bucket holds no value.  A run goes on
    while the buckets follow each other without a hole and each one's minimum
    equals its maximum and the previous bucket's value.
    """
    best = run = 0
    prev: tuple[int, float] | None = None
    for start, lo, hi in buckets:
        if lo is None or hi is None or lo != hi:
            run, prev = 0, None
            continue
        if prev is not None and prev[1] == lo and start - prev[0] == BUCKET_MS:
            run += BUCKET_MS
        else:
            run = BUCKET_MS
        prev = (start, lo)
        best = max(best, run)
    return best


def days(start: datetime, end: datetime) -> list[tuple[date, datetime, datetime]]:
    """The local days (of ``start``'s time zone) the range touches, clipped to it."""
    out = []
    day0 = start.replace(hour=0, minute=0, second=0, microsecond=0)
    while day0 < end:
        nxt = (day0 + timedelta(days=1, hours=3)).replace(hour=0)  # DST-safe next midnight
        out.append((day0.date(), max(day0, start), min(nxt, end)))
        day0 = nxt
    return out


# ------------------------------------------------------------ the queries


def _series(answer: Mapping[str, object]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for result in answer.get("results", []):  # type: ignore[attr-defined]
        if "error" in result:
            raise ReportError(str(result["error"]))
        out.extend(result.get("series", []))
    return out


@dataclass(slots=True)
class _Found:
    """What the day's queries said about one device."""

    series: list[SeriesCount] = field(default_factory=list)
    first: int | None = None
    last: int | None = None
    between: int | None = None
    stuck: dict[str, float] = field(default_factory=dict)


def stuck_metrics(cols: list[str], rows: list[list[Any]], stuck_after_s: float) -> dict[str, float]:
    """Metric -> unchanged for (s), from one device's ``min(*), max(*)`` buckets."""
    stuck: dict[str, float] = {}
    for i, col in enumerate(cols):
        metric = col[len("min_") :]
        if (
            not col.startswith("min_")
            or metric in _NOT_METRICS | STEADY_METRICS
            or metric.endswith("_raw")  # a calibrated metric's raw value: the metric says it
        ):
            continue
        j = cols.index(f"max_{metric}")
        run = longest_unchanged([(r[0], r[i], r[j]) for r in rows])
        if run and run >= stuck_after_s * 1000:
            stuck[metric] = run / 1000.0
    return stuck


def _query_day(
    url: str, db: str, where_site: str, a: int, b: int, stuck_after_s: float
) -> dict[tuple[str, str], _Found]:
    when = f"time >= {a}ms AND time < {b}ms"
    where = f"{where_site} AND {when}"
    found: dict[tuple[str, str], _Found] = {}

    def q(text: str) -> list[tuple[_Found, dict[str, Any]]]:
        return [
            (found.setdefault((t.get("site", ""), t.get("device", "")), _Found()), s)
            for s in _series(influx_query(url, db, text))
            for t in [s.get("tags") or {}]
        ]

    for f, s in q(
        'SELECT count("seq") AS "n", sum("interval_s") AS "cover" FROM "telemetry" '
        f"WHERE {where} GROUP BY *"
    ):
        [row] = s["values"]
        f.series.append(SeriesCount(dict(s.get("tags") or {}), int(row[1] or 0), row[2] or 0.0))
    valid = f"WHERE {where} AND {VALID_READING}"
    by_device = 'GROUP BY "site", "device"'
    for f, s in q(f'SELECT first("seq") FROM "telemetry" {valid} {by_device}'):
        f.first = s["values"][0][0]
    for f, s in q(f'SELECT last("seq") FROM "telemetry" {valid} {by_device}'):
        f.last = s["values"][0][0]
    for f, s in q(
        f'SELECT max("gap") FROM (SELECT elapsed("seq", 1ms) AS "gap" FROM "telemetry" {valid} '
        f"{by_device}) WHERE {when} {by_device}"
    ):
        f.between = s["values"][0][1]
    for f, s in q(
        f'SELECT min(*), max(*) FROM "telemetry" WHERE {where} '
        f"AND \"status\"::tag != '{_COMM_ERROR}' "
        f'GROUP BY time({BUCKET_MS // 60_000}m), "site", "device"'
    ):
        f.stuck = stuck_metrics(s["columns"], s["values"], stuck_after_s)
    return found


def run_quality(
    url: str,
    db: str,
    start: datetime,
    end: datetime,
    *,
    sites: Sequence[str] | None = None,
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
) -> list[DeviceDay]:
    """Per site, device and day of the range: the figures of :class:`DeviceDay`.

    A device seen on any day of the range is listed on every day (a day it
    sent nothing reads 0 %, its whole span a gap).
    """
    where_site = f'"site" =~ /^{regex_value(list(sites) if sites else ".*")}$/'
    per_day = []
    interval: dict[tuple[str, str], float | None] = {}
    for day, t0, t1 in days(start, end):
        a, b = int(t0.timestamp() * 1000), int(t1.timestamp() * 1000)
        found = _query_day(url, db, where_site, a, b, stuck_after_s)
        for key, f in found.items():
            n = sum(c.readings for c in f.series)
            cover = sum(c.cover_s for c in f.series)
            interval[key] = cover / n if n and cover else interval.get(key)
        per_day.append((day, a, b, found))
    out = []
    for day, a, b, found in per_day:
        for key in sorted(interval):
            f = found.get(key) or _Found()
            gap = longest_gap(a, b, f.first, f.last, f.between)
            out.append(
                device_day(
                    key[0], key[1], day, (b - a) / 1000.0, f.series, gap, f.stuck, interval[key]
                )
            )
    return out


# ------------------------------------------------------------- formatting


def _duration(s: float) -> str:
    s = round(s)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _shares(d: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} %" for k, v in d.items()) or "-"


HEADERS = (
    "day", "device", "expected", "readings", "received %", "valid %",
    "invalid readings by cause", "flagged metrics", "longest gap", "stuck",
)  # fmt: skip


def _cells(d: DeviceDay) -> list[str]:
    exp = d.expected
    return [
        d.day.isoformat(),
        d.device,
        "-" if exp is None else f"{exp:.0f}",
        str(d.readings),
        f"{d.received_pct:.1f}",
        f"{d.valid_pct:.1f}",
        _shares(d.causes),
        _shares(d.metric_flags),
        _duration(d.longest_gap_s),
        ", ".join(f"{m} {_duration(s)}" for m, s in sorted(d.stuck_s.items())) or "-",
    ]


def format_quality(rows: Sequence[DeviceDay]) -> str:
    """One table per site."""
    out: list[str] = []
    for site in sorted({r.site for r in rows}):
        body = [_cells(r) for r in rows if r.site == site]
        widths = [max(len(x[c]) for x in [list(HEADERS), *body]) for c in range(len(HEADERS))]
        out.append(f"site {site}")
        for row in [list(HEADERS), ["-" * w for w in widths], *body]:
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        out.append("")
    return "\n".join(out)


def quality_csv(rows: Sequence[DeviceDay]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["site", *HEADERS])
    for r in rows:
        w.writerow([r.site, *_cells(r)])
    return buf.getvalue()
