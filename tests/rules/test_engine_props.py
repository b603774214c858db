"""Engine-level properties over random telemetry: gaps, bad statuses, duplicates, ticks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from rulehelpers import rules_file

from rules.core.engine import Engine, LeaseOn, SwitchOff
from rules.core.evaluator import Action

RULES = """
actuators:
  site-01/cannon-1: {}
defaults: {min_staleness: 5s, max_staleness: 30s, lease_s: 30s}
rules:
  - id: pm10
    site: site-01
    metric: pm10
    devices: [m]
    aggregate: mean
    window: 2m
    above: 150
    clear: 100
    for: 5s
    min_clear: 5s
    actions: {lease: [cannon-1], run_for: 10s, cooldown: 15s, max_on: 60s}
    unless:
      - {name: frost, metric: temp, devices: [m], below: 3, clear: 4}
"""
RF = rules_file(RULES)

event = st.one_of(
    # a reading: gap, pm10, temp (None = metric missing), status, repeat the previous ts
    st.tuples(
        st.just("reading"),
        st.floats(min_value=0.1, max_value=40),
        st.one_of(st.floats(min_value=0, max_value=300), st.floats(min_value=140, max_value=300)),
        st.one_of(st.none(), st.floats(min_value=-5, max_value=10), st.just(8.0)),
        st.sampled_from(["ok", "ok", "ok", "ok", "calibrating", "fault"]),
        st.booleans(),
    ),
    st.tuples(st.just("tick"), st.floats(min_value=0.1, max_value=20)),
)


def run(events: list[tuple]) -> list[tuple[float, list[Action]]]:
    eng = Engine(RF)
    now = 10_000.0
    last_ts = now
    last_ok: float | None = None
    seen = False
    last_status = "ok"
    trace = []
    for ev in events:
        if ev[0] == "tick":
            now += ev[1]
            acts = eng.tick(now)
        else:
            _, gap, pm10, temp, status, dup = ev
            dup = dup and seen  # a duplicate of the previous reading, if there is one
            ts = last_ts if dup else now + gap
            now = max(now, ts)
            values = {"pm10": pm10} if temp is None else {"pm10": pm10, "temp": temp}
            acts = eng.ingest_values("site-01", "m", ts, 0, values, now, status=status)
            if not dup:
                seen = True
                last_ts = ts
                last_status = status
                if status == "ok":
                    last_ok = ts
        for a in acts:
            if isinstance(a, LeaseOn) and a.rule == "pm10":
                inputs = eng.last_inputs[("pm10", "site-01")]
                # never ON with unknown data, stale data, or while frost holds / is unknown
                assert inputs.value is not None
                assert last_status == "ok"  # the latest pm10 reading was good
                assert last_ok is not None and now - last_ok <= 30.0
                frost = inputs.interlocks["frost"]
                assert frost is not None and frost >= 3.0
        trace.append((now, acts))
    return trace


@settings(max_examples=150, deadline=None)
@given(st.lists(event, min_size=1, max_size=150))
def test_engine_never_leases_on_bad_data_and_is_deterministic(events: list[tuple]) -> None:
    a = run(events)
    assert a == run(events)
    # the actuator alternates strictly: no OFF without a preceding ON and vice versa
    on = False
    for _, acts in a:
        for x in acts:
            if isinstance(x, SwitchOff):
                assert on
                on = False
            elif isinstance(x, LeaseOn):
                on = True


@settings(max_examples=60, deadline=None)
@given(
    st.booleans(),
    st.lists(
        st.tuples(
            st.sampled_from(["m1", "m2", "m3"]),
            st.floats(min_value=0.1, max_value=20.0),  # seconds since the previous reading
            st.one_of(st.floats(min_value=-5, max_value=300), st.sampled_from([0.0, -0.0])),
            st.sampled_from(["ok"] * 6 + ["fault"]),
        ),
        max_size=80,
    ),
)
def test_combine_any_reader_is_the_general_combination(
    above: bool, readings: list[tuple[str, float, float, str]]
) -> None:
    """The specialised ``combine: any`` reader gives what the general one gives."""
    cmp = "above: 150\n    clear: 100" if above else "below: 20\n    clear: 30"
    eng = Engine(
        rules_file(f"""
defaults: {{min_staleness: 5s, max_staleness: 30s}}
rules:
  - id: any3
    site: s
    metric: pm10
    devices: [m1, m2, m3]
    combine: any
    aggregate: max
    window: 30s
    {cmp}
""")
    )
    src = eng._instances[("any3", "s")].src_main
    assert src.compute != src._combined  # the specialised path is the one in use
    t = 1000.0
    for i, (dev, dt, value, status) in enumerate(readings):
        t += dt
        eng.ingest_values("s", dev, t, i, {"pm10": value}, t, status, None, False)
        for lag in (0.0, 7.0, 40.0):
            assert src.compute(t + lag) == src._combined(t + lag)
