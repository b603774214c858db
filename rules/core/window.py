"""Rolling windows over telemetry, and per-device freshness tracking. Pure.

A :class:`RollingWindow` holds the ok readings of one (site, device, metric)
for one window length, covering ``(now - length, now]``. Appends are in time
order; old readings are evicted from the front both when a new reading
arrives and when the window is queried with a later ``now``. Every aggregate
is O(1) amortised:

- ``mean``: a running sum that cannot be poisoned by magnitude. Adding and
  removing floats rounds, and each rounding can be as large as ``eps`` times
  the biggest partial sum since the sum was last exact: one reading of 1e300
  that has left a window of readings of 300 leaves an error of ~1e284 in a
  plain running sum (the mean printed 0.0). So the window keeps the positive
  and the negative readings' running sums apart (their difference is the
  magnitude inside, at the cost of a sign test instead of an ``abs`` and a
  second sum) and the magnitude's peak since the sums were last exact, and
  recomputes them exactly (``math.fsum``) when the magnitude inside has
  fallen below 1/``_SHRINK`` of that peak (a large reading left), after every
  ``max(len, 1024)`` updates, and when a sum is not finite. Between two
  recomputes the error is at most ``2 max(len, 1024) eps _SHRINK`` times the
  magnitude inside, so the mean is within ~1e-11 of the largest reading inside
  of the exact mean (a hypothesis property holds it to the exact mean of the
  readings for any finite sequence); a sum that overflows (readings near
  1e308) is taken scaled by 2**-64. Cost: a sign test per reading and per
  eviction, the peak's test per eviction, and a recompute (O(len)) only
  after a fall in magnitude by ``_SHRINK``.
- ``max``/``min``: monotonic deques (each reading is pushed and popped once).
- ``last``: the newest reading still inside the window.

Only the aggregates some rule asks for are maintained (``kinds``), and only
what they need is stored: the readings themselves only for ``mean``. That
keeps the ingest path short and memory low (a 24 h max window over a 1 Hz
sensor holds its monotonic deque, not 86,400 readings).

A :class:`Series` is one (site, device, metric): its windows of different
lengths, when it last had an ok value, and whether its latest reading was bad
(non-ok status readings never enter an aggregate, but a series whose latest
reading is bad is *unknown*, as is one whose last ok reading is stale).

A :class:`DeviceTrack` is one (site, device): it rejects duplicate and
out-of-order readings (``ts`` not after the previous one) and estimates the
device's poll interval as the median of the last 16 gaps between readings
(rounded to the microsecond; recomputed only when the set of gaps changes).
The median ignores the odd outage gap; a device that really slows down is
learned within 8 readings. Staleness is ``stale_factor`` x that interval,
clamped to ``[min_staleness, max_staleness]``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

AGGREGATES = ("mean", "max", "min", "last")

_RESUM_MIN = 1024
_EVICT_EVERY = 64
_SHRINK = 64.0  # recompute the sums once the magnitude inside fell below 1/_SHRINK of its peak
_INF = math.inf
_SCALE = 2.0**-64  # sums of readings near 1e308 overflow: taken scaled


def exact_sums(values: Iterable[float]) -> tuple[float, float]:
    """``(sum of the positive values, sum of the negative ones)``, each correctly rounded
    (``math.fsum``); ``inf`` / ``-inf`` where a sum overflows."""
    vals = values if isinstance(values, list | deque) else list(values)
    try:
        pos = math.fsum([v for v in vals if v >= 0.0])
    except OverflowError:
        pos = _INF
    try:
        neg = math.fsum([v for v in vals if v < 0.0])
    except OverflowError:
        neg = -_INF
    return pos, neg


def _scaled_mean(values: deque[float]) -> float:
    """The mean of readings whose sum overflows a float (scaling by a power of 2 is exact)."""
    return math.fsum(v * _SCALE for v in values) / len(values) / _SCALE


class RollingWindow:
    """Readings in ``(horizon, newest]`` with O(1) amortised mean/max/min/last.

    Only what the wanted aggregates need is stored: the readings themselves
    (two deques) only for ``mean``; for ``max``/``min`` their monotonic deques
    alone; for ``last`` only the newest reading, which every window keeps.
    """

    __slots__ = (
        "_last_in",
        "_last_v",
        "_maxq",
        "_minq",
        "_neg",
        "_newest",
        "_ops",
        "_peak",
        "_pending",
        "_pos",
        "_times",
        "_values",
        "_want_max",
        "_want_mean",
        "_want_min",
        "length",
    )

    def __init__(self, length: float, kinds: Iterable[str] = AGGREGATES) -> None:
        if length <= 0:
            raise ValueError("window length must be positive")
        self.length = float(length)
        kinds = set(kinds)
        unknown = kinds - set(AGGREGATES)
        if unknown:
            raise ValueError(f"unknown aggregate(s): {sorted(unknown)}")
        self._want_mean = "mean" in kinds  # also: the readings are kept
        self._want_max = "max" in kinds
        self._want_min = "min" in kinds
        self._times: deque[float] = deque()  # the readings, kept only for the mean
        self._values: deque[float] = deque()
        self._maxq: deque[tuple[float, float]] = deque()
        self._minq: deque[tuple[float, float]] = deque()
        self._pos = 0.0  # the running sum of the positive readings, ...
        self._neg = 0.0  # ... of the negative ones (the magnitude inside: _pos - _neg)
        self._peak = 0.0  # the magnitude's largest value since the sums were last exact
        self._ops = 0
        self._pending = 0
        self._newest = -math.inf  # time of the newest reading (also once evicted)
        self._last_v = 0.0  # its value, ...
        self._last_in = False  # ... and whether it is still inside the window

    def want(self, kinds: Iterable[str]) -> None:
        """Start maintaining more aggregates. A window that keeps its readings (one with
        ``mean``) rebuilds the new ones from them; otherwise a new aggregate covers the
        readings from now on, as a new window would (after a rules reload)."""
        kinds = set(kinds)
        if "mean" in kinds and not self._want_mean:
            self._want_mean = True
            self._resum()
        if "max" in kinds and not self._want_max:
            self._want_max = True
            self._maxq.clear()
            for t, v in zip(self._times, self._values, strict=True):
                self._push_max(t, v)
        if "min" in kinds and not self._want_min:
            self._want_min = True
            self._minq.clear()
            for t, v in zip(self._times, self._values, strict=True):
                self._push_min(t, v)

    def __len__(self) -> int:
        """The readings kept: all in the window for a window with ``mean``, else none."""
        return len(self._times)

    def _push_max(self, ts: float, value: float) -> None:
        q = self._maxq
        while q and q[-1][1] <= value:
            q.pop()
        q.append((ts, value))

    def _push_min(self, ts: float, value: float) -> None:
        q = self._minq
        while q and q[-1][1] >= value:
            q.pop()
        q.append((ts, value))

    def append(self, ts: float, value: float) -> None:
        """Add an ok reading; ``ts`` must not be before the newest one (caller checks)."""
        self._newest = ts
        self._last_v = value
        self._last_in = True
        if self._want_mean:
            self._times.append(ts)
            self._values.append(value)
            if value >= 0.0:
                self._pos += value
            else:
                self._neg += value
            self._ops += 1
        if self._want_max:
            q = self._maxq
            while q and q[-1][1] <= value:
                q.pop()
            q.append((ts, value))
        if self._want_min:
            q = self._minq
            while q and q[-1][1] >= value:
                q.pop()
            q.append((ts, value))
        # Queries evict; here only now and then, to bound windows nobody queries (a
        # last-only window keeps nothing to bound).
        if self._want_mean or self._want_max or self._want_min:
            self._pending += 1
            if self._pending >= _EVICT_EVERY:
                self.evict(ts)

    def appender(self) -> Callable[[float, float], None]:
        """:meth:`append` for the aggregates maintained now, without the tests for the
        others (the ingest hot path). Same operations in the same order as
        :meth:`append`; ask again after :meth:`want`."""
        if self._want_min or (self._want_mean and self._want_max):
            return self.append
        if self._want_mean:
            times_append = self._times.append
            values_append = self._values.append
            evict = self.evict

            def append_mean(ts: float, value: float) -> None:
                self._newest = ts
                self._last_v = value
                self._last_in = True
                times_append(ts)
                values_append(value)
                if value >= 0.0:
                    self._pos += value
                else:
                    self._neg += value
                self._ops += 1
                self._pending += 1
                if self._pending >= _EVICT_EVERY:
                    evict(ts)

            return append_mean
        if not self._want_max:

            def append_last(ts: float, value: float) -> None:
                # nothing to bound: only the newest reading is kept
                self._newest = ts
                self._last_v = value
                self._last_in = True

            return append_last
        maxq = self._maxq
        evict_max = self.evict

        def append_max(ts: float, value: float) -> None:
            self._newest = ts
            self._last_v = value
            self._last_in = True
            while maxq and maxq[-1][1] <= value:
                maxq.pop()
            maxq.append((ts, value))
            self._pending += 1
            if self._pending >= _EVICT_EVERY:
                evict_max(ts)

        return append_max

    def evict(self, now: float) -> None:
        """Drop readings at or before ``now - length``."""
        self._pending = 0
        newest = self._newest
        # the horizon follows the newest reading too (as if evicted on every append)
        horizon = (newest if newest > now else now) - self.length
        if newest <= horizon:
            self._last_in = False
        times = self._times
        if times and times[0] <= horizon:
            self._drop(horizon)
        else:
            self._drop_queues(horizon)

    def _drop(self, horizon: float) -> None:
        """Pop the readings at or before ``horizon`` (there is at least one kept), and
        the queues' entries."""
        times = self._times
        values = self._values
        pos = self._pos
        neg = self._neg
        peak = self._peak
        if pos - neg > peak:
            peak = self._peak = pos - neg
        ops = self._ops
        while times and times[0] <= horizon:
            times.popleft()
            v = values.popleft()
            if v >= 0.0:
                pos -= v
            else:
                neg -= v
            ops += 1
        n = len(times)
        if (
            not n
            or ops >= (n if n > _RESUM_MIN else _RESUM_MIN)
            or not (peak <= _SHRINK * (pos - neg) < _INF)
        ):
            self._resum()
        else:
            self._pos = pos
            self._neg = neg
            self._ops = ops
        self._drop_queues(horizon)

    def _resum(self) -> None:
        """Make the running sums exact again (see the module's docstring)."""
        self._pos, self._neg = exact_sums(self._values)
        self._peak = self._pos - self._neg
        self._ops = 0

    def _drop_queues(self, horizon: float) -> None:
        q = self._maxq
        while q and q[0][0] <= horizon:
            q.popleft()
        q = self._minq
        while q and q[0][0] <= horizon:
            q.popleft()

    def aggregate(self, kind: str, now: float) -> float | None:
        """The aggregate over ``(now - length, now]``; None if the window is empty."""
        return self.reader(kind)(now)

    def reader(self, kind: str) -> Callable[[float], float | None]:
        """The bound method computing ``kind`` (looked up once, called often)."""
        if kind not in AGGREGATES:
            raise ValueError(f"unknown aggregate {kind!r}")
        if kind != "last" and not getattr(self, f"_want_{kind}"):
            raise ValueError(f"{kind} is not maintained by this window")
        return {"mean": self.mean, "max": self.max, "min": self.min, "last": self.last}[kind]

    def mean(self, now: float) -> float | None:
        # evict() inlined: rules read their windows every second, and at 1 Hz each read
        # drops a reading or two; for a mean-only window so is _drop()
        self._pending = 0
        times = self._times
        if not times:
            return None
        newest = times[-1]
        horizon = (newest if newest > now else now) - self.length
        if times[0] <= horizon:
            if newest <= horizon:
                self._last_in = False
            if self._want_max or self._want_min:
                self._drop(horizon)
                if not times:
                    return None
                m = (self._pos + self._neg) / len(times)
                return m if m - m == 0.0 else _scaled_mean(self._values)
            values = self._values
            pos = self._pos
            neg = self._neg
            peak = self._peak
            if pos - neg > peak:
                peak = self._peak = pos - neg
            ops = self._ops
            while True:
                times.popleft()
                v = values.popleft()
                if v >= 0.0:
                    pos -= v
                else:
                    neg -= v
                ops += 1
                if not times or times[0] > horizon:
                    break
            n = len(times)
            if not n:
                self._resum()
                return None
            if ops >= (n if n > _RESUM_MIN else _RESUM_MIN) or not (
                peak <= _SHRINK * (pos - neg) < _INF
            ):
                self._resum()
                total = self._pos + self._neg
            else:
                self._pos = pos
                self._neg = neg
                self._ops = ops
                total = pos + neg
        else:
            total = self._pos + self._neg
            n = len(times)
        m = total / n
        if m - m == 0.0:  # finite
            return m
        return _scaled_mean(self._values)

    def max(self, now: float) -> float | None:
        self.evict(now)
        return self._maxq[0][1] if self._maxq else None

    def min(self, now: float) -> float | None:
        self.evict(now)
        return self._minq[0][1] if self._minq else None

    def last(self, now: float) -> float | None:
        self.evict(now)
        return self._last_v if self._last_in else None


