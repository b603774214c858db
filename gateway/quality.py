"""Data quality of one device's readings, pure: valid ranges and stuck values.

Statuses follow the HJ 212 flags (see ``gateway.protocol.Status``). A metric
outside its configured valid range is flagged ``over_range``; a metric whose
value has not changed for ``stuck_after`` seconds is flagged ``fault`` (a
frozen sensor keeps answering the bus with its last value). An operator can
put a whole device into maintenance or calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.protocol import Status


@dataclass(slots=True)
class StuckTracker:
    """Per metric: the last distinct value and since when it has not changed."""

    since: dict[str, tuple[float, float]] = field(default_factory=dict)


def assess(
    values: dict[str, float],
    now: float,
    tracker: StuckTracker,
    valid_range: dict[str, tuple[float, float]],
    stuck_after: float,
    stuck_metrics: list[str] | None,
    mode: Status | None,
    known: dict[str, Status] | None = None,
) -> tuple[Status, dict[str, Status] | None]:
    """The device status and per-metric flags for one reading (updates ``tracker``).

    ``known`` holds flags found before (a metric dropped as non-finite: ``fault``).
    """
    flags: dict[str, Status] = dict(known) if known else {}
    for metric, value in values.items():
        lo_hi = valid_range.get(metric)
        if lo_hi is not None and not lo_hi[0] <= value <= lo_hi[1]:
            flags[metric] = Status.OVER_RANGE
        if stuck_after > 0 and (stuck_metrics is None or metric in stuck_metrics):
            prev = tracker.since.get(metric)
            if prev is None or prev[0] != value:
                tracker.since[metric] = (value, now)
            elif now - prev[1] >= stuck_after:
                flags[metric] = Status.FAULT
    if mode is not None:
        return mode, flags or None
    if not flags:
        return Status.OK, None
    if not values.keys() - flags.keys():
        # every metric is bad: the device itself is
        worst = max(flags.values(), key=lambda s: s.severity)
        return worst, None if len(set(flags.values())) == 1 else flags
    return Status.OK, flags
