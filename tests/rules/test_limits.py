"""Plausibility limits: defaults, rules.yaml ``limits:``, and what the engine does with a
value outside them (left out of windows and rules, counted), the issue's regressions."""

from __future__ import annotations

import math
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rulehelpers import rules_file

from gateway.configfile import ConfigError
from gateway.protocol import Status, Telemetry
from rules.core.engine import Engine, SwitchOff
from rules.core.limits import DEFAULT_LIMITS, NO_BOUNDS, outside, verdict

MEAN_RULE = """
sites: [site-01]
actuators:
  site-01/cannon-1: {litres_per_minute: 20}
defaults: {min_staleness: 10s, max_staleness: 60s, lease_s: 30s}
%(limits)s
rules:
  - id: dust
    site: site-01
    metric: %(metric)s
    devices: [gate-monitor]
    aggregate: mean
    window: 4s
    above: 150
    clear: 100
    for: 0s
    actions: {lease: [cannon-1], cooldown: 2m}
"""

_seq = count()


def engine(metric: str = "pm10", limits: str = "") -> Engine:
    return Engine(rules_file(MEAN_RULE % {"metric": metric, "limits": limits}))


def feed(eng: Engine, t: float, **values: float) -> list[object]:
    tel = Telemetry.model_construct(
        ts=int(t * 1000), seq=next(_seq), values=values, status=Status.OK, flags=None, model=None
    )
    return list(eng.ingest("site-01", "gate-monitor", tel, now=t))


def run_active(eng: Engine, metric: str, first: float) -> list[object]:
    """Active on 300s, then ``first`` once, then 300 every second for 12 s."""
    out: list[object] = []
    for t in range(5):
        out += feed(eng, float(t), **{metric: 300.0})
        out += eng.tick(float(t))
    assert eng.state("dust", "site-01").phase == "active"
    out += feed(eng, 5.0, **{metric: first})
    out += eng.tick(5.0)
    for t in range(6, 18):
        out += feed(eng, float(t), **{metric: 300.0})
        out += eng.tick(float(t))
    return out


@pytest.mark.parametrize("absurd", [1e300, 1e20, 1.7e308, -5.0])
def test_an_absurd_particulate_never_enters_a_window_nor_stops_a_spray(absurd: float) -> None:
    """The issue's case: pm10 1e300 (or 1e20, 1.7e308, -5) was a good reading; once it
    left the 4 s window the mean printed 0.0 and the active rule was cleared."""
    eng = engine()
    out = run_active(eng, "pm10", absurd)
    assert not [a for a in out if isinstance(a, SwitchOff)]
    assert eng.state("dust", "site-01").phase == "active"
    assert eng.last_values[("dust", "site-01")] == 300.0
    c = eng.counters
    assert c["over_limit" if absurd > 0 else "below_limit"] == 1


def test_a_metric_without_limits_still_cannot_poison_its_window() -> None:
    """A site extra has no default limits: the 1e300 enters the window, and the exact
    window arithmetic forgets it once it has left (the rule is not cleared)."""
    eng = engine("dust_index")
    out = run_active(eng, "dust_index", 1e300)
    assert not [a for a in out if isinstance(a, SwitchOff)]
    assert eng.last_values[("dust", "site-01")] == 300.0
    assert eng.counters["over_limit"] == 0


def test_limits_from_rules_yaml_override_the_defaults() -> None:
    eng = engine(limits="limits:\n  pm10: {max: 1000}\n  dust_index: {min: 0, max: 500}")
    assert eng.limits["pm10"] == (0.0, 1000.0)  # min kept from the default
    assert eng.limits["dust_index"] == (0.0, 500.0)
    assert eng.limits["noise"] == DEFAULT_LIMITS["noise"]
    out = run_active(eng, "pm10", 1500.0)  # over a 0-1000 monitor's range: flagged T
    assert not [a for a in out if isinstance(a, SwitchOff)]
    assert eng.counters["over_limit"] == 1
    assert engine(limits="limits:\n  noise: {min: null}").limits["noise"][0] < -1e300


@pytest.mark.parametrize(
    ("limits", "where", "message"),
    [
        ("limits:\n  pm10: {min: 5, max: 1}", "test-rules.yaml:7", "must be below max"),
        ("limits:\n  noise: {max: 20}", "test-rules.yaml:7", "the default noise limits"),
        ("limits:\n  pm10: {max: .inf}", "test-rules.yaml:7", "finite"),
        ("limits:\n  PM10: {max: 1}", "test-rules.yaml:7", "pattern"),
        ("limits:\n  pm10: {top: 1}", "test-rules.yaml:7", "top"),
        ("limits:\n  dust_index: {min: 1.7976931348623157e308}", "test-rules.yaml:7", "no default"),
    ],
)
def test_bad_limits_are_reported_at_their_line(limits: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        engine(limits=limits)
    text = str(info.value)
    assert where in text and message in text, text


def test_outside_flags_over_range_and_faults() -> None:
    table = {"pm10": (0.0, 1000.0)}
    assert outside({"pm10": 88.0, "x": 1e300}, table) is None
    assert outside({"pm10": 1001.0, "rh": -1.0, "x": math.inf}, {**table, "rh": (0.0, 100.0)}) == {
        "pm10": Status.OVER_RANGE,
        "rh": Status.FAULT,
        "x": Status.FAULT,
    }
    assert Status.OVER_RANGE.hj212_flag == "T"


@settings(max_examples=300, deadline=None)
@given(st.floats(), st.sampled_from([*DEFAULT_LIMITS.values(), NO_BOUNDS]))
def test_verdict_and_outside_agree_and_refuse_every_non_finite_value(
    value: float, bounds: tuple[float, float]
) -> None:
    v = verdict(value, bounds)
    flagged = outside({"m": value}, {"m": bounds})
    assert (v is None) == (flagged is None)
    if not math.isfinite(value):
        assert v == "non_finite"
    elif v is None:
        assert bounds[0] <= value <= bounds[1]
