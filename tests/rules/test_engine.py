"""The engine facade: ingest validation, arbitration, overrides, persistence, reload."""

from __future__ import annotations

import json
from itertools import count

import pytest
from rulehelpers import events, kinds, rules_file

from gateway.protocol import Telemetry
from rules.core.engine import Engine, LeaseOn, Notify, SwitchOff
from rules.core.evaluator import Action
from rules.core.notifylimit import hhmm

BASE = """
sites: [site-01, county]
actuators:
  site-01/cannon-1: {litres_per_minute: 20}
  site-01/cannon-2: {litres_per_minute: 20}
notifiers:
  office: {type: robot, url: "http://127.0.0.1:9/robot", min_interval: 10m}
defaults: {min_staleness: 10s, max_staleness: 60s, lease_s: 30s}
rules:
  - id: pm10
    site: site-01
    metric: pm10
    devices: [gate-monitor]
    aggregate: last
    window: 1m
    above: 150
    clear: 100
    for: 30s
    actions: {lease: [cannon-1], cooldown: 2m}
    notify: [office]
"""

SECOND_RULE = """
  - id: tsp
    site: site-01
    metric: tsp
    devices: [gate-monitor]
    aggregate: last
    window: 1m
    above: 800
    clear: 600
    actions: {lease: [cannon-1]}
"""

RELATIVE = """
  - id: rel
    site: site-01
    metric: pm10
    devices: [gate-monitor]
    aggregate: last
    window: 1m
    relative_to: {site: county, devices: [county-station]}
    above: 80
    clear: 60
    actions: {lease: [cannon-2]}
"""

_seq = count()


def feed(eng: Engine, t: float, device: str = "gate-monitor", site: str = "site-01",
         status: str = "ok", **values: float) -> list[Action]:  # fmt: skip
    tel = Telemetry(ts=int(t * 1000), seq=next(_seq), values=values, status=status)
    return eng.ingest(site, device, tel, now=t)


def leases(actions: list[Action]) -> list[LeaseOn]:
    return [a for a in actions if isinstance(a, LeaseOn)]


def offs(actions: list[Action]) -> list[SwitchOff]:
    return [a for a in actions if isinstance(a, SwitchOff)]


def start_pm10(eng: Engine, t0: float = 1000.0) -> float:
    """Drive the pm10 rule to active; returns the time it switched on."""
    for i in range(31):
        feed(eng, t0 + i, pm10=200.0)
        eng.tick(t0 + i)
    assert eng.state("pm10", "site-01").phase == "active"
    return t0 + 30


def test_ingest_drops_and_counts_bad_readings() -> None:
    eng = Engine(rules_file(BASE))
    feed(eng, 1.0, pm10=50.0)
    feed(eng, 1.0, pm10=50.0)  # duplicate ts
    feed(eng, 0.5, pm10=50.0)  # out of order
    feed(eng, 2.0, site="site-02", pm10=50.0)  # not served
    feed(eng, 2.0, device="mystery", pm10=50.0)  # no rule reads it
    feed(eng, 3.0, pm10=-5.0)  # negative particulate: implausible, left out
    c = eng.counters
    assert c["readings"] == 2
    assert (c["duplicate"], c["out_of_order"], c["other_site"], c["unknown_device"]) == (1, 1, 1, 1)
    assert c["below_limit"] == 1
    eng.tick(3.0)
    # as if the reading lacked pm10: the value is still the one good reading's
    assert eng.last_values.get(("pm10", "site-01")) == 50.0


