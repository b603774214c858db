"""held_back / held_back_end: the engine says when an interlock keeps a rule whose
value is beyond its threshold from starting, and when that is over."""

from __future__ import annotations

from rulehelpers import events, rules_file

from gateway.protocol import Telemetry
from rules.core.engine import Engine
from rules.core.evaluator import Action

RF = rules_file(
    """
actuators:
  site-01/cannon-1: {}
defaults: {min_staleness: 10s, max_staleness: 60s, lease_s: 30s}
rules:
  - id: pm10
    site: site-01
    metric: pm10
    devices: [gate]
    aggregate: last
    window: 1m
    above: 150
    clear: 100
    actions: {lease: [cannon-1]}
    unless:
      - {name: frost, metric: temp, devices: [gate], aggregate: last, window: 1m, below: 3, clear: 4}
"""
)


class Feed:
    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.seq = 0
        self.t = 1_780_000_000.0

    def step(self, pm10: float, temp: float) -> list[Action]:
        self.t += 1
        self.seq += 1
        msg = Telemetry(ts=int(self.t * 1000), seq=self.seq, values={"pm10": pm10, "temp": temp})
        return self.eng.ingest("site-01", "gate", msg, self.t) + self.eng.tick(self.t)


def kinds_of(actions: list[Action]) -> list[str]:
    return [e.event.kind for e in events(actions)]


def test_held_back_under_frost_then_the_dust_falls() -> None:
    f = Feed(Engine(RF))
    assert kinds_of(f.step(80, -2)) == []
    out = f.step(300, -2)
    assert kinds_of(out) == ["interlock", "held_back"]
    (held,) = events(out, "held_back")
    assert held.event.data == {"value": 300.0, "interlocks": ["frost"]}
    assert kinds_of(f.step(280, -2)) == []  # still held back: said once
    assert kinds_of(f.step(120, -2)) == []  # below the threshold, above clear: hysteresis
    out = f.step(90, -2)
    assert kinds_of(out) == ["held_back_end"]
    # the dust rises again, the block is remembered: no new interlock event, held back again
    assert kinds_of(f.step(310, -2)) == ["held_back"]


def test_the_frost_lifts_and_the_rule_starts() -> None:
    f = Feed(Engine(RF))
    f.step(300, -2)
    assert kinds_of(f.step(300, 10)) == ["on", "held_back_end"]
    assert kinds_of(f.step(300, 10)) == []


def test_a_restart_keeps_what_is_held_back() -> None:
    f = Feed(Engine(RF))
    f.step(300, -2)
    snap = f.eng.snapshot()
    assert snap["held_back"] == ["pm10@site-01"]
    f.eng = Engine.restore(RF, snap, f.t)
    assert kinds_of(f.step(300, -2)) == []  # not said again
    assert kinds_of(f.step(50, -2)) == ["held_back_end"]


def test_an_active_rule_stopped_by_frost_is_held_back() -> None:
    f = Feed(Engine(RF))
    assert "on" in kinds_of(f.step(300, 10))
    out = f.step(300, -2)
    assert kinds_of(out) == ["interlock", "off", "held_back"]
    assert kinds_of(f.step(300, -2)) == []
