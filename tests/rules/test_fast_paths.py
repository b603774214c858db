"""The fast paths of the rule engine and the replay against their plain references.

- CSV: ``str.split`` batches give exactly the rows (or the error) of ``csv.reader``;
  ``select`` changes only which metrics a reading carries, never which rows
  are good, bad or filtered.
- Windows: the inlined eviction of ``mean`` computes the very same floats.
- Evaluator: whenever ``steady`` says nothing changes, ``transition`` (the full
  state machine) indeed returns the state unchanged and no action.
- Replay end to end: the fast paths (CSV selection and batches, quiet/steady
  shortcuts) and the plain path (csv module, every rule through ``transition``
  every second) give the same statistics to the last bit and the same actions.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import random
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rulehelpers import make_rule

from rules.core import engine as engine_mod
from rules.core.config import load_rules_file
from rules.core.evaluator import (
    CHANGE,
    PHASES,
    RuleInputs,
    RuleState,
    evaluate,
    steady,
    transition,
)
from rules.core.model import Rule
from rules.core.window import RollingWindow
from rules.history import replay as replay_mod
from rules.history.sources import Reading, _row_batches, read_csv

FROST = {"name": "frost", "metric": "temp", "devices": ["m"], "below": 3, "clear": 4}
WIND = {"name": "wind", "metric": "wind_speed", "devices": ["m"], "above": 10, "clear": 8}

# cells from a small alphabet that hits every csv special case: quotes, CR, LF, NUL
cell = st.text(alphabet=st.sampled_from(list('ab1.,"\r\n\x00 -')), max_size=4)
line = st.lists(cell, min_size=0, max_size=4).map(",".join)
csv_text = st.lists(line, max_size=12).map("\n".join)


def csv_module_rows(stream: io.StringIO) -> tuple[list[list[str]], str | None]:
    rows: list[list[str]] = []
    try:
        for row in csv.reader(stream):
            rows.append(row)
    except csv.Error as exc:
        return rows, str(exc)
    return rows, None


def batch_rows(stream: io.StringIO) -> tuple[list[list[str]], str | None]:
    rows: list[list[str]] = []
    try:
        for batch in _row_batches(stream):
            rows.extend(batch)
    except csv.Error as exc:
        return rows, str(exc)
    return rows, None


@settings(max_examples=400, deadline=None)
@given(csv_text, st.sampled_from(["\n", "\r\n"]), st.sampled_from([None, "", "\n"]))
def test_row_batches_are_the_csv_modules_rows(text: str, eol: str, newline: str | None) -> None:
    text = text.replace("\n", eol)
    assert batch_rows(io.StringIO(text, newline=newline)) == csv_module_rows(
        io.StringIO(text, newline=newline)
    )


def test_row_batches_switch_to_the_csv_module_at_the_first_quote() -> None:
    plain = "".join(f"{i},x,{i * 2}\n" for i in range(20_000))  # several batches
    quoted = 'q,"a\nb",c\n1,2,3\n'
    text = plain + quoted + plain
    assert batch_rows(io.StringIO(text)) == csv_module_rows(io.StringIO(text))
    assert len(batch_rows(io.StringIO(text))[0]) == 40_002


WIDE = """\
ts,site,device,pm10,pm25,temp,status
1000,s,a,10,5,,
1000,s,b,11,x,3,
2000,s,a,,6,2,calibrating
2000,s,b,12,7,
3000,s,a,13,8,1,
bad,s,a,13,8,1,
4000,s,c,1,2,3,
5000,s,a,14,9,0,
"""


def test_select_keeps_the_rows_and_cuts_the_metrics() -> None:
    def read(select: bool) -> tuple[list[tuple], Counter[str]]:
        c: Counter[str] = Counter()
        r = read_csv(io.StringIO(WIDE), c, start=1.5, end=5.0)
        it = r.select(lambda site, dev: {"pm10"} if dev == "a" else set()) if select else r
        return list(it), c

    full, c_full = read(False)
    cut, c_cut = read(True)
    assert c_full == c_cut == Counter(bad_rows=3)  # b@1000 (pm25 "x"), short b@2000, "bad" ts
    assert [r[:3] + r[4:] for r in full] == [r[:3] + r[4:] for r in cut]
    assert [r[3] for r in full] == [{"pm25": 6.0, "temp": 2.0}, {"pm10": 13.0, "pm25": 8.0,
                                    "temp": 1.0}, {"pm10": 1.0, "pm25": 2.0, "temp": 3.0}]  # fmt: skip
    assert [r[3] for r in cut] == [{}, {"pm10": 13.0}, {}]
    assert [r[4] for r in cut] == ["calibrating", "ok", "ok"]


# ------------------------------------------------------- evaluator: steady()

NOW = 1000.0
# timers at and around the rules' boundaries (for 30 s, min_clear 20 s, run_for 60 s,
# max_on 120 s, renewal every 20 s, cooldown ends), so `<` versus `<=` is exercised
ago = st.sampled_from([0.0, 1.0, 19.0, 20.0, 21.0, 29.5, 30.0, 59.0, 60.0, 119.0, 120.0, -5.0])
at = ago.map(lambda a: NOW - a)
recent = st.sampled_from([0.0, 1.0, 19.0, 19.5, 20.0, 21.0]).map(lambda a: NOW - a)
opt_time = st.one_of(st.none(), at)
blocked_st = st.sampled_from([(), ("frost",), ("wind",), ("frost", "wind"), ("wind", "frost")])
# mostly states the machine reaches (so that every branch of steady() is exercised),
# some arbitrary ones
state_st = st.one_of(
    st.builds(RuleState, phase=st.just("idle"), blocked=blocked_st, unknown=st.booleans()),
    st.builds(RuleState, phase=st.just("pending"), since=at),
    st.builds(
        RuleState,
        phase=st.just("active"),
        since=at,
        active_since=at,
        clear_since=st.one_of(st.none(), st.none(), at),
        last_lease=recent,
    ),
    st.builds(
        RuleState,
        phase=st.just("cooldown"),
        cooldown_until=opt_time.map(lambda t: None if t is None else 2 * NOW - t),
        blocked=blocked_st,
        unknown=st.booleans(),
    ),
    st.builds(
        RuleState,
        phase=st.sampled_from(PHASES),
        since=opt_time,
        active_since=opt_time,
        clear_since=opt_time,
        last_lease=opt_time,
        cooldown_until=opt_time,
        blocked=blocked_st,
        unknown=st.booleans(),
    ),
)
steady_rule_st = st.builds(
    lambda f, mc, rf, mo, above, hours, ign: make_rule(
        **{"for": f, "min_clear": mc},
        **({"above": 150, "clear": 100} if above else {"above": None, "below": 20, "clear": 30}),
        actions={"lease": ["cannon-1"], "run_for": rf, "cooldown": 60, "max_on": mo},
        unless=[FROST, {**WIND, "on_unknown": "ignore" if ign else "block"}],
        active={"hours": hours, "tz": "UTC"} if hours else None,
    ),
    st.sampled_from([0, 30, 30]),
    st.sampled_from([0, 20]),
    st.sampled_from([0, 60]),
    st.sampled_from([None, 120]),
    st.booleans(),
    # NOW is in minute 16 of the epoch
    st.sampled_from([None, None, None, "00:00-00:16", "00:17-24:00", "00:16-00:17"]),
    st.booleans(),
)
# values at and around every threshold and clear level of the rules below


def value_st(rule: Rule) -> st.SearchStrategy[float | None]:
    """Values at and around the rule's ON and clear levels, well beyond and well inside."""
    thr, clr, out = rule.threshold, rule.clear_level, 1.0 if rule.is_above else -1.0
    edges = [thr - 1, thr, thr + 1, clr - 1, clr, clr + 1, thr + 50 * out, clr - 50 * out]
    return st.one_of(st.none(), st.sampled_from(edges), st.sampled_from(edges),
                     st.floats(min_value=-10, max_value=300))  # fmt: skip