def test_rule_runs_through_ingest_and_tick_with_renewals_and_explicit_off() -> None:
    eng = Engine(rules_file(BASE))
    out: list[Action] = []
    for i in range(31):
        out += feed(eng, 1000.0 + i, pm10=200.0)
    on = leases(out)
    assert len(on) == 1 and on[0].actuator == "cannon-1" and on[0].lease_s == 30.0
    assert on[0].cmd_id and on[0].rule == "pm10"
    assert [n.notifier for n in out if isinstance(n, Notify)] == ["office"]
    # renewed every lease_s/3 = 10 s
    renewals = []
    for i in range(31, 61):
        renewals += leases(feed(eng, 1000.0 + i, pm10=120.0) + eng.tick(1000.0 + i))
    ids = [on[0].cmd_id] + [r.cmd_id for r in renewals]
    assert len(set(ids)) == len(ids) == 4
    cleared = feed(eng, 1061.0, pm10=90.0)
    assert [(o.actuator, o.reason) for o in offs(cleared)] == [("cannon-1", "cleared")]
    assert not eng.actuator_on("site-01", "cannon-1")


def test_stale_data_switches_an_active_rule_off_on_tick() -> None:
    eng = Engine(rules_file(BASE))
    t = start_pm10(eng)
    # 1 Hz device: stale after max(3 x 1 s, 10 s) = 10 s
    assert offs(eng.tick(t + 9.0)) == []
    out = eng.tick(t + 10.5)
    assert [o.reason for o in offs(out)] == ["stale"]
    assert len(events(out, "stale")) == 1


def test_bad_status_blocks_start() -> None:
    eng = Engine(rules_file(BASE))
    for i in range(40):
        feed(eng, 1000.0 + i, status="calibrating", pm10=400.0)
        eng.tick(1000.0 + i)
    assert eng.state("pm10", "site-01").phase == "idle"
    assert eng.counters["bad_status"] == 40


def test_two_rules_share_an_actuator() -> None:
    eng = Engine(rules_file(BASE + SECOND_RULE))
    start_pm10(eng)
    out = feed(eng, 1031.0, pm10=200.0, tsp=900.0)  # tsp rule starts (no `for`)
    assert eng.state("tsp", "site-01").phase == "active"
    assert leases(out) == []  # cannon-1 is already leased and recently renewed
    # one LeaseOn per renewal period, not one per rule
    got = []
    for i in range(32, 62):
        got += leases(feed(eng, 1000.0 + i, pm10=200.0, tsp=900.0) + eng.tick(1000.0 + i))
    assert len(got) == 3
    # pm10 clears; tsp still holds cannon-1: no off
    out = feed(eng, 1062.0, pm10=50.0, tsp=900.0)
    assert eng.state("pm10", "site-01").phase == "cooldown"
    assert offs(out) == [] and eng.actuator_on("site-01", "cannon-1")
    # tsp clears too: now the explicit off
    out = feed(eng, 1063.0, pm10=50.0, tsp=100.0)
    assert [o.actuator for o in offs(out)] == ["cannon-1"]


def test_overrides_win_until_they_expire() -> None:
    eng = Engine(rules_file(BASE))
    with pytest.raises(KeyError):
        eng.set_override("site-01", "cannon-9", "on", None, "tester", 0.0)
    out = eng.set_override("site-01", "cannon-2", "on", 1100.0, "alice", 1000.0)
    assert [(a.actuator, a.rule) for a in leases(out)] == [("cannon-2", None)]
    assert len(events(out, "override")) == 1
    renew = [a for t in range(1001, 1100) for a in leases(eng.tick(float(t)))]
    assert len(renew) == 4 and all(a.actuator == "cannon-2" for a in renew)  # every 20 s
    out = eng.tick(1100.0)
    assert [o.actuator for o in offs(out)] == ["cannon-2"]  # expired, no rule wants it

    # OFF override: the rule becomes active but cannot switch the cannon on
    out = eng.set_override("site-01", "cannon-1", "off", 1500.0, "bob", 1000.0)
    assert [o.actuator for o in offs(out)] == ["cannon-1"]
    got = []
    for i in range(60):
        got += leases(feed(eng, 1200.0 + i, pm10=200.0) + eng.tick(1200.0 + i))
    assert eng.state("pm10", "site-01").phase == "active" and got == []
    assert eng.counters["override_off_wins"] > 0
    # back to auto: the rule that holds it gets it at once
    out = eng.set_override("site-01", "cannon-1", "auto", None, "bob", 1260.0)
    assert [(a.actuator, a.rule) for a in leases(out)] == [("cannon-1", "pm10")]


