"""HJ 212 minute/hour/day statistics: min/avg/max per factor over fixed periods.

Pure and clock-free: readings land in the period of their own timestamp, and
:meth:`PeriodAggregator.close` is told the time. Periods are aligned to the
platform's local time (Beijing time for Chinese platforms), so an hourly record
starts at a local full hour and a daily one at local midnight.

Data flags (HJ 212-2017): N normal and S manually set are valid; F stopped, M
maintenance, D fault, C calibrating, T over limit, B communication error are
not. A period's averages use valid data only; its flag is the worst flag seen.
With no valid reading at all, the period still reports what was measured,
under its invalid flag, so the platform sees why the value is not usable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gateway.uplinks.hj212 import Stats

VALID_FLAGS = frozenset("NS")
_FLAG_RANK = {f: i for i, f in enumerate("NSTCMFBD")}
"""Worst-flag order: valid N < S, then the invalid ones from mild to hard."""


def worst_flag(a: str, b: str) -> str:
    return a if _FLAG_RANK.get(a, 99) >= _FLAG_RANK.get(b, 99) else b


def _add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to a sum kept exactly as non-overlapping partials (Shewchuk, as
    ``math.fsum`` does): the average then does not depend on the arrival order."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def _exact_sum(partials: list[float]) -> float:
    try:
        return math.fsum(partials)
    except (OverflowError, ValueError):  # past the float range: say so, never raise
        return sum(partials)


def _partials(total: float | list[float]) -> list[float]:
    """A snapshot's sum: partials, or one float from a snapshot written before them."""
    return [float(t) for t in total] if isinstance(total, list) else [float(total)]


@dataclass(slots=True)
class _Acc:
    count: int = 0
    total: list[float] = field(default_factory=list)  # exact sum as partials
    low: float = math.inf
    high: float = -math.inf
    all_count: int = 0
    all_total: list[float] = field(default_factory=list)
    all_low: float = math.inf
    all_high: float = -math.inf
    flag: str = "N"

    def __post_init__(self) -> None:
        self.total, self.all_total = _partials(self.total), _partials(self.all_total)

    def add(self, value: float, flag: str) -> None:
        self.flag = worst_flag(self.flag, flag) if self.all_count else flag
        self.all_count += 1
        _add_exact(self.all_total, value)
        self.all_low = min(self.all_low, value)
        self.all_high = max(self.all_high, value)
        if flag in VALID_FLAGS:
            self.count += 1
            _add_exact(self.total, value)
            self.low = min(self.low, value)
            self.high = max(self.high, value)

    def stats(self) -> Stats:
        if self.count:
            avg = _exact_sum(self.total) / self.count
            return Stats(self.low, avg, self.high, self.flag, self.count)
        # nothing valid: show what was measured, under its invalid flag
        avg = _exact_sum(self.all_total) / self.all_count
        return Stats(self.all_low, avg, self.all_high, self.flag, 0)


@dataclass(slots=True)
class PeriodAggregator:
    """Min/avg/max per metric over fixed periods, aligned to local time.

    Readings land in the period of their own timestamp. :meth:`close` returns
    the periods that ended at least ``grace`` seconds before ``now`` (oldest
    first); a reading for a closed period is counted in ``late`` and dropped.
    """

    period_s: float
    utc_offset_s: float = 0.0
    grace_s: float = 5.0
    late: int = 0
    _open: dict[float, dict[str, _Acc]] = field(default_factory=dict)
    _closed_before: float = -math.inf

    def period_start(self, ts: float) -> float:
        local = ts + self.utc_offset_s
        return math.floor(local / self.period_s) * self.period_s - self.utc_offset_s

    def add(self, ts: float, metric: str, value: float, flag: str) -> bool:
        start = self.period_start(ts)
        if start < self._closed_before:
            self.late += 1
            return False
        self._open.setdefault(start, {}).setdefault(metric, _Acc()).add(value, flag)
        return True

    def close(self, now: float) -> list[tuple[float, dict[str, Stats]]]:
        """Finished periods as ``(start, {metric: Stats})``, oldest first."""
        edge = self.period_start(now - self.grace_s)  # periods before this one are done
        done = sorted(s for s in self._open if s < edge)
        self._closed_before = max(self._closed_before, edge)
        return [(s, {m: a.stats() for m, a in self._open.pop(s).items()}) for s in done]

    def pending(self) -> int:
        return len(self._open)

    def snapshot(self) -> dict[str, Any]:
        """The open periods as plain data (JSON-able), to survive a restart."""
        return {
            "period_s": self.period_s,
            "closed_before": None if math.isinf(self._closed_before) else self._closed_before,
            "open": [
                [start, {m: _acc_fields(a) for m, a in metrics.items()}]
                for start, metrics in sorted(self._open.items())
            ],
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` of the same period length (else ignore it)."""
        if snap.get("period_s") != self.period_s:
            return
        if snap.get("closed_before") is not None:
            self._closed_before = max(self._closed_before, float(snap["closed_before"]))
        for start, metrics in snap.get("open", []):
            into = self._open.setdefault(float(start), {})
            for m, values in metrics.items():
                into[m] = _Acc(*values)


def _acc_fields(a: _Acc) -> list[Any]:
    return [
        a.count,
        list(a.total),
        a.low,
        a.high,
        a.all_count,
        list(a.all_total),
        a.all_low,
        a.all_high,
        a.flag,
    ]