# mostly harmless weather (so that the rule's own timers decide), sometimes at the edges
frost_st = st.sampled_from([5.0] * 8 + [None, 2.0, 3.0, 3.5, 4.0])
wind_st = st.sampled_from([5.0] * 8 + [None, 8.0, 9.0, 10.0, 11.0])


@settings(max_examples=500, deadline=None)
@given(steady_rule_st, state_st, frost_st, wind_st, st.sampled_from([NOW, NOW + 0.5]), st.data())
def test_steady_means_transition_changes_nothing(
    rule: Rule, state: RuleState, frost: float | None, wind: float | None, now: float,
    data: st.DataObject,
) -> None:  # fmt: skip
    v = data.draw(value_st(rule), label="v")
    assume(state.phase != "active" or state.active_since is not None)  # as the machine keeps it
    ils = {"frost": frost, "wind": wind}
    if steady(rule, state, v, ils, now):
        assert transition(rule, state, RuleInputs("site-01", v, ils), now) == (state, [])
    # and evaluate() is steady() + transition()
    assert evaluate(rule, state, RuleInputs("site-01", v, ils), now) == (
        (state, []) if steady(rule, state, v, ils, now)
        else transition(rule, state, RuleInputs("site-01", v, ils), now)
    )  # fmt: skip


