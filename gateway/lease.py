"""Lease-based actuation: the safety state machine of one relay output (a fog cannon).

An ON command always carries a lease (``lease_s``); the output goes OFF when
the lease runs out unless it is renewed, so a dead rule engine, broker or
uplink stops the spray by itself. On top of whatever a command says, the agent
enforces its own :class:`ActuatorLimits` from ``site.yaml``:

==================  ===========================================================
``max_on``          max continuous on-time; renewals never extend a run past
                    ``on_since + max_on`` ("max_on reached")
``min_off``         minimum off-time between runs, whatever ended the run
                    (also right after start-up: the relay may just have been on)
``max_lease``       cap on one lease (a longer ``lease_s`` is shortened)
``default_lease``   lease of a manual ``on`` without ``--for``
``allowed_hours``   optional windows such as ``06:00-22:00`` or
                    ``mon-fri 07:00-19:00`` (site local time; :mod:`gateway.hours`,
                    the syntax of the rules' ``active`` hours too); OFF outside
``broker_grace``    OFF after the broker has been unreachable this long
``max_command_age`` refuse an ON whose ``ts`` is older than this (off by default:
                    it needs synchronised clocks)
==================  ===========================================================

The bus going down forces OFF (failsafe) and refuses ON until it is back. The
machine never switches ON by itself: after any OFF a new command is needed.

Everything here is pure and deterministic. Time is injected: ``now`` is
monotonic seconds (a step back is treated as no time passing), ``wall`` is the
site's local wall-clock time (a ``datetime``) used for allowed hours and for the
``since`` / ``lease_until`` milliseconds published on the wire. The shell (the
agent) calls :meth:`LeaseMachine.tick` about once a second and writes
``state.output`` to the relay whenever it changes; hence the guarantees hold
"to within one tick". Manual commands (``dustgate actuate SITE/ACT on --for
5m``) go through the same :meth:`LeaseMachine.on_command` with source
``manual``: same limits, no bypass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, PlainSerializer, model_validator

from gateway.configfile import Duration, StrictModel
from gateway.hours import Hours
from gateway.protocol import Ack, ActuatorState, Command
from gateway.protocol import now_ms as _wall_ms

Source = Literal["rule", "manual", "override", "failsafe", "local", "startup"]


def _hours(value: Any) -> Any:
    """A window as written in site.yaml (see :mod:`gateway.hours`), or one already made."""
    return Hours.parse(value) if isinstance(value, str) else value


HoursWindow = Annotated[Hours, BeforeValidator(_hours), PlainSerializer(str, return_type=str)]
"""One ``allowed_hours`` window, ``[DAYS ]HH:MM-HH:MM`` (:mod:`gateway.hours`)."""


class ActuatorLimits(StrictModel):
    """Local safety limits of one output; no command can exceed them."""

    max_on: Duration = 900.0
    min_off: Duration = 60.0
    max_lease: Duration = 900.0
    default_lease: Duration = 300.0
    broker_grace: Duration = 60.0
    allowed_hours: list[HoursWindow] | None = None
    max_command_age: Duration | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ActuatorLimits:
        for name in ("max_on", "max_lease", "default_lease"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be greater than 0")
        if self.allowed_hours is not None and not self.allowed_hours:
            raise ValueError("allowed_hours is empty: the output could never run (omit it instead)")
        return self

    def in_allowed_hours(self, wall: datetime) -> bool:
        if self.allowed_hours is None:
            return True
        day = wall.weekday()
        minute = wall.hour * 60 + wall.minute + (wall.second + wall.microsecond / 1e6) / 60
        return any(w.contains(day, minute) for w in self.allowed_hours)

    def hours_text(self) -> str:
        return ", ".join(str(w) for w in self.allowed_hours or ())


@dataclass(frozen=True, slots=True)
class LeaseState:
    """Snapshot of one output. Times are monotonic seconds; ``*_ms`` are wall-clock ms."""

    output: bool
    source: Source
    since: float  # last output change (or start-up)
    since_ms: int
    off_since: float | None  # when the output last went (or was assumed) OFF
    on_since: float | None = None  # start of the current run
    lease_end: float | None = None  # current run ends here; <= on_since + max_on
    lease_until_ms: int | None = None
    cmd_id: str | None = None
    reason: str = ""  # why the output is what it is (published on `state`)
    cut_by_max_on: bool = False  # the last run was ended by max_on
    bus_ok: bool = True
    broker_down_since: float | None = None
    readback_ok: bool = True
    readback_mismatches: int = 0
    refused: int = 0
    shutting_down: bool = False
    last_now: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one command: published as an :class:`Ack`."""

    accepted: bool
    reason: str  # non-empty when refused; a note (e.g. lease capped) when accepted
    output: bool  # desired output after the command
    changed: bool = False  # the output switched
    lease_end: float | None = None


def initial_state(now: float, wall: datetime) -> LeaseState:
    """OFF, and treated as just switched off: min_off applies from start-up."""
    return LeaseState(
        output=False,
        source="startup",
        since=now,
        since_ms=_wall_ms(wall.timestamp()),
        off_since=now,
        reason="start-up",
        last_now=now,
    )


