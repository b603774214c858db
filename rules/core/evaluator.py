"""The per-rule state machine: ``evaluate(rule, state, inputs, now) -> (state, actions)``. Pure.

::

    idle --condition--> pending --held for `for`--> active --(cleared | safety)--> cooldown
      ^                    |                          |  renews its lease every         |
      +-- condition false -+                          |  lease_s/3 while it holds       |
      +-------------------------------- cooldown elapsed <------------------------------+

*Condition* means: the (combined, possibly background-relative) aggregate is
known and beyond the ON threshold, no interlock holds and we are inside the
active hours. Only a condition that held continuously for ``for`` starts a
run.

An active rule stops (SwitchOff, then cooldown) when:

- ``cleared``: the value has been at/below ``clear`` (``above`` rules; at/above
  for ``below`` rules) for ``min_clear`` *and* the run has lasted ``run_for``;
- ``stale``: its data became unknown (stale, bad status, no data). We switch
  off at once rather than let the lease run out: the engine cannot see the
  dust, so it must not keep the cannons going (the lease would stop them a
  minute later anyway; this makes it explicit and visible as an event);
- ``interlock:<names>``: an interlock holds (frost, high wind, rain, low
  water) -- also when the interlock's own data is unknown, unless it says
  ``on_unknown: ignore``;
- ``outside_hours``: the active hours ended;
- ``max_on``: the run reached ``max_on``.

Safety stops ignore ``run_for``. After a ``cleared`` stop a new run needs the
value to cross the ON threshold again (it is at/below ``clear`` by then), so
hysteresis prevents flapping. After a safety stop the rule may start again
once the cooldown is over and the condition has held for ``for`` again
(cyclic spraying under persistent dust with a rest between runs is what
``max_on`` + ``cooldown`` are for).

Interlocks have their own hysteresis: one that holds stays holding until its
value is back at/beyond its ``clear`` level.

The state is a small frozen dataclass of floats and strings, so it survives
restarts as JSON: timers are absolute times and resume where they were.

Most seconds change nothing (a rule below its threshold, waiting out ``for``,
between renewals, cooling down, blocked): :func:`steady` recognises those
without building anything, and :func:`evaluate` is ``steady`` plus the full
:func:`transition`. ``steady`` must never claim a second that ``transition``
would act on; tests hold it to that on a grid of timer and level boundaries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.protocol import Event, now_ms
from rules.core.model import Rule, _contains

Phase = Literal["idle", "pending", "active", "cooldown"]
PHASES: tuple[Phase, ...] = ("idle", "pending", "active", "cooldown")


# ------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class LeaseOn:
    """Switch ``actuator`` on (or keep it on) for ``lease_s`` seconds."""

    site: str
    actuator: str
    lease_s: float
    reason: str
    rule: str | None  # None: a manual override
    cmd_id: str = ""


@dataclass(frozen=True, slots=True)
class SwitchOff:
    site: str
    actuator: str
    reason: str
    rule: str | None


@dataclass(frozen=True, slots=True)
class EmitEvent:
    site: str
    event: Event


@dataclass(frozen=True, slots=True)
class Notify:
    notifier: str
    rule: str
    site: str
    text: str
    severity: str


Action = LeaseOn | SwitchOff | EmitEvent | Notify


# ------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class RuleState:
    phase: Phase = "idle"
    since: float | None = None  # when the current phase began
    active_since: float | None = None
    clear_since: float | None = None  # while active: since when the clear condition holds
    last_lease: float | None = None  # while active: last LeaseOn
    cooldown_until: float | None = None
    blocked: tuple[str, ...] = ()  # interlocks holding at the last evaluation
    unknown: bool = False  # the data was unknown at the last evaluation
    last_reason: str = ""  # why the last run stopped

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocked"] = list(self.blocked)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuleState:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        if kw.get("phase", "idle") not in PHASES:
            raise ValueError(f"unknown phase {kw.get('phase')!r}")
        kw["blocked"] = tuple(kw.get("blocked", ()))
        return cls(**kw)


IDLE = RuleState()


@dataclass(frozen=True, slots=True)
class RuleInputs:
    """What one evaluation needs: values already aggregated, None = unknown."""

    site: str
    value: float | None  # combined, minus the background for relative rules
    interlocks: dict[str, float | None] = dataclasses.field(default_factory=dict)


# -------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class _Compiled:
    """Constants of a rule the state machine needs every second, looked up once."""

    is_above: bool
    threshold: float
    clear_level: float
    # (name, is_above, trip level, clear level, unknown blocks)
    interlocks: tuple[tuple[str, bool, float, float, bool], ...]
    hours: tuple[str, tuple[str, ...], str] | None
    # [epoch minute, inside the active hours then]: asked every second, changes per minute
    hours_memo: list[Any] = dataclasses.field(default_factory=lambda: [None, True], compare=False)


_COMPILED: dict[int, tuple[Rule, _Compiled]] = {}


def compiled(rule: Rule) -> _Compiled:
    """The rule's constants, cached by identity (the entry keeps the rule alive, so
    the id cannot be reused while cached; the cache is reset when it grows large)."""
    hit = _COMPILED.get(id(rule))
    if hit is not None and hit[0] is rule:
        return hit[1]
    c = _Compiled(
        rule.is_above,
        rule.threshold,
        rule.clear_level,
        tuple(
            (il.name, il.is_above, il.threshold, il.clear_level, il.on_unknown == "block")
            for il in rule.unless
        ),
        rule.active.key() if rule.active is not None else None,
    )
    if len(_COMPILED) > 4096:
        _COMPILED.clear()
    _COMPILED[id(rule)] = (rule, c)
    return c


def holding_interlocks(rule: Rule, inputs: RuleInputs, previously: tuple[str, ...]) -> list[str]:
    """Names of the interlocks that hold now (with their hysteresis)."""
    return _holding(compiled(rule), inputs.interlocks, previously)


def _holding(
    c: _Compiled, values: Mapping[str, float | None], previously: tuple[str, ...]
) -> list[str]:
    out = []
    for name, is_above, trip, clear, block_unknown in c.interlocks:
        v = values.get(name)
        if v is None:
            if block_unknown:
                out.append(name)
            continue
        level = clear if name in previously else trip
        if (v > level) if is_above else (v < level):
            out.append(name)
    return out


def _in_hours(c: _Compiled, now: float) -> bool:
    if c.hours is None:
        return True
    minute = int(now // 60)
    memo = c.hours_memo
    if memo[0] != minute:
        memo[1] = _contains(*c.hours, minute)
        memo[0] = minute
    return bool(memo[1])


def _event(
    rule: Rule, site: str, now: float, kind: str, text: str, severity: str, **data: Any
) -> EmitEvent:
    clean = {k: v for k, v in data.items() if v is not None}
    return EmitEvent(
        site,
        Event(
            ts=now_ms(now),
            kind=kind,
            text=text[:1000],
            severity=severity,  # type: ignore[arg-type]
            rule=rule.id,
            data=clean or None,
        ),
    )


class _CondText:
    """The rule's condition as text, built only when an event needs it."""

    __slots__ = ("rule",)

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def __str__(self) -> str:
        return self.rule.describe_condition()

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _fmt(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.1f}"