def test_relative_threshold_against_background_station() -> None:
    eng = Engine(rules_file(BASE + RELATIVE))
    out: list[Action] = []
    feed(eng, 1000.0, pm10=170.0)  # county unknown yet: no start
    assert eng.state("rel", "site-01").phase == "idle"
    out += feed(eng, 1000.5, device="county-station", site="county", pm10=100.0)
    out += feed(eng, 1001.0, pm10=170.0)  # 170 - 100 = 70: not above 80
    assert eng.state("rel", "site-01").phase == "idle"
    out += feed(eng, 1002.0, pm10=190.0)  # 90 > 80
    assert eng.state("rel", "site-01").phase == "active"
    assert [a.actuator for a in leases(out)] == ["cannon-2"]
    assert eng.last_values[("rel", "site-01")] == pytest.approx(90.0)


def test_combine_any_tolerates_one_dead_monitor_but_mean_does_not() -> None:
    text = BASE.replace("devices: [gate-monitor]", "devices: [gate-monitor, sds011]").replace(
        "for: 30s", "for: 0s"
    )
    eng = Engine(rules_file(text))
    feed(eng, 1000.0, device="sds011", pm10=300.0)
    assert eng.state("pm10", "site-01").phase == "active"
    eng2 = Engine(rules_file(text.replace("aggregate: last", "aggregate: last\n    combine: mean")))
    feed(eng2, 1000.0, device="sds011", pm10=300.0)
    assert eng2.state("pm10", "site-01").phase == "idle"
    feed(eng2, 1001.0, pm10=100.0)  # mean(100, 300) = 200
    assert eng2.state("pm10", "site-01").phase == "active"


def test_notifications_are_rate_limited_per_site_and_rule_and_folded() -> None:
    text = BASE.replace("for: 30s", "for: 0s").replace("cooldown: 2m", "cooldown: 0s")
    text += SECOND_RULE.replace("actions: {lease: [cannon-1]}", "notify: [office]")
    eng = Engine(rules_file(text))
    sent: list[Notify] = []
    for i, v in enumerate([200, 50, 200, 50, 200]):
        sent += [a for a in feed(eng, 1000.0 + i, pm10=float(v)) if isinstance(a, Notify)]
        sent += [a for a in eng.tick(1000.0 + i) if isinstance(a, Notify)]
    # another rule on the same robot has its own turn
    sent += [a for a in feed(eng, 1010.0, tsp=900.0) if isinstance(a, Notify)]
    assert [(n.rule, n.text) for n in sent] == [
        ("pm10", "pm10: on, last(pm10, 60s) > 150 = 200.0"),
        ("tsp", "tsp: on, last(tsp, 60s) > 800 = 900.0"),
    ]
    assert eng.counters["notify_suppressed"] == 4  # off, on, off, on: held, not dropped
    snap = json.loads(json.dumps(eng.snapshot()))
    eng = Engine.restore(eng.rules_file, snap, 1100.0)  # a restart keeps them
    assert [a for a in eng.tick(1599.0) if isinstance(a, Notify)] == []
    [flushed] = [a for a in eng.tick(1600.0) if isinstance(a, Notify)]  # min_interval 10 min
    # the last word (the rule went off, stale: no data since) with the four held before it
    assert flushed.rule == "pm10" and flushed.text.startswith("pm10: off (stale)")
    assert flushed.text.endswith(f"(4 more since {hhmm(1001.0)})")
    assert eng.counters["notify_flushed"] == 1