def _secs(x: float) -> str:
    return f"{math.ceil(x - 1e-9):d}s"


def _interlock(
    limits: ActuatorLimits, st: LeaseState, now: float, wall: datetime
) -> tuple[str, Source] | None:
    """Why the output must be OFF right now regardless of any lease, or None."""
    if st.shutting_down:
        return "shutting down", "local"
    if not st.bus_ok:
        return "bus down", "failsafe"
    if st.broker_down_since is not None and now - st.broker_down_since > limits.broker_grace:
        return (
            f"broker unreachable for {_secs(now - st.broker_down_since)} "
            f"(broker_grace {_secs(limits.broker_grace)})",
            "failsafe",
        )
    if not limits.in_allowed_hours(wall):
        return f"outside allowed hours {limits.hours_text()}", "local"
    return None


def _switch_off(
    st: LeaseState,
    now: float,
    wall: datetime,
    source: Source,
    reason: str,
    cmd_id: str | None = None,
    by_max_on: bool = False,
) -> LeaseState:
    return replace(
        st,
        output=False,
        source=source,
        since=now,
        since_ms=_wall_ms(wall.timestamp()),
        off_since=now,
        on_since=None,
        lease_end=None,
        lease_until_ms=None,
        cmd_id=cmd_id if cmd_id is not None else st.cmd_id,
        reason=reason,
        cut_by_max_on=by_max_on,
    )


def _enforce(
    limits: ActuatorLimits, st: LeaseState, now: float, wall: datetime
) -> tuple[LeaseState, str | None]:
    """Apply interlocks and lease / max_on expiry; returns the reason if it switched OFF."""
    if not st.output:
        return st, None
    lock = _interlock(limits, st, now, wall)
    if lock is not None:
        reason, source = lock
        return _switch_off(st, now, wall, source, reason), reason
    assert st.lease_end is not None and st.on_since is not None
    run_over = now - st.on_since >= limits.max_on  # same float form as the min_off test
    if run_over or now >= st.lease_end:
        if run_over or st.lease_end >= st.on_since + limits.max_on:
            reason = f"max_on reached ({_secs(limits.max_on)})"
            return _switch_off(st, now, wall, "local", reason, by_max_on=True), reason
        return _switch_off(st, now, wall, st.source, "lease expired"), "lease expired"
    return st, None


def _clamp(st: LeaseState, now: float) -> tuple[LeaseState, float]:
    if now < st.last_now:  # monotonic-ish clock stepped back: no time passed
        now = st.last_now
    return replace(st, last_now=now), now


def on_command(
    limits: ActuatorLimits, st: LeaseState, cmd: Command, now: float, wall: datetime
) -> tuple[LeaseState, Decision]:
    """Apply one command (from the broker or the local CLI)."""
    st, now = _clamp(st, now)
    st, cut = _enforce(limits, st, now, wall)
    if cmd.action == "off":  # always accepted
        if st.output:
            st = _switch_off(st, now, wall, cmd.source, cmd.reason or "off command", cmd.id)
            return st, Decision(True, "", False, changed=True)
        st = replace(st, cmd_id=cmd.id)
        return st, Decision(True, "already off", False)

    def refuse(reason: str) -> tuple[LeaseState, Decision]:
        nonlocal st
        st = replace(st, refused=st.refused + 1)
        return st, Decision(False, reason, st.output, lease_end=st.lease_end)

    if cmd.lease_s is None or not cmd.lease_s > 0:
        return refuse("lease_s missing (an 'on' command needs a lease > 0)")
    if limits.max_command_age is not None and cmd.ts is not None:
        age = wall.timestamp() - cmd.ts / 1000
        if age > limits.max_command_age:
            return refuse(
                f"stale command: sent {_secs(age)} ago "
                f"(max_command_age {_secs(limits.max_command_age)})"
            )
    lock = _interlock(limits, st, now, wall)
    if lock is not None:
        return refuse(lock[0])

    lease = min(cmd.lease_s, limits.max_lease)
    note = f"lease capped at max_lease {_secs(limits.max_lease)}" if cmd.lease_s > lease else ""
    if not st.output:
        assert st.off_since is not None
        rested = now - st.off_since
        if rested < limits.min_off:
            left = limits.min_off - rested
            if st.cut_by_max_on:
                return refuse(f"max_on reached: off for {_secs(max(left, 1))} more")
            return refuse(f"min_off: {_secs(max(left, 1))} left")
        if cut is not None:
            # The run ended in this very call; one call never switches the
            # output off and on again, so the relay always sees the OFF.
            return refuse(f"{cut} at this moment; a new command may start a new run")
        on_since = now
        end = now + lease
        changed = True
    else:
        assert st.on_since is not None and st.lease_end is not None
        on_since = st.on_since
        end = max(st.lease_end, now + lease)  # a renewal extends, never shortens
        changed = False
    budget_end = on_since + limits.max_on
    if end > budget_end:
        end = budget_end
        note = f"lease capped at max_on {_secs(limits.max_on)} (run ends in {_secs(end - now)})"
    wall_ms = _wall_ms(wall.timestamp())
    st = replace(
        st,
        output=True,
        source=cmd.source,
        since=now if changed else st.since,
        since_ms=wall_ms if changed else st.since_ms,
        on_since=on_since,
        lease_end=end,
        lease_until_ms=wall_ms + round((end - now) * 1000),
        cmd_id=cmd.id,
        reason=cmd.reason or ("on command" if changed else "lease renewed"),
        cut_by_max_on=False,
    )
    return st, Decision(True, note, True, changed=changed, lease_end=end)