def beyond(rule: Rule, value: float) -> bool:
    """Is ``value`` beyond the rule's ON threshold?"""
    if rule.above is not None:
        return value > rule.above
    assert rule.below is not None
    return value < rule.below


def needs_interlocks(rule: Rule, state: RuleState, value: float | None) -> bool:
    """Interlocks matter while the rule is pending or active, or its condition is met.

    Otherwise they are not evaluated (that keeps a tick cheap) and their
    hysteresis memory stays as it was when they last mattered. That errs on
    the safe side: an interlock remembered as holding must show its clear
    level again before it releases.
    """
    if not rule.unless:
        return False
    if state.phase in ("pending", "active"):
        return True
    return value is not None and beyond(rule, value)


def quiet(rule: Rule, state: RuleState, value: float | None, now: float) -> bool:
    """True when an evaluation could change nothing (the common case: idle, all clear)."""
    phase = state.phase
    if phase == "idle":
        pass
    elif phase == "cooldown":
        if state.cooldown_until is None or now >= state.cooldown_until:
            return False
    else:
        return False
    if value is None:
        return state.unknown
    if state.unknown:
        return False
    # not beyond(rule, value), inlined: asked for every rule every second
    above = rule.above
    return not (value > above) if above is not None else not (value < rule.below)  # type: ignore[operator]


# What steady_code() found: nothing changes / something may
STEADY, CHANGE = "steady", "change"