def test_restart_in_the_middle_of_for_resumes_the_timer() -> None:
    rf = rules_file(BASE)
    eng = Engine(rf)
    for i in range(21):
        feed(eng, 1000.0 + i, pm10=200.0)
    assert eng.state("pm10", "site-01").phase == "pending"
    snap = json.loads(json.dumps(eng.snapshot()))
    eng2 = Engine.restore(rf, snap, now=1025.0)
    assert eng2.state("pm10", "site-01").phase == "pending"
    assert eng2.state("pm10", "site-01").since == 1000.0
    out = []
    for i in range(25, 31):
        out += feed(eng2, 1000.0 + i, pm10=200.0)
    # on at 1030 (30 s after the original start), not 30 s after the restart
    assert eng2.state("pm10", "site-01").active_since == 1030.0
    assert len(leases(out)) == 1


def test_restart_in_cooldown_keeps_the_cooldown() -> None:
    rf = rules_file(BASE)
    eng = Engine(rf)
    t = start_pm10(eng)
    feed(eng, t + 1, pm10=50.0)
    assert eng.state("pm10", "site-01").phase == "cooldown"
    eng2 = Engine.restore(rf, json.loads(json.dumps(eng.snapshot())), now=t + 10)
    got = []
    for i in range(10, 100):
        got += leases(feed(eng2, t + i, pm10=300.0) + eng2.tick(t + i))
    assert got == []  # cooldown (2 min) not over at t+100
    assert eng2.state("pm10", "site-01").phase in ("cooldown", "pending")
    for i in range(100, 200):
        got += leases(feed(eng2, t + i, pm10=300.0) + eng2.tick(t + i))
    assert got and got[0].rule == "pm10"


def test_restored_active_rule_waits_for_data_instead_of_stopping() -> None:
    rf = rules_file(BASE)
    eng = Engine(rf)
    t = start_pm10(eng)
    snap = json.loads(json.dumps(eng.snapshot()))
    eng2 = Engine.restore(rf, snap, now=t + 5)
    assert offs(eng2.tick(t + 6)) == []  # no data yet since the restart: warm-up
    assert eng2.state("pm10", "site-01").phase == "active"
    assert leases(feed(eng2, t + 7, pm10=200.0)) == []  # last lease at t: not due yet
    out = feed(eng2, t + 11, pm10=200.0)
    assert [a.actuator for a in leases(out)] == ["cannon-1"]  # renewal resumes
    # command ids continue after the restart (the agent may remember old ones)
    assert leases(out)[0].cmd_id == f"pm10-{eng.snapshot()['cmd_seq'] + 1}"


def test_restore_ignores_state_of_rules_that_changed() -> None:
    eng = Engine(rules_file(BASE))
    for i in range(21):
        feed(eng, 1000.0 + i, pm10=200.0)
    changed = rules_file(BASE.replace("for: 30s", "for: 45s"))
    eng2 = Engine.restore(changed, eng.snapshot(), now=1021.0)
    assert eng2.state("pm10", "site-01").phase == "idle"
    with pytest.raises(ValueError):
        Engine.restore(changed, {"version": 99}, now=0.0)


def test_reload_keeps_unchanged_rules_and_releases_changed_ones() -> None:
    eng = Engine(rules_file(BASE + RELATIVE))
    feed(eng, 999.0, device="county-station", site="county", pm10=50.0)
    start_pm10(eng)
    feed(eng, 1031.0, device="county-station", site="county", pm10=50.0)
    feed(eng, 1031.5, pm10=200.0)
    assert eng.state("rel", "site-01").phase == "active"
    pm10_state = eng.state("pm10", "site-01")
    # `rel` changes its threshold, `pm10` is unchanged
    new = rules_file(BASE + RELATIVE.replace("above: 80", "above: 90"))
    out = eng.reload(new, now=1032.0)
    assert eng.state("pm10", "site-01") == pm10_state
    assert eng.state("rel", "site-01").phase == "idle"
    assert [o.actuator for o in out if isinstance(o, SwitchOff)] == ["cannon-2"]
    assert eng.actuator_on("site-01", "cannon-1")
    # windows survive a reload: the unchanged rule keeps working without new data
    assert eng.last_values[("pm10", "site-01")] == 200.0
    eng.tick(1033.0)
    assert eng.state("pm10", "site-01").phase == "active"