def tick(
    limits: ActuatorLimits,
    st: LeaseState,
    now: float,
    wall: datetime,
    broker_up: bool,
    broker_down_since: float | None,
    bus_ok: bool,
) -> tuple[LeaseState, bool, str | None]:
    """Periodic evaluation; returns (state, desired output, reason if it just switched OFF).

    ``broker_down_since`` is when the broker was last lost (ignored while
    ``broker_up``); if the shell does not know, the first tick that sees the
    broker down starts the clock.
    """
    st, now = _clamp(st, now)
    if broker_up:
        down_since = None
    else:
        down_since = (
            broker_down_since
            if broker_down_since is not None
            else st.broker_down_since
            if st.broker_down_since is not None
            else now
        )
    st = replace(st, bus_ok=bus_ok, broker_down_since=down_since)
    st, reason = _enforce(limits, st, now, wall)
    return st, st.output, reason


def on_shutdown(st: LeaseState, now: float, wall: datetime) -> tuple[LeaseState, str | None]:
    """OFF for good: the agent is stopping. Later ON commands are refused."""
    st, now = _clamp(st, now)
    st = replace(st, shutting_down=True)
    if st.output:
        return _switch_off(st, now, wall, "local", "shutdown"), "shutdown"
    return st, None


def on_readback(st: LeaseState, actual: bool, now: float) -> LeaseState:
    """Record the relay's read-back coil state. A mismatch is recorded, never obeyed."""
    st, now = _clamp(st, now)
    ok = actual == st.output
    return replace(
        st,
        readback_ok=ok,
        readback_mismatches=st.readback_mismatches + (0 if ok else 1),
    )


class LeaseMachine:
    """One output's limits and current :class:`LeaseState`; each call returns the new state."""

    def __init__(self, limits: ActuatorLimits, now: float, wall: datetime) -> None:
        self.limits = limits
        self.state = initial_state(now, wall)

    def on_command(self, cmd: Command, now: float, wall: datetime) -> tuple[LeaseState, Decision]:
        self.state, decision = on_command(self.limits, self.state, cmd, now, wall)
        return self.state, decision

    def tick(
        self,
        now: float,
        wall: datetime,
        broker_up: bool,
        broker_down_since: float | None,
        bus_ok: bool,
    ) -> tuple[LeaseState, bool, str | None]:
        self.state, output, reason = tick(
            self.limits, self.state, now, wall, broker_up, broker_down_since, bus_ok
        )
        return self.state, output, reason

    def on_shutdown(self, now: float, wall: datetime) -> tuple[LeaseState, str | None]:
        self.state, reason = on_shutdown(self.state, now, wall)
        return self.state, reason

    def on_readback(self, actual: bool, now: float) -> LeaseState:
        self.state = on_readback(self.state, actual, now)
        return self.state


# ------------------------------------------------------------------ wire payloads


def to_state_payload(state: LeaseState, now_ms: int) -> ActuatorState:
    """The retained ``{site}/{actuator}/state`` payload."""
    reason = state.reason
    if not state.readback_ok:
        reason = f"read-back mismatch (relay is {'off' if state.output else 'on'}); {reason}"
    return ActuatorState(
        state="on" if state.output else "off",
        since=state.since_ms if state.since_ms >= 0 else now_ms,
        source=state.source,
        cmd_id=state.cmd_id[:64] if state.cmd_id else None,
        lease_until=state.lease_until_ms if state.output else None,
        readback_ok=state.readback_ok,
        reason=reason[:200],
    )


def to_ack(decision: Decision, cmd: Command, now_ms: int) -> Ack:
    """The ``{site}/{actuator}/ack`` payload for ``cmd``."""
    return Ack(cmd_id=cmd.id, accepted=decision.accepted, reason=decision.reason[:200], ts=now_ms)


def manual_command(
    action: Literal["on", "off"],
    limits: ActuatorLimits,
    cmd_id: str,
    lease_s: float | None = None,
    reason: str = "manual",
    ts_ms: int | None = None,
) -> Command:
    """The command behind ``dustgate actuate SITE/ACT on [--for 5m] | off``.

    ``on`` without a duration leases ``default_lease``; the limits still apply
    when the command is handled.
    """
    if action == "on" and lease_s is None:
        lease_s = limits.default_lease
    return Command(
        id=cmd_id,
        action=action,
        lease_s=lease_s if action == "on" else None,
        reason=reason,
        source="manual",
        ts=ts_ms,
    )
