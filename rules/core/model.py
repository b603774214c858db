"""Rule config models: what one entry of ``rules.yaml`` ``rules:`` may say.

A rule watches one metric on one or several devices of a site::

    - id: pm10-gate
      site: site-01
      metric: pm10
      devices: [gate-monitor]
      aggregate: mean          # mean | max | min | last, over `window`
      window: 15m
      above: 150               # ON threshold (or `below:`)
      clear: 100               # hysteresis: OFF only at/below this (default: the threshold)
      for: 1m                  # on-delay: the condition must hold this long
      min_clear: 2m            # the clear condition must hold this long before OFF
      actions: {lease: [cannon-1], run_for: 10m, cooldown: 5m, max_on: 45m}
      unless:                  # interlocks: any one holding blocks (and stops) spraying
        - {name: frost, metric: temp, devices: [gate-monitor], below: 3}

Several devices are combined into one number before the threshold test:
``any`` (above: the highest known device, below: the lowest -- a dead monitor
does not disable the rule while another one works), ``all`` (above: the
lowest device; unknown if any device is unknown) or ``mean`` (unknown if any
device is unknown). ``relative_to`` subtracts a background (e.g. the county
station, Hebei DB13/2934: site hourly PM10 minus county average > 80).

Interlocks whose data is unknown (stale, bad status, never seen) hold by
default (``on_unknown: block``): an interlock we cannot see is treated as if
it were tripped, because spraying at -5 C or with an empty tank is the harm we
guard against. ``on_unknown: ignore`` opts out per interlock.

Cross-field checks (``clear`` on the wrong side, both ``above`` and ``below``)
are field validators so the error points at the offending key's line.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gateway.configfile import Duration, StrictModel
from gateway.hours import Hours
from gateway.protocol import ID_PATTERN

Id = Annotated[str, Field(pattern=ID_PATTERN)]
MetricName = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]
Aggregate = Literal["mean", "max", "min", "last"]
Combine = Literal["any", "all", "mean"]
Severity = Literal["info", "warning", "critical"]
Window = Annotated[Duration, Field(ge=1.0, le=86400.0)]
"""A rolling window: 1 s .. 24 h."""

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _check_clear_side(value: float | None, info: ValidationInfo) -> float | None:
    """``clear`` must sit on the release side of the ON threshold."""
    if value is None:
        return value
    above, below = info.data.get("above"), info.data.get("below")
    if above is not None and value > above:
        raise ValueError(
            f"clear ({value:g}) must be at or below the ON threshold above: {above:g} "
            "(it is the level the reading must fall back to before the rule releases)"
        )
    if below is not None and value < below:
        raise ValueError(f"clear ({value:g}) must be at or above the ON threshold below: {below:g}")
    return value


def _check_below_exclusive(value: float | None, info: ValidationInfo) -> float | None:
    if value is not None and info.data.get("above") is not None:
        raise ValueError("give either above: or below:, not both")
    return value


class _Threshold(StrictModel):
    """``above``/``below`` + ``clear``; exactly one of above/below."""

    above: float | None = None
    below: float | None = None
    clear: float | None = None

    _below_excl = field_validator("below")(_check_below_exclusive)
    _clear_side = field_validator("clear")(_check_clear_side)

    @model_validator(mode="after")
    def _needs_threshold(self) -> Any:
        if self.above is None and self.below is None:
            raise ValueError("needs a threshold: above: N or below: N")
        return self

    @property
    def is_above(self) -> bool:
        return self.above is not None

    @property
    def threshold(self) -> float:
        t = self.above if self.above is not None else self.below
        assert t is not None
        return t

    @property
    def clear_level(self) -> float:
        return self.clear if self.clear is not None else self.threshold


class Background(StrictModel):
    """A background to subtract: ``value = site value - background``."""

    site: Id | None = None  # default: the rule's site
    devices: Annotated[list[Id], Field(min_length=1)]
    metric: MetricName | None = None  # default: the rule's metric
    aggregate: Aggregate | None = None  # default: the rule's
    window: Window | None = None  # default: the rule's
    combine: Combine = "mean"

    _devs = field_validator("devices", mode="before")(_one_or_many)


class Interlock(_Threshold):
    """A condition that blocks spraying while it holds (frost, high wind, rain, low water)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")]
    metric: MetricName
    site: Id | None = None  # default: the rule's site
    devices: Annotated[list[Id], Field(min_length=1)]
    aggregate: Aggregate = "last"
    window: Window = 60.0
    combine: Combine = "any"
    on_unknown: Literal["block", "ignore"] = "block"

    _devs = field_validator("devices", mode="before")(_one_or_many)