def test_steady_covers_the_common_seconds() -> None:
    """The fast path is taken where it matters: waiting, holding, blocked, cooling down."""
    rule = make_rule(**{"for": 60, "min_clear": 30}, unless=[FROST],
                     actions={"lease": ["cannon-1"], "run_for": 120, "cooldown": 60})  # fmt: skip
    ok = {"frost": 10.0}
    pending = RuleState("pending", since=1000.0)
    active = RuleState("active", since=1000.0, active_since=1000.0, last_lease=1010.0)
    assert steady(rule, pending, 200.0, ok, 1030.0)  # waiting out `for`
    assert steady(rule, active, 120.0, ok, 1020.0)  # between renewals, above clear
    assert not steady(rule, active, 120.0, ok, 1030.0)  # renewal due (lease 60 s / 3)
    assert not steady(rule, active, 90.0, ok, 1020.0)  # the clear timer starts
    blocked = RuleState("idle", blocked=("frost",))
    assert steady(rule, blocked, 200.0, {"frost": 3.5}, 1020.0)  # frost holds (hysteresis)
    assert not steady(rule, blocked, 200.0, {"frost": 5.0}, 1020.0)  # frost releases
    assert steady(rule, RuleState("cooldown", cooldown_until=1100.0), 200.0, ok, 1050.0)


def _grid_rules(hours: list[str | None], **fixed: object) -> list[Rule]:
    out = []
    for mc, rf, mo, above, h, ign in itertools.product(
        [0, 20], [0, 60], [None, 120], [True, False], hours, [False, True]
    ):
        out.append(
            make_rule(
                **{"for": 30, "min_clear": mc, **fixed},
                **(
                    {"above": 150, "clear": 100}
                    if above
                    else {"above": None, "below": 20, "clear": 30}
                ),
                actions={"lease": ["cannon-1"], "run_for": rf, "cooldown": 60, "max_on": mo},
                unless=[FROST, {**WIND, "on_unknown": "ignore" if ign else "block"}],
                active={"hours": h, "tz": "UTC"} if h else None,
            )
        )
    return out


def _grid_values(rule: Rule) -> list[float | None]:
    thr, clr, out = rule.threshold, rule.clear_level, 1.0 if rule.is_above else -1.0
    return [None, clr - out, clr, clr + out, thr, thr + out]


FROSTS = [None, 2.9, 3.0, 3.5, 4.0, 5.0]
WINDS = [None, 7.9, 8.0, 9.0, 10.0, 10.1]
FAIR = [(5.0, 5.0), (2.9, 5.0), (5.0, 10.1), (None, 5.0), (5.0, None)]
BLOCKED = [(), ("frost",), ("wind",), ("frost", "wind")]


