"""Plausibility limits per metric: what a reading may be before the engine trusts it. Pure.

A value outside its metric's ``[min, max]`` is not a concentration (or a
noise level, a wind speed ...) but a fault or an over-range reading: the
engine leaves it out of every window and every rule, as if the metric were
missing from that reading (one absurd value neither poisons a mean nor stops
a running spray; a sensor that sends nothing plausible goes stale), counts it
(``over_limit``, ``below_limit``; ``non_finite`` for NaN and infinities,
which every metric refuses), and the service stores it flagged: HJ 212 flag
``T`` (:attr:`Status.OVER_RANGE`) over the upper limit, ``D``
(:attr:`Status.FAULT`) under the lower one.

The defaults (:data:`DEFAULT_LIMITS`) are the widest measuring ranges of the
instruments dustgate reads (docs/DESIGN.md, "Plausibility limits", cites them),
so that no genuine reading of a supported instrument is refused; an operator
whose instrument measures less (e.g. a 0-1000 ug/m3 monitor, the HJ 653
range) narrows them in rules.yaml::

    limits:
      pm10: {max: 1000}
      water_level: {min: 0, max: 4.5}
      noise: {min: null}          # no lower limit

A key given replaces that bound of the default, ``null`` removes it; metrics
without a default (site extras, ``rain``, ``water_level``) have no bounds but
finiteness unless configured.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Annotated

from pydantic import Field, model_validator

from gateway.configfile import StrictModel
from gateway.protocol import Status

FLOAT_MAX = sys.float_info.max
Bounds = tuple[float, float]
NO_BOUNDS: Bounds = (-FLOAT_MAX, FLOAT_MAX)  # still refuses NaN and infinities

DEFAULT_LIMITS: dict[str, Bounds] = {
    # particulates, ug/m3: laser site monitors measure up to 30 mg/m3 (SDS011
    # 999.9, PMS5003 >= 1000, HJ 653 ambient monitors 0-1000); below 0 is impossible
    "pm1": (0.0, 30_000.0),
    "pm25": (0.0, 30_000.0),
    "pm10": (0.0, 30_000.0),
    "tsp": (0.0, 30_000.0),
    "noise": (30.0, 130.0),  # dB(A), sound level meters on site stations
    "wind_speed": (0.0, 60.0),  # m/s, cup/ultrasonic anemometers
    "wind_dir": (0.0, 360.0),  # degrees
    "temp": (-40.0, 80.0),  # degrees C, station air temperature
    "rh": (0.0, 100.0),  # %
    "pressure": (100.0, 1200.0),  # hPa (10-120 kPa)
}

_FINITE = Annotated[float, Field(allow_inf_nan=False)]


class Limit(StrictModel):
    """One metric's bounds in rules.yaml ``limits:``; an omitted bound keeps the
    default, ``null`` removes it."""

    min: _FINITE | None = None
    max: _FINITE | None = None

    @model_validator(mode="after")
    def _order(self) -> Limit:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"min ({self.min:g}) must be below max ({self.max:g})")
        return self

    def bounds(self, default: Bounds | None) -> Bounds:
        lo, hi = default if default is not None else NO_BOUNDS
        given = self.model_fields_set
        if "min" in given:
            lo = self.min if self.min is not None else -FLOAT_MAX
        if "max" in given:
            hi = self.max if self.max is not None else FLOAT_MAX
        if not lo < hi:
            raise ValueError(f"min ({lo:g}) must be below max ({hi:g})")
        return lo, hi


MetricKey = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]
LimitsSection = dict[MetricKey, Limit]


def limit_table(configured: Mapping[str, Limit] | None = None) -> dict[str, Bounds]:
    """The defaults with the configured limits applied: metric -> (min, max)."""
    table = dict(DEFAULT_LIMITS)
    for metric, limit in (configured or {}).items():
        table[metric] = limit.bounds(DEFAULT_LIMITS.get(metric))
    return table


def verdict(value: float, bounds: Bounds) -> str | None:
    """None if ``value`` is plausible, else the counter: ``non_finite``,
    ``below_limit`` or ``over_limit``."""
    lo, hi = bounds
    if lo <= value <= hi:
        return None
    if not math.isfinite(value):
        return "non_finite"
    return "below_limit" if value < lo else "over_limit"


def outside(values: Mapping[str, float], table: Mapping[str, Bounds]) -> dict[str, Status] | None:
    """The flags to store for the implausible values of one reading (None: all plausible):
    ``over_range`` (HJ 212 ``T``) above the upper limit, ``fault`` (``D``) otherwise."""
    out: dict[str, Status] | None = None
    get = table.get
    for metric, value in values.items():
        lo, hi = get(metric, NO_BOUNDS)
        if lo <= value <= hi:
            continue
        if out is None:
            out = {}
        out[metric] = Status.OVER_RANGE if value > hi and value <= FLOAT_MAX else Status.FAULT
    return out