class ActiveHours(StrictModel):
    """When a rule may start: ``hours: "06:00-22:00"`` (may wrap midnight), ``days``, ``tz``.

    ``hours`` has the syntax of the actuators' ``allowed_hours`` (:mod:`gateway.hours`,
    one parser for both): it may name its days too (``"mon-fri 07:00-19:00"``); the
    rule is active on the days both ``hours`` and ``days`` allow."""

    hours: str = "00:00-24:00"
    days: list[Day] = Field(default_factory=lambda: list(DAYS))
    tz: str = "UTC"

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        Hours.parse(v)  # ValueError says what is expected
        return v

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (e.g. Asia/Shanghai, UTC)") from None
        return v

    def contains(self, now: float) -> bool:
        """Is ``now`` (epoch seconds) inside the active hours? Pure.

        Cached per minute of time (zone offsets are whole minutes), since
        rules ask every second.
        """
        return _contains(self.hours, tuple(self.days), self.tz, int(now // 60))

    def key(self) -> tuple[str, tuple[str, ...], str]:
        return (self.hours, tuple(self.days), self.tz)


@lru_cache(maxsize=4096)
def _contains(hours: str, days: tuple[str, ...], tz: str, epoch_minute: int) -> bool:
    local = datetime.fromtimestamp(epoch_minute * 60, ZoneInfo(tz))
    window = _window(hours, days)
    return window.contains(local.weekday(), local.hour * 60 + local.minute)


@lru_cache(maxsize=256)
def _window(hours: str, days: tuple[str, ...]) -> Hours:
    return Hours.parse(hours).restricted_to(frozenset(DAYS.index(d) for d in days))


class Actions(StrictModel):
    """What an active rule does with actuators (ids on the rule's site)."""

    lease: list[Id] = Field(default_factory=list)
    run_for: Duration = 0.0  # minimum run once started (safety stops still win)
    cooldown: Duration = 0.0  # minimum rest after OFF before the rule may start again
    max_on: Duration | None = None  # forced OFF after this long (default: actuator's max_on)
    # default: defaults.lease_s
    lease_s: Annotated[Duration, Field(ge=3.0, le=3600.0)] | None = None

    _lease = field_validator("lease", mode="before")(_one_or_many)


class Rule(_Threshold):
    id: Id
    description: str = ""
    enabled: bool = True
    site: Annotated[list[Id], Field(min_length=1)]
    metric: MetricName
    devices: Annotated[list[Id], Field(min_length=1)]
    combine: Combine = "any"
    aggregate: Aggregate = "mean"
    window: Window = 60.0
    relative_to: Background | None = None
    for_: Duration = Field(default=0.0, alias="for")
    min_clear: Duration = 0.0
    actions: Actions = Field(default_factory=Actions)
    unless: list[Interlock] = Field(default_factory=list)
    active: ActiveHours | None = None
    severity: Severity = "warning"
    notify: list[str] = Field(default_factory=list)

    _sites = field_validator("site", "devices", "notify", mode="before")(_one_or_many)

    @field_validator("unless")
    @classmethod
    def _unique_interlocks(cls, v: list[Interlock]) -> list[Interlock]:
        names = [i.name for i in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"interlock names must be unique, repeated: {sorted(dup)}")
        return v

    def describe_condition(self) -> str:
        op = ">" if self.is_above else "<"
        rel = ""
        if self.relative_to is not None:
            rel = f" - background({','.join(self.relative_to.devices)})"
        return f"{self.aggregate}({self.metric}, {self.window:g}s){rel} {op} {self.threshold:g}"