def test_reload_removing_a_rule_switches_its_actuator_off() -> None:
    eng = Engine(rules_file(BASE))
    start_pm10(eng)
    out = eng.reload(rules_file(BASE.split("rules:")[0] + "rules: []\n"), now=1031.0)
    assert [o.actuator for o in out if isinstance(o, SwitchOff)] == ["cannon-1"]
    assert kinds(eng.tick(1032.0)) == []


def test_per_metric_flags_mark_only_that_metric_bad() -> None:
    eng = Engine(rules_file(BASE + SECOND_RULE))
    tel = Telemetry(ts=1_000_000, seq=1, values={"pm10": 500.0, "tsp": 900.0},
                    flags={"pm10": "over_range"})  # fmt: skip
    eng.ingest("site-01", "gate-monitor", tel, now=1000.0)
    assert eng.last_values[("pm10", "site-01")] is None
    assert eng.state("pm10", "site-01").phase == "idle"
    assert eng.last_values[("tsp", "site-01")] == 900.0
    assert eng.state("tsp", "site-01").phase == "active"
    assert eng.counters["bad_status"] == 1


def test_background_site_is_accepted_even_if_not_listed_in_sites() -> None:
    eng = Engine(
        rules_file((BASE + RELATIVE).replace("sites: [site-01, county]", "sites: [site-01]"))
    )
    feed(eng, 1000.0, device="county-station", site="county", pm10=100.0)
    feed(eng, 1000.0, device="other-station", site="elsewhere", pm10=100.0)
    assert eng.counters["other_site"] == 1
    assert eng.counters["readings"] == 1


def test_release_all_switches_off_what_is_held_and_restart_leases_again() -> None:
    rf = rules_file(BASE)
    eng = Engine(rf)
    t = start_pm10(eng)
    eng.set_override("site-01", "cannon-2", "on", None, "bob", t)
    released = eng.release_all("engine stopping")
    assert sorted((o.actuator, o.reason, o.rule) for o in offs(released)) == [
        ("cannon-1", "engine stopping", None),
        ("cannon-2", "engine stopping", None),
    ]
    assert not eng.actuator_on("site-01", "cannon-1")
    assert eng.release_all() == []  # nothing held any more
    # the rule stays active (its timers resume after a restart) ...
    snap = json.loads(json.dumps(eng.snapshot()))
    eng2 = Engine.restore(rf, snap, now=t + 2)
    assert eng2.state("pm10", "site-01").phase == "active"
    # ... the ON override leases again at once, the rule at its next renewal
    assert [a.actuator for a in leases(eng2.tick(t + 2))] == ["cannon-2"]
    assert leases(feed(eng2, t + 3, pm10=200.0)) == []
    assert [a.actuator for a in leases(feed(eng2, t + 10, pm10=200.0))] == ["cannon-1"]
    assert eng2.actuator_on("site-01", "cannon-1")


def test_a_lease_nobody_renews_runs_out_at_its_end() -> None:
    rf = rules_file(BASE)
    eng = Engine(rf)
    t = start_pm10(eng)  # leased at t for 30 s
    eng2 = Engine.restore(rf, json.loads(json.dumps(eng.snapshot())), now=t + 5)
    # restored without data: the rule neither renews nor stops (warm-up) ...
    for i in range(5, 30):
        assert eng2.tick(t + i) == []
    assert eng2.actuator_on("site-01", "cannon-1")
    # ... so the lease runs out on the agent, and the engine says so at that very second
    (off,) = eng2.tick(t + 30)
    assert isinstance(off, SwitchOff) and off.reason == "lease expired without renewal"
    assert not eng2.actuator_on("site-01", "cannon-1")
    assert eng2.tick(t + 31) == []