@dataclass(slots=True)
class Series:
    """One (site, device, metric): windows by length, freshness of ok data."""

    windows: dict[float, RollingWindow] = field(default_factory=dict)
    last_ok_ts: float | None = None
    last_ts: float | None = None
    bad: bool = False  # the latest reading had a non-ok status
    bad_readings: int = 0

    def window(self, length: float, kinds: Iterable[str]) -> RollingWindow:
        w = self.windows.get(length)
        if w is None:
            w = self.windows[length] = RollingWindow(length, kinds)
        else:
            w.want(kinds)
        return w

    def add(self, ts: float, value: float, ok: bool) -> None:
        self.last_ts = ts
        if ok:
            self.bad = False
            self.last_ok_ts = ts
            for w in self.windows.values():
                w.append(ts, value)
        else:
            self.bad = True
            self.bad_readings += 1

    def value(self, kind: str, length: float, now: float, stale_after: float) -> float | None:
        """The aggregate, or None (unknown) when empty, stale or the latest reading is bad."""
        if self.bad or self.last_ok_ts is None or now - self.last_ok_ts > stale_after:
            return None
        w = self.windows.get(length)
        if w is None:
            return None
        return w.aggregate(kind, now)


_GAPS = 16


class DeviceTrack:
    """One (site, device): duplicate/out-of-order guard and poll interval estimate.

    ``stale_after`` (seconds) is kept up to date on every accepted reading:
    ``factor`` x the median gap, clamped to ``[lo, hi]``; ``hi`` before the
    second reading.
    """

    __slots__ = (
        "factor", "gaps", "hi", "last_seq", "last_ts", "lo", "raw_gap", "same", "stale_after",
    )  # fmt: skip

    def __init__(self, factor: float = 3.0, lo: float = 10.0, hi: float = 600.0) -> None:
        self.factor, self.lo, self.hi = factor, lo, hi
        self.last_ts: float | None = None
        self.last_seq: int | None = None
        self.gaps: deque[float] = deque(maxlen=_GAPS)
        self.same = True  # all gaps in `gaps` are equal (a steady poll: the median is that gap)
        self.raw_gap = -1.0  # the last gap before rounding (gaps[-1] is its rounded value)
        self.stale_after = hi

    def configure(self, factor: float, lo: float, hi: float) -> None:
        """New staleness settings (a rules reload); the interval estimate is kept."""
        self.factor, self.lo, self.hi = factor, lo, hi
        iv = self.interval
        self.stale_after = hi if iv is None else min(max(factor * iv, lo), hi)

    def accept(self, ts: float, seq: int) -> str | None:
        """None if the reading is new; else ``"duplicate"`` or ``"out_of_order"``."""
        last = self.last_ts
        if last is not None:
            if ts < last:
                return "out_of_order"
            if ts == last:
                return "duplicate"
            # to the microsecond: timestamps are whole milliseconds on the wire, and
            # their float differences must not look like different poll intervals
            gaps = self.gaps
            raw = ts - last
            if raw == self.raw_gap:
                gap = gaps[-1]  # the same difference as last time: rounds the same
            else:
                gap = round(raw, 6)
                self.raw_gap = raw
            # the median only changes when the multiset of gaps does, and not while
            # every gap is the same
            if gaps and self.same and gap == gaps[-1]:
                gaps.append(gap)
            elif len(gaps) < _GAPS or gaps[0] != gap:
                gaps.append(gap)
                g = sorted(gaps)
                self.same = g[0] == g[-1]
                iv = _median(g)
                self.stale_after = min(max(self.factor * iv, self.lo), self.hi)
            else:
                gaps.append(gap)
        self.last_ts = ts
        self.last_seq = seq
        return None

    @property
    def interval(self) -> float | None:
        """Median gap between the last readings, None before the second reading."""
        return _median(sorted(self.gaps)) if self.gaps else None


def _median(g: list[float]) -> float:
    """The median of a sorted, non-empty list."""
    n = len(g)
    return g[n // 2] if n % 2 else (g[n // 2 - 1] + g[n // 2]) / 2