def steady(
    rule: Rule,
    state: RuleState,
    value: float | None,
    interlocks: Mapping[str, float | None],
    now: float,
    default_lease_s: float = 60.0,
) -> bool:
    """True when :func:`transition` would return ``state`` itself and no action.

    The fast path of :func:`evaluate` (and of the engine, which then need not
    build the inputs): most seconds nothing happens -- an idle rule below its
    threshold, a pending rule waiting out ``for``, an active rule between two
    renewals, a rule in cooldown or blocked by a holding interlock. Each test
    below names the branch of :func:`transition` that would change something;
    a property test holds this to :func:`transition` for random states and
    inputs. ``interlocks`` is only read when :func:`needs_interlocks` says so.
    """
    if quiet(rule, state, value, now):
        return True
    return steady_code(rule, state, value, interlocks, now, default_lease_s) is STEADY


def steady_code(
    rule: Rule,
    state: RuleState,
    value: float | None,
    interlocks: Mapping[str, float | None],
    now: float,
    default_lease_s: float = 60.0,
) -> str:
    """:func:`steady` past :func:`quiet` (which the engine asks first): ``STEADY``
    or ``CHANGE``."""
    known = value is not None
    if state.unknown == known:
        return CHANGE  # the data became unknown (stale event) or known again
    c = compiled(rule)
    on = known and ((value > c.threshold) if c.is_above else (value < c.threshold))  # type: ignore[operator]
    blocked = state.blocked
    phase = state.phase
    if c.interlocks and (on or phase == "pending" or phase == "active"):  # needs_interlocks
        holding = _holding(c, interlocks, blocked)
        if len(holding) != len(blocked) or tuple(holding) != blocked:
            return CHANGE  # an interlock starts or stops holding
    if phase == "cooldown":
        return STEADY if state.cooldown_until is not None and now < state.cooldown_until else CHANGE
    if phase == "idle":
        # not startable: below the threshold, blocked, or outside the active hours
        return CHANGE if on and not blocked and _in_hours(c, now) else STEADY
    if phase == "pending":
        waiting = (
            on
            and not blocked
            and _in_hours(c, now)
            and state.since is not None
            and now - state.since < rule.for_
        )
        return STEADY if waiting else CHANGE
    # active: no stop reason, no change of the clear timer, no renewal due
    if not known or blocked or state.active_since is None or not _in_hours(c, now):
        return CHANGE
    acts = rule.actions
    ran = now - state.active_since
    if acts.max_on is not None and ran >= acts.max_on:
        return CHANGE
    clear_since = state.clear_since
    if (value <= c.clear_level) if c.is_above else (value >= c.clear_level):  # type: ignore[operator]
        if clear_since is None or (now - clear_since >= rule.min_clear and ran >= acts.run_for):
            return CHANGE  # the clear timer starts, or the run ends as cleared
    elif clear_since is not None:
        return CHANGE  # the clear timer resets
    lease_s = acts.lease_s if acts.lease_s is not None else default_lease_s
    if state.last_lease is not None and now - state.last_lease < lease_s / 3:
        return STEADY
    return CHANGE  # the lease renewal is due


def evaluate(
    rule: Rule,
    state: RuleState,
    inputs: RuleInputs,
    now: float,
    default_lease_s: float = 60.0,
) -> tuple[RuleState, list[Action]]:
    """One step of the rule's state machine at time ``now``."""
    if steady(rule, state, inputs.value, inputs.interlocks, now, default_lease_s):
        return state, []  # the common case: nothing can change
    return transition(rule, state, inputs, now, default_lease_s)


