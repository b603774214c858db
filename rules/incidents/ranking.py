"""The weekly ranking's incident figures per site, from stored incidents. Pure.

Per site, over incidents opened in the range: ``incidents``, ``overdue``
(turned overdue), median and p90 minutes to acknowledge and to resolve (of
those that were), and hours over the limit (the time the over-the-limit
causes, ``rule_active`` and ``unsprayed``, held: onset to clearing, or to
the end of the range while still on).

The statistics are InfluxDB 1.x's, so the console, ``dustgate report`` and
Grafana (which compute them from the ``incident`` measurement) agree:
``median`` interpolates between the two middle values, ``percentile(x, 90)``
is the nearest rank (the value at rank ``round(0.9 * n)``, 1-based, at least 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rules.incidents.machine import Incident

OVER_LIMIT_CAUSES = frozenset({"rule_active", "unsprayed"})

_IN_RANGE = '"site" =~ /^$site$/ AND $timeFilter'
INCIDENT_QUERIES: dict[str, str] = {
    # the same figures from the `incident` measurement (rules.incidents.points), for
    # `dustgate report` and the Grafana district dashboard; Grafana macros as there.
    # Points count in the range they were written in (an acknowledgement late on
    # Sunday night counts in that week), where the console counts by opening time.
    "I1": 'SELECT count("id") AS "incidents" FROM "incident" '
    f'WHERE "kind"::tag = \'opened\' AND {_IN_RANGE} GROUP BY "site"',
    "I2": 'SELECT count("overdue") AS "overdue" FROM "incident" '
    f'WHERE "kind"::tag = \'overdue\' AND {_IN_RANGE} GROUP BY "site"',
    "I3": 'SELECT median("ack_s") / 60 AS "ack_median_min" FROM "incident" '
    f'WHERE {_IN_RANGE} GROUP BY "site"',
    "I4": 'SELECT percentile("ack_s", 90) / 60 AS "ack_p90_min" FROM "incident" '
    f'WHERE {_IN_RANGE} GROUP BY "site"',
    "I5": 'SELECT median("resolve_s") / 60 AS "resolve_median_min" FROM "incident" '
    f'WHERE {_IN_RANGE} GROUP BY "site"',
    "I6": 'SELECT percentile("resolve_s", 90) / 60 AS "resolve_p90_min" FROM "incident" '
    f'WHERE {_IN_RANGE} GROUP BY "site"',
    # cleared stretches of the over-the-limit causes (one still on is not counted yet)
    "I7": 'SELECT sum("over_s") / 3600 AS "over_h" FROM "incident" '
    f'WHERE "cause"::tag =~ /^(rule_active|unsprayed)$/ AND {_IN_RANGE} GROUP BY "site"',
}
INCIDENT_COLUMNS: dict[str, tuple[str, str]] = {
    "I1": ("incidents", "Incidents"),
    "I2": ("overdue", "Overdue"),
    "I3": ("ack_median_min", "To acknowledge, median (min)"),
    "I4": ("ack_p90_min", "To acknowledge, p90 (min)"),
    "I5": ("resolve_median_min", "To resolve, median (min)"),
    "I6": ("resolve_p90_min", "To resolve, p90 (min)"),
    "I7": ("over_h", "Hours over the limit (incidents)"),
}
INCIDENT_ZERO_IF_MISSING = ("incidents", "overdue", "over_h")


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest rank, as InfluxQL's ``percentile()``."""
    if not values:
        return None
    v = sorted(values)
    rank = max(1, min(len(v), math.floor(len(v) * p / 100 + 0.5)))
    return v[rank - 1]


@dataclass(frozen=True, slots=True)
class SiteIncidents:
    site: str
    incidents: int
    overdue: int
    ack_median_min: float | None
    ack_p90_min: float | None
    resolve_median_min: float | None
    resolve_p90_min: float | None
    over_h: float


@dataclass(frozen=True, slots=True)
class OverSpan:
    """One stretch of an over-the-limit cause at a site (from the incidents' history)."""

    site: str
    start: float
    end: float | None  # None: still on


def figures(
    incidents: Iterable[Incident], spans: Iterable[OverSpan], start: float, end: float
) -> list[SiteIncidents]:
    """The figures of every site with an incident or a span in [start, end), by site."""
    by_site: dict[str, list[Incident]] = {}
    for inc in incidents:
        if start <= inc.opened_at < end:
            by_site.setdefault(inc.site, []).append(inc)
    over: dict[str, float] = {}
    for s in spans:
        a, b = max(s.start, start), min(s.end if s.end is not None else end, end)
        if b > a:
            over[s.site] = over.get(s.site, 0.0) + (b - a)
    out = []
    for site in sorted(set(by_site) | set(over)):
        incs = by_site.get(site, [])
        ack = [(i.acked_at - i.opened_at) / 60 for i in incs if i.acked_at is not None]
        res = [(i.resolved_at - i.opened_at) / 60 for i in incs if i.resolved_at is not None]
        out.append(
            SiteIncidents(
                site=site,
                incidents=len(incs),
                overdue=sum(1 for i in incs if i.overdue_at is not None),
                ack_median_min=median(ack),
                ack_p90_min=percentile(ack, 90),
                resolve_median_min=median(res),
                resolve_p90_min=percentile(res, 90),
                over_h=over.get(site, 0.0) / 3600,
            )
        )
    return out


def spans_of(inc: Incident, log: Iterable[tuple[float, str]]) -> list[OverSpan]:
    """The over-the-limit stretches of one incident from its history ``(at, kind)``:
    from the cause's onset (or a reraise) to its clearing, or to the resolution if
    a person resolved it first, or open (None) while neither happened."""
    if inc.cause not in OVER_LIMIT_CAUSES:
        return []
    out: list[OverSpan] = []
    on: float | None = None
    for at, kind in log:
        if kind == "opened":
            on = inc.cause_since
        elif kind == "reraised" and on is None:
            on = at
        elif kind in ("cleared", "resolved") and on is not None:
            out.append(OverSpan(inc.site, on, at))
            on = None
    if on is not None:
        out.append(OverSpan(inc.site, on, None))
    return out


def over_closed(inc: Incident, log: Iterable[tuple[float, str]], at: float) -> float | None:
    """Seconds of the over-the-limit stretch that the step at ``at`` closed (its clearing,
    or its resolution while the cause still held), else None: what the step's point
    carries as ``over_s``, so InfluxDB sums what the console sums."""
    for span in spans_of(inc, log):
        if span.end == at:
            return span.end - span.start
    return None
