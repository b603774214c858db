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