def transition(
    rule: Rule,
    state: RuleState,
    inputs: RuleInputs,
    now: float,
    default_lease_s: float = 60.0,
) -> tuple[RuleState, list[Action]]:
    """:func:`evaluate` without the fast path (for callers that checked :func:`steady`)."""
    v = inputs.value
    known = v is not None
    on_cond = known and beyond(rule, v)  # type: ignore[arg-type]
    site = inputs.site
    c = compiled(rule)
    above = c.is_above
    clear_level = c.clear_level
    clear_cond = known and (v <= clear_level if above else v >= clear_level)  # type: ignore[operator]
    if needs_interlocks(rule, state, v):
        holding = holding_interlocks(rule, inputs, state.blocked)
    else:
        holding = list(state.blocked)  # not relevant now: keep the memory
    acts = rule.actions
    lease_s = acts.lease_s if acts.lease_s is not None else default_lease_s
    out: list[Action] = []
    cond_text = _CondText(rule)

    # Transitions of the data and the interlocks, reported once each.
    if not known and not state.unknown:
        out.append(
            _event(rule, site, now, "stale", f"{rule.id}: data unknown ({cond_text})", "warning")
        )
    new_blocks = [n for n in holding if n not in state.blocked]
    if new_blocks:
        out.append(
            _event(
                rule,
                site,
                now,
                "interlock",
                f"{rule.id}: interlock {', '.join(new_blocks)} holds: spraying blocked",
                "warning",
                interlocks=new_blocks,
                value=v,
            )
        )

    s = state
    if tuple(holding) != state.blocked or state.unknown != (not known):
        s = dataclasses.replace(state, blocked=tuple(holding), unknown=not known)

    if s.phase == "cooldown" and (s.cooldown_until is None or now >= s.cooldown_until):
        s = dataclasses.replace(s, phase="idle", since=now, cooldown_until=None)

    if s.phase == "active":
        assert s.active_since is not None
        reason = ""
        ran = now - s.active_since
        clear_since = s.clear_since
        if not known:
            reason = "stale"
        elif holding:
            reason = "interlock:" + ",".join(holding)
        elif not _in_hours(c, now):
            reason = "outside_hours"
        elif acts.max_on is not None and ran >= acts.max_on:
            reason = "max_on"
        else:
            clear_since = (clear_since if clear_since is not None else now) if clear_cond else None
            held = clear_since is not None and now - clear_since >= rule.min_clear
            if held and ran >= acts.run_for:
                reason = "cleared"
        if reason:
            for act in acts.lease:
                out.append(SwitchOff(site, act, reason, rule.id))
            if reason == "max_on":
                out.append(
                    _event(
                        rule,
                        site,
                        now,
                        "max_on",
                        f"{rule.id}: reached max_on {acts.max_on:g}s",
                        "warning",
                        ran_s=round(ran, 3),
                    )
                )
            sev = "info" if reason == "cleared" else "warning"
            text = f"{rule.id}: off ({reason}) after {ran / 60:.1f} min, {cond_text} = {_fmt(v)}"
            out.append(
                _event(
                    rule, site, now, "off", text, sev, reason=reason, value=v, ran_s=round(ran, 3)
                )
            )
            for n in rule.notify:
                out.append(Notify(n, rule.id, site, text, sev))
            s = dataclasses.replace(
                s,
                phase="cooldown",
                since=now,
                active_since=None,
                clear_since=None,
                last_lease=None,
                cooldown_until=now + acts.cooldown,
                last_reason=reason,
            )
        else:
            renew = s.last_lease is None or now - s.last_lease >= lease_s / 3
            if renew:
                for act in acts.lease:
                    out.append(LeaseOn(site, act, lease_s, f"{rule.id}: renew", rule.id))
                s = dataclasses.replace(s, clear_since=clear_since, last_lease=now)
            elif clear_since != s.clear_since:
                s = dataclasses.replace(s, clear_since=clear_since)
        return s, out

    startable = on_cond and not holding and _in_hours(c, now)

    if s.phase == "idle" and startable:
        s = dataclasses.replace(s, phase="pending", since=now)
        if rule.for_ > 0:
            out.append(
                _event(
                    rule,
                    site,
                    now,
                    "pending",
                    f"{rule.id}: {cond_text} = {_fmt(v)}, waiting {rule.for_:g}s",
                    "info",
                    value=v,
                )
            )

    if s.phase == "pending":
        if not startable or s.since is None:
            s = dataclasses.replace(s, phase="idle", since=now)
        elif now - s.since >= rule.for_:
            text = f"{rule.id}: on, {cond_text} = {_fmt(v)}"
            for act in acts.lease:
                out.append(LeaseOn(site, act, lease_s, text, rule.id))
            out.append(_event(rule, site, now, "on", text, rule.severity, value=v))
            for n in rule.notify:
                out.append(Notify(n, rule.id, site, text, rule.severity))
            s = dataclasses.replace(
                s, phase="active", since=now, active_since=now, clear_since=None, last_lease=now
            )
    return s, out