def test_steady_on_a_grid_of_timer_and_level_boundaries() -> None:
    """Every phase, every timer exactly at / just before its boundary, every level at /
    beside its threshold: whenever steady() says nothing changes, transition() agrees."""
    cases: list[tuple[Rule, RuleState, float | None, tuple[float | None, float | None]]] = []
    for rule in _grid_rules([None, "00:00-00:16"]):
        for a_since, c_since, lease, blocked, v, w in itertools.product(
            [10.0, 59.5, 60.0, 119.5, 120.0], [None, 0.0, 19.5, 20.0], [19.5, 20.0], BLOCKED[:2],
            _grid_values(rule), FAIR,
        ):  # fmt: skip
            active = RuleState("active", since=NOW - a_since, active_since=NOW - a_since,
                               clear_since=None if c_since is None else NOW - c_since,
                               last_lease=NOW - lease, blocked=blocked)  # fmt: skip
            cases.append((rule, active, v, w))
        for since, blocked, unknown, v, w in itertools.product(
            [0.0, 29.5, 30.0, 31.0], BLOCKED[:2], [False, True], _grid_values(rule), FAIR
        ):
            cases.append((rule, RuleState("pending", since=NOW - since, blocked=blocked,
                                          unknown=unknown), v, w))  # fmt: skip
    for rule in _grid_rules([None, "00:00-00:16"], min_clear=0):
        for phase, until, blocked, unknown, v, w in itertools.product(
            ["idle", "cooldown"], [None, 1.0, 0.0, -1.0], BLOCKED, [False, True],
            _grid_values(rule), itertools.product(FROSTS, WINDS),
        ):  # fmt: skip
            if phase == "idle" and until is not None:
                continue
            cd = None if until is None else NOW + until
            cases.append((rule, RuleState(phase, cooldown_until=cd, blocked=blocked,  # type: ignore[arg-type]
                                          unknown=unknown), v, w))  # fmt: skip
    taken: Counter[str] = Counter()
    for rule, state, v, (frost, wind) in cases:
        ils = {"frost": frost, "wind": wind}
        if steady(rule, state, v, ils, NOW):
            taken[state.phase] += 1
            assert transition(rule, state, RuleInputs("site-01", v, ils), NOW) == (state, []), (
                rule.model_dump(), state, v, ils,
            )  # fmt: skip
    # not vacuous: the fast path is taken in every phase
    assert min(taken[p] for p in PHASES) > 50, taken


# ------------------------------------------------------------- window: mean()

window_steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=7.0),  # time since the previous reading
        st.floats(min_value=-1e6, max_value=1e6),
        st.floats(min_value=0.0, max_value=4.0),  # query lag after the reading
        st.booleans(),  # query now or not
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(window_steps)
def test_mean_only_window_is_bit_identical_to_the_general_path(steps: list) -> None:
    """mean() of a mean-only window drops readings inline; with max/min wanted it goes
    through _drop(). Same readings and queries -> the very same floats (same operations
    in the same order), so replay answers cannot depend on which aggregates a window keeps."""
    lean, full = RollingWindow(10.0, ["mean"]), RollingWindow(10.0)
    t = 1000.0
    for dt, value, lag, query in steps:
        t += dt
        lean.append(t, value)
        full.append(t, value)
        if query:
            assert lean.mean(t + lag) == full.mean(t + lag)
            assert len(lean) == len(full)


KINDS = [["mean"], ["max"], ["last"], ["min"], ["mean", "max"], ["max", "min", "mean"]]


@settings(max_examples=150, deadline=None)
@given(window_steps, st.sampled_from(KINDS))
def test_appender_is_append(steps: list, kinds: list[str]) -> None:
    """The ingest path's specialised appender leaves the window exactly as append() does."""
    plain, fast = RollingWindow(10.0, kinds), RollingWindow(10.0, kinds)
    add = fast.appender()
    t = 1000.0
    for dt, value, lag, query in steps:
        t += dt
        plain.append(t, value)
        add(t, value)
        if query:
            for kind in {*kinds, "last"}:
                assert plain.aggregate(kind, t + lag) == fast.aggregate(kind, t + lag)
    for slot in RollingWindow.__slots__:
        a, b = getattr(plain, slot), getattr(fast, slot)
        assert (list(a) if hasattr(a, "__iter__") else a) == (
            list(b) if hasattr(b, "__iter__") else b
        )


