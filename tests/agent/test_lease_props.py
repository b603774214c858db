"""Safety properties of the lease machine over arbitrary command/tick sequences.

Time is monotone; the broker and the bus come and go; allowed hours may be
set. At every step the output obeys max_on, min_off, the lease, broker_grace,
the bus interlock and allowed hours; refusals say why; an ON that breaks no
limit is granted; and the same inputs always give the same states.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.lease import ActuatorLimits, LeaseMachine, LeaseState
from gateway.protocol import Command

WALL0 = datetime(2026, 11, 25, 10, 0, 0)

limits_st = st.builds(
    lambda max_on, min_off, max_lease, grace, window: ActuatorLimits(
        max_on=max_on,
        min_off=min_off,
        max_lease=max_lease,
        broker_grace=grace,
        allowed_hours=window,
    ),
    max_on=st.floats(5, 600),
    min_off=st.floats(0, 120),
    max_lease=st.floats(5, 900),
    grace=st.floats(0, 120),
    window=st.none()
    | st.tuples(st.integers(0, 90), st.integers(2, 90)).map(
        lambda w: [
            f"{10 + (w[0]) // 60:02d}:{w[0] % 60:02d}-"
            f"{10 + (w[0] + w[1]) // 60:02d}:{(w[0] + w[1]) % 60:02d}"
        ]
    ),
)

dt = st.floats(0, 45)
ops_st = st.lists(
    st.one_of(
        st.tuples(
            st.just("on"), dt, st.floats(0.5, 1200), st.sampled_from(["rule", "manual", "override"])
        ),
        st.tuples(st.just("on"), dt, st.floats(0.5, 1200), st.just("rule")),
        st.tuples(st.just("off"), dt, st.sampled_from(["rule", "manual"])),
        st.tuples(st.just("tick"), dt, st.booleans(), st.booleans(), st.booleans()),
        st.tuples(st.just("tick"), dt, st.just(True), st.just(True), st.booleans()),
        st.tuples(st.just("readback"), dt, st.booleans()),
        st.tuples(st.just("shutdown"), dt),
    ),
    min_size=10,
    max_size=120,
)


def locked(
    limits: ActuatorLimits,
    t: float,
    wall: datetime,
    shut: bool,
    bus_ok: bool,
    broker_down_since: float | None,
) -> bool:
    """An interlock forbids ON at time t (the test's own reading of the limits)."""
    return (
        shut
        or not bus_ok
        or (broker_down_since is not None and t - broker_down_since > limits.broker_grace)
        or not limits.in_allowed_hours(wall)
    )


def run(limits: ActuatorLimits, ops: list[tuple]) -> list[LeaseState]:
    """Drive a machine through `ops`, checking every safety property on the way."""
    t = 0.0
    m = LeaseMachine(limits, t, WALL0)
    states = [m.state]
    out_prev = False
    last_off = 0.0  # start-up counts as just switched off
    run_start: float | None = None
    lease_end: float | None = None  # latest end any accepted lease allows
    bus_ok = True
    broker_down_since: float | None = None
    shut = False
    n = 0
    for op in ops:
        kind = op[0]
        t += op[1]
        wall = WALL0 + timedelta(seconds=t)

        if kind in ("on", "off"):
            n += 1
            cmd = Command(
                id=f"c{n}", action=kind, source=op[-1], lease_s=op[2] if kind == "on" else None
            )
            could_start = (
                not out_prev
                and t - last_off >= limits.min_off
                and not locked(limits, t, wall, shut, bus_ok, broker_down_since)
            )
            could_renew = (
                out_prev
                and not locked(limits, t, wall, shut, bus_ok, broker_down_since)
                and (
                    run_start is not None
                    and t - run_start < limits.max_on
                    and lease_end is not None
                    and t < lease_end
                )
            )
            state, d = m.on_command(cmd, t, wall)
            if kind == "off":
                assert d.accepted and not state.output
            else:
                if not d.accepted:
                    assert d.reason.strip()
                if could_start or could_renew:
                    assert d.accepted, d.reason  # no limit broken: granted
                if d.accepted:
                    end = t + min(op[2], limits.max_lease)
                    lease_end = end if lease_end is None or not out_prev else max(lease_end, end)
        elif kind == "tick":
            broker_up, bus_ok, pass_since = op[2], op[3], op[4]
            if broker_up:
                broker_down_since = None
            elif broker_down_since is None:
                broker_down_since = t
            state, output, _ = m.tick(
                t, wall, broker_up, broker_down_since if pass_since else None, bus_ok
            )
            assert output == state.output
        elif kind == "readback":
            state = m.on_readback(op[2], t)
            assert state.output == out_prev  # read-back never changes the output
        else:
            state, _ = m.on_shutdown(t, wall)
            shut = True
        out = state.output
        if kind == "readback":  # not an evaluation point: the next tick is
            states.append(state)
            continue
        if out and not out_prev:
            assert t - last_off >= limits.min_off, "ON again sooner than min_off"
            run_start = t
        if out:
            assert run_start is not None and lease_end is not None
            assert t - run_start < limits.max_on, "ON longer than max_on"
            assert t < lease_end, "ON past the lease"
            assert not locked(limits, t, wall, shut, bus_ok, broker_down_since), (
                "ON despite an interlock"
            )
            assert state.lease_end is not None and state.lease_end <= lease_end
        if out_prev and not out:
            last_off = t
            run_start = lease_end = None
        out_prev = out
        states.append(state)
    return states


@settings(max_examples=300, deadline=None)
@given(limits=limits_st, ops=ops_st)
def test_safety_properties_hold_and_are_deterministic(
    limits: ActuatorLimits, ops: list[tuple]
) -> None:
    assert run(limits, ops) == run(limits, ops)
