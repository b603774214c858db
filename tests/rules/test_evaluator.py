"""The per-rule state machine: unit cases and hypothesis properties."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from rulehelpers import events, kinds, make_rule

from rules.core.evaluator import (
    IDLE,
    Action,
    LeaseOn,
    Notify,
    RuleInputs,
    RuleState,
    SwitchOff,
    evaluate,
)
from rules.core.model import Rule

FROST = {"name": "frost", "metric": "temp", "devices": ["gate-monitor"], "below": 3, "clear": 4}
SPRAY = {"lease": ["cannon-1"], "run_for": "2m", "cooldown": "5m", "max_on": "30m"}


def step(
    rule: Rule, state: RuleState, now: float, value: float | None, temp: float | None = 10.0
) -> tuple[RuleState, list[Action]]:
    return evaluate(rule, state, RuleInputs("site-01", value, {"frost": temp}), now)


def run(rule: Rule, series: list[tuple[float, float | None]]) -> tuple[RuleState, list[Action]]:
    state, out = IDLE, []
    for now, v in series:
        state, acts = step(rule, state, now, v)
        out.extend(acts)
    return state, out


def test_full_cycle_idle_pending_active_cooldown_idle() -> None:
    rule = make_rule(**{"for": "1m", "min_clear": "30s", "actions": SPRAY, "unless": [FROST]})
    s, a = step(rule, IDLE, 0.0, 160.0)
    assert s.phase == "pending" and kinds(a) == ["event:pending"]
    s, a = step(rule, s, 59.0, 170.0)
    assert s.phase == "pending" and a == []
    s, a = step(rule, s, 60.0, 170.0)
    assert s.phase == "active"
    assert kinds(a) == ["on:cannon-1", "event:on"]
    lease = a[0]
    assert isinstance(lease, LeaseOn) and lease.lease_s == 60.0 and lease.rule == "pm10"
    # renewals every lease_s / 3 while it holds; 120 (between clear and ON) keeps it on
    s, a = step(rule, s, 79.0, 120.0)
    assert a == []
    s, a = step(rule, s, 80.0, 120.0)
    assert kinds(a) == ["on:cannon-1"]
    # below clear, but min_clear (30 s) and run_for (2 min) must both pass
    s, a = step(rule, s, 100.0, 90.0)
    assert s.phase == "active" and s.clear_since == 100.0
    s, a = step(rule, s, 130.0, 90.0)
    assert s.phase == "active"  # min_clear done, run_for (until 180) not
    s, a = step(rule, s, 180.0, 90.0)
    assert s.phase == "cooldown"
    assert kinds(a) == ["off:cannon-1", "event:off"]
    off = a[0]
    assert isinstance(off, SwitchOff) and off.reason == "cleared"
    # cooldown 5 min: no restart before 480 even if the dust is back
    s, a = step(rule, s, 400.0, 200.0)
    assert s.phase == "cooldown" and not any(isinstance(x, LeaseOn) for x in a)
    s, a = step(rule, s, 480.0, 200.0)
    assert s.phase == "pending"


def test_clear_that_goes_back_up_resets_min_clear() -> None:
    rule = make_rule(min_clear="60s", actions={"lease": ["cannon-1"]})
    s, _ = step(rule, IDLE, 0.0, 200.0)
    s, _ = step(rule, s, 10.0, 90.0)
    assert s.clear_since == 10.0
    s, _ = step(rule, s, 40.0, 120.0)  # above clear again
    assert s.clear_since is None
    s, _ = step(rule, s, 50.0, 90.0)
    s, _ = step(rule, s, 100.0, 90.0)
    assert s.phase == "active"  # only 50 s clear
    s, _ = step(rule, s, 110.0, 90.0)
    assert s.phase == "cooldown"


def test_pending_resets_when_condition_drops_or_data_unknown() -> None:
    rule = make_rule(**{"for": "1m", "actions": {"lease": ["cannon-1"]}})
    s, _ = step(rule, IDLE, 0.0, 200.0)
    s, _ = step(rule, s, 30.0, 140.0)  # below ON threshold (hysteresis is only for release)
    assert s.phase == "idle"
    s, _ = step(rule, s, 40.0, 200.0)
    s, a = step(rule, s, 50.0, None)
    assert s.phase == "idle" and kinds(a) == ["event:stale"]
    s, _ = step(rule, s, 60.0, 200.0)
    assert s.phase == "pending" and s.since == 60.0


def test_unknown_data_stops_an_active_rule_at_once() -> None:
    rule = make_rule(actions={"lease": ["cannon-1"], "run_for": "10m"})
    s, _ = step(rule, IDLE, 0.0, 200.0)
    assert s.phase == "active"
    s, a = step(rule, s, 5.0, None)
    assert s.phase == "cooldown"
    assert kinds(a) == ["event:stale", "off:cannon-1", "event:off"]
    assert events(a, "off")[0].event.data == {"reason": "stale", "ran_s": 5.0}


def test_interlock_blocks_start_and_stops_a_run_with_an_event() -> None:
    rule = make_rule(actions={"lease": ["cannon-1"], "run_for": "10m"}, unless=[FROST])
    s, a = step(rule, IDLE, 0.0, 200.0, temp=2.0)
    assert s.phase == "idle" and kinds(a) == ["event:interlock"]
    assert s.blocked == ("frost",)
    # hysteresis: 3.5 is above the trip level 3 but below clear 4: still holding
    s, a = step(rule, s, 10.0, 200.0, temp=3.5)
    assert s.phase == "idle" and a == []
    s, a = step(rule, s, 20.0, 200.0, temp=4.5)
    assert s.phase == "active"
    s, a = step(rule, s, 30.0, 200.0, temp=1.0)
    assert s.phase == "cooldown"
    assert kinds(a) == ["event:interlock", "off:cannon-1", "event:off"]
    assert a[1].reason == "interlock:frost"  # type: ignore[union-attr]


def test_unknown_interlock_data_blocks_unless_told_to_ignore() -> None:
    rule = make_rule(actions={"lease": ["cannon-1"]}, unless=[FROST])
    s, _ = step(rule, IDLE, 0.0, 200.0, temp=None)
    assert s.phase == "idle" and s.blocked == ("frost",)
    lenient = make_rule(actions={"lease": ["cannon-1"]}, unless=[{**FROST, "on_unknown": "ignore"}])
    s, _ = step(lenient, IDLE, 0.0, 200.0, temp=None)
    assert s.phase == "active"


def test_max_on_forces_off_then_cooldown_then_may_run_again() -> None:
    rule = make_rule(actions={"lease": ["cannon-1"], "max_on": "10m", "cooldown": "2m"})
    s, _ = step(rule, IDLE, 0.0, 300.0)
    s, a = step(rule, s, 599.0, 300.0)
    assert s.phase == "active"
    s, a = step(rule, s, 600.0, 300.0)
    assert s.phase == "cooldown"
    assert "event:max_on" in kinds(a) and a[0].reason == "max_on"  # type: ignore[union-attr]
    s, a = step(rule, s, 700.0, 300.0)
    assert s.phase == "cooldown"
    s, a = step(rule, s, 720.0, 300.0)
    assert s.phase == "active"


def test_below_rule_with_hysteresis() -> None:
    rule = make_rule(metric="water_level", above=None, below=20, clear=30, actions={})
    s, _ = step(rule, IDLE, 0.0, 25.0)
    assert s.phase == "idle"
    s, _ = step(rule, s, 1.0, 19.0)
    assert s.phase == "active"
    s, _ = step(rule, s, 2.0, 25.0)
    assert s.phase == "active"
    s, _ = step(rule, s, 3.0, 30.0)
    assert s.phase == "cooldown"


def test_active_hours_block_start_and_end_a_run() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    t_day = datetime(2026, 11, 25, 21, 59, tzinfo=tz).timestamp()  # a Wednesday
    rule = make_rule(
        actions={"lease": ["cannon-1"]},
        active={"hours": "06:00-22:00", "days": ["mon", "tue", "wed"], "tz": "Asia/Shanghai"},
    )
    s, _ = step(rule, IDLE, t_day, 200.0)
    assert s.phase == "active"
    s, a = step(rule, s, t_day + 60.0, 200.0)  # 22:00
    assert s.phase == "cooldown" and a[0].reason == "outside_hours"  # type: ignore[union-attr]
    s, _ = step(rule, s, t_day + 120.0, 200.0)
    assert s.phase == "idle"
    thursday = datetime(2026, 11, 26, 10, 0, tzinfo=tz).timestamp()
    s, _ = step(rule, IDLE, thursday, 200.0)
    assert s.phase == "idle"


def test_notify_only_rule_notifies_on_and_off() -> None:
    rule = make_rule(metric="noise", above=70, clear=67, notify=["office"], severity="info")
    s, a = step(rule, IDLE, 0.0, 75.0)
    notes = [x for x in a if isinstance(x, Notify)]
    assert s.phase == "active" and len(notes) == 1
    assert notes[0].notifier == "office" and "75.0" in notes[0].text
    assert not any(isinstance(x, LeaseOn) for x in a)
    s, a = step(rule, s, 10.0, 60.0)
    assert s.phase == "cooldown" and [x.notifier for x in a if isinstance(x, Notify)] == ["office"]


def test_state_json_round_trip() -> None:
    s = RuleState("active", 1.0, 1.0, 5.5, 3.0, None, ("frost",), False, "")
    back = RuleState.from_json(json.loads(json.dumps(s.to_json())))
    assert back == s


# ---------------------------------------------------------------- properties

# biased towards long exceedances in good weather, so runs reach their timers
high = st.floats(min_value=150.5, max_value=300)
values = st.one_of(st.none(), st.floats(min_value=0, max_value=300), high, high, high)
fine = st.floats(min_value=4.5, max_value=10)
temps = st.one_of(st.none(), st.floats(min_value=-5, max_value=10), fine, fine, fine, fine)
# segments of steady readings (long runs reach max_on, min_clear, cooldown)
segment = st.tuples(st.floats(min_value=0.5, max_value=90), values, temps,
                    st.integers(min_value=1, max_value=15))  # fmt: skip
series_st = st.lists(segment, min_size=1, max_size=25).map(
    lambda segs: [(dt, v, t) for dt, v, t, n in segs for _ in range(n)]
)
rule_st = st.builds(
    lambda f, mc, rf, cd, mo: make_rule(
        **{"for": f, "min_clear": mc, "unless": [FROST]},
        actions={"lease": ["cannon-1"], "run_for": rf, "cooldown": cd, "max_on": mo},
    ),
    st.sampled_from([0, 30, 120]),
    st.sampled_from([0, 60]),
    st.sampled_from([0, 120]),
    st.sampled_from([0, 300]),
    st.sampled_from([None, 600]),
)


def simulate(rule: Rule, series: list[tuple[float, float | None, float | None]]) -> list[dict]:
    state, now, trace = IDLE, 1_000.0, []
    for dt, v, temp in series:
        now += dt
        before = state
        state, acts = step(rule, state, now, v, temp)
        trace.append({"now": now, "v": v, "temp": temp, "before": before, "after": state,
                      "acts": acts})  # fmt: skip
    return trace


@settings(max_examples=300, deadline=None)
@given(rule_st, series_st)
def test_safety_properties(rule: Rule, series: list) -> None:
    trace = simulate(rule, series)
    acts = rule.actions
    last_off: float | None = None
    for i, t in enumerate(trace):
        started = t["before"].phase != "active" and t["after"].phase == "active"
        leases = [a for a in t["acts"] if isinstance(a, LeaseOn)]
        offs = [a for a in t["acts"] if isinstance(a, SwitchOff)]
        if leases:
            # never ON (start or renewal) with unknown data or while frost holds
            assert t["v"] is not None and t["temp"] is not None and t["temp"] >= 3
            assert t["after"].phase == "active"
        if started:
            assert t["v"] > rule.threshold
            # the condition held for `for` at every evaluation since the start of pending
            pend = t["after"].active_since - rule.for_
            for u in trace[: i + 1]:
                if u["now"] >= pend and u["now"] >= t["now"] - rule.for_:
                    assert u["v"] is not None and u["v"] > rule.threshold
            if last_off is not None:
                assert t["now"] - last_off >= acts.cooldown
        if t["after"].phase == "active" and acts.max_on is not None:
            assert t["now"] - t["after"].active_since < acts.max_on
        if offs:
            last_off = t["now"]
            ran = t["now"] - t["before"].active_since
            if offs[0].reason == "cleared":
                # hysteresis and timers: at/below clear for min_clear, and ran run_for
                assert t["v"] is not None and t["v"] <= rule.clear_level
                assert ran >= acts.run_for
                since = t["now"] - rule.min_clear
                for u in trace[: i + 1]:
                    if u["now"] >= since and u["before"].phase == "active":
                        assert u["v"] is not None and u["v"] <= rule.clear_level
            elif offs[0].reason == "max_on":
                assert ran >= acts.max_on  # type: ignore[operator]


@settings(max_examples=100, deadline=None)
@given(rule_st, series_st)
def test_no_flapping_after_a_clear(rule: Rule, series: list) -> None:
    """After a 'cleared' OFF the next ON needs the value to cross the ON threshold again."""
    trace = simulate(rule, series)
    cleared_at = None
    for t in trace:
        offs = [a for a in t["acts"] if isinstance(a, SwitchOff)]
        if offs and offs[0].reason == "cleared":
            cleared_at = t["now"]
        if cleared_at is not None and any(isinstance(a, LeaseOn) for a in t["acts"]):
            assert t["v"] is not None and t["v"] > rule.threshold
            cleared_at = None


@settings(max_examples=100, deadline=None)
@given(rule_st, series_st, st.integers(min_value=0, max_value=400))
def test_deterministic_and_resumable_from_json(rule: Rule, series: list, cut: int) -> None:
    a = simulate(rule, series)
    b = simulate(rule, series)
    assert [t["acts"] for t in a] == [t["acts"] for t in b]
    # restart at `cut`: the JSON state resumes to exactly the same future
    cut = min(cut, len(a) - 1)
    state = RuleState.from_json(json.loads(json.dumps(a[cut]["after"].to_json())))
    for t in a[cut + 1 :]:
        state, acts = step(rule, state, t["now"], t["v"], t["temp"])
        assert acts == t["acts"] and state == t["after"]