# ------------------------------------------- replay: fast paths versus every second in full

REPLAY_RULES = """\
actuators:
  s/c1: {litres_per_minute: 20}
  s/c2: {litres_per_minute: 5}
defaults: {min_staleness: 5s, max_staleness: 60s, lease_s: 30s}
rules:
  - id: any2
    site: s
    metric: pm10
    devices: [a, b]
    combine: any
    window: 2m
    above: 150
    clear: 100
    for: 20s
    min_clear: 30s
    actions: {lease: [c1, c2], run_for: 2m, cooldown: 1m, max_on: 10m}
    unless:
      - {name: frost, metric: temp, devices: [a], window: 1m, aggregate: mean, below: 3, clear: 4}
      - {name: wind, metric: wind, devices: [a], above: 10, clear: 8}
      - {name: water, metric: level, devices: [tank], below: 15, on_unknown: ignore}
    active: {hours: "00:10-23:50", tz: UTC}
  - id: rel
    site: s
    metric: pm10
    devices: [a, b]
    combine: mean
    window: 5m
    relative_to: {site: bg, devices: [county]}
    above: 40
    clear: 20
    for: 1m
    actions: {lease: [c1], run_for: 1m, cooldown: 2m}
    unless:
      - {name: frost, metric: temp, devices: [a], window: 1m, aggregate: mean, below: 3, clear: 4}
  - id: maxb
    site: s
    metric: pm10
    devices: [b]
    aggregate: max
    window: 30s
    above: 190
    actions: {lease: [c2], cooldown: 30s, max_on: 2m}
  - id: low
    site: s
    metric: level
    devices: [tank]
    aggregate: min
    window: 1m
    below: 15
    clear: 20
"""


def replay_series(seed: int, seconds: int) -> str:
    """1 Hz-ish wide CSV: dust bursts, frost and gales, gaps, bad statuses, duplicates,
    negative values, a county background that comes and goes."""
    rnd = random.Random(seed)
    lines = ["ts,site,device,pm10,temp,wind,level,status"]
    dust, temp, wind, level = 80.0, 8.0, 4.0, 60.0
    for s in range(seconds):
        # mean-reverting walks with bursts: dust episodes, cold snaps, gusts, a draining tank
        burst = 150.0 if rnd.random() < 0.002 else 0.0
        dust = max(0.0, dust + 0.01 * (80 - dust) + rnd.gauss(0, 4) + burst)
        temp += 0.002 * (7 - temp) + rnd.gauss(0, 0.1) - (4.0 if rnd.random() < 0.0003 else 0)
        wind = max(
            0.0, wind + 0.01 * (4 - wind) + rnd.gauss(0, 0.3) + (6 if rnd.random() < 0.0005 else 0)
        )
        level = min(100.0, max(0.0, level + 0.001 * (50 - level) + rnd.gauss(0, 0.3)
                                - (30 if rnd.random() < 0.0002 else 0)))  # fmt: skip
        ms = (1_780_000_000 + s) * 1000 + rnd.choice([0, 0, 0, 250])
        if rnd.random() < 0.002:
            continue  # a lost second
        status = rnd.choices(["", "ok", "calibrating", "fault"], [900, 97, 2, 1])[0]
        pm_a = f"{dust + rnd.uniform(-5, 5):.1f}" if rnd.random() > 0.002 else "-3"
        lines.append(f"{ms},s,a,{pm_a},{temp:.2f},{wind:.1f},,{status}")
        if not (3000 < s < 3100):  # monitor b is silent for 100 s
            lines.append(f"{ms},s,b,{dust * 1.1 + rnd.uniform(-5, 5):.1f},,,,")
        if s % 5 == 0:
            lines.append(f"{ms},s,tank,,,,{level:.1f},")
        if rnd.random() < 0.003:
            lines.append(lines[-1])  # a duplicate
        if s % 10 == 0 and not (1000 < s < 1600):
            lines.append(f"{ms},bg,county,{dust * 0.5:.1f},,,,")
        # bad rows (counted, skipped) and a device nobody reads
        junk = rnd.random()
        if junk < 0.001:
            lines.append("garbage")
        elif junk < 0.002:
            lines.append(f"{ms},s,a,n/a,{temp:.2f},,,")  # a cell a rule reads
        elif junk < 0.003:
            lines.append(f"{ms},s,b,{dust:.1f},,oops,,")  # a cell no rule reads from b
        elif junk < 0.004:
            lines.append(f"soon,s,b,{dust:.1f},,,,")
        elif junk < 0.006:
            lines.append(f"{ms},s,x,{dust:.1f},,,,")
    return "\n".join(lines) + "\n"


def without_column(text: str, name: str) -> str:
    """The CSV without one column (a metric some rule reads that this file lacks)."""
    lines = text.splitlines()
    k = lines[0].split(",").index(name)
    return "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != k)
                     if line.count(",") >= k else line for line in lines) + "\n"  # fmt: skip


def traced_replay(text: str, fast: bool, ahead: bool = False) -> tuple[dict, list[str]]:
    rf = load_rules_file("r.yaml", text=REPLAY_RULES)
    trace: list[str] = []
    orig = replay_mod._Observer.observe

    def observe(self: replay_mod._Observer, actions: list, dt: float) -> None:
        trace.extend(repr(a) for a in actions)
        orig(self, actions, dt)

    never = lambda *a: False  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replay_mod._Observer, "observe", observe)
        readings: Iterable[Reading]
        csv_counts: Counter[str] = Counter()
        if fast:
            readings = read_csv(io.StringIO(text), csv_counts)  # select(), split batches
        else:
            # the csv module (a quoted header cell makes the reader hand over to it), all
            # metrics, every rule in full every second (no quiet/steady shortcut)
            quoted = text.replace("ts,site", '"ts",site', 1)
            readings = list(read_csv(io.StringIO(quoted), csv_counts))
            mp.setattr(engine_mod, "quiet", never)
            mp.setattr(engine_mod, "steady_code", lambda *a: CHANGE)
        (res,) = replay_mod.replay(readings, [rf], ahead=ahead)
    stats = {rid: dataclasses.asdict(st) for rid, st in res.rules.items()}
    result = {"stats": stats, "counters": res.counters, "n": res.readings, "csv": csv_counts}
    return result | {"first": res.first_ts, "last": res.last_ts}, trace


@pytest.mark.parametrize(
    ("seed", "drop", "ahead"), [(1, None, True), (2, None, False), (3, "level", True)]
)
def test_replay_fast_paths_give_the_same_statistics_and_actions(
    seed: int, drop: str | None, ahead: bool
) -> None:
    """The replay as the CLI runs it (``ahead``: input read in a second process) or in
    one process, against the plain path in one process."""
    text = replay_series(seed, 4 * 3600)
    if drop is not None:
        text = without_column(text, drop)
    fast, fast_trace = traced_replay(text, fast=True, ahead=ahead)
    full, full_trace = traced_replay(text, fast=False)
    assert fast == full  # exact floats, not rounded
    assert fast_trace == full_trace
    # not vacuous: rules ran, stopped for several reasons, counters saw the bad input
    st = fast["stats"]
    assert st["any2"]["triggers"] > 0 and st["rel"]["triggers"] > 0 and st["maxb"]["triggers"] > 0
    assert st["any2"]["blocked_min"] > 0
    assert len({r for s in st.values() for r in s["stops"]}) >= 3, st
    assert {"duplicate", "below_limit", "bad_status", "unknown_device"} <= set(fast["counters"])
    assert fast["csv"]["bad_rows"] > 20
