"""The rule engine as a pure facade: telemetry and a clock in, typed actions out.

:class:`Engine` owns the rolling windows, the per-rule state machines
(:func:`rules.core.evaluator.evaluate`, one instance per rule and site), actuator
arbitration and manual overrides. It does no I/O: the service turns
:class:`LeaseOn`/:class:`SwitchOff` into ``gateway.protocol.Command`` on
``{site}/{actuator}/cmd``, :class:`EmitEvent` into ``{site}/events`` and
:class:`Notify` into webhook/robot posts; ``dustgate replay`` runs the very
same engine over history.

- ``ingest(site, device, telemetry, now)`` validates and stores a reading and
  evaluates the rules that depend on that device. Dropped, each counted in
  ``engine.counters``: another site than the served ones (``other_site``;
  served = ``sites:`` plus any site a rule reads, e.g. the county station), a
  device no rule reads (``unknown_device``), a reading not newer than the
  previous one of the device (``duplicate`` / ``out_of_order``). A value
  outside its metric's plausibility limits (:mod:`rules.core.limits`:
  ``non_finite``, ``below_limit``, ``over_limit``) is left out of every
  window and rule, as if the reading lacked that metric: one absurd value
  neither poisons an aggregate nor makes a running rule's data unknown, and a
  sensor that sends nothing plausible goes stale. ``ingest_values`` is the
  same without a pydantic model (the replay hot path).
- ``tick(now)`` evaluates every rule (timers: ``for``, cooldown, staleness,
  lease renewal) and expires overrides; call it about once a second.
- Arbitration: an actuator is on while any active rule or an ON override
  holds it. Renewals from several rules are merged (one LeaseOn per
  ``lease_s/3``); when the last holder lets go an explicit SwitchOff is sent.
- Notifications: at most one per notifier's ``min_interval`` for each (site,
  rule) (:mod:`rules.core.notifylimit`); the ones in between are held back
  (``notify_suppressed``) and folded into the next one ("3 more since
  10:02"), or sent by ``tick`` when the interval has run out
  (``notify_flushed``): never lost.
- ``set_override(site, actuator, "on"|"off"|"auto", until, who, now)``: an
  override wins over rules until ``until``. ON leases (and renews) the
  actuator itself; OFF switches it off and blocks rules; ``auto`` hands back.
- ``release_all(reason)``: OFF for every actuator held on (clean shutdown);
  they are recorded as off, so after a restart the next renewal leases again.
- ``snapshot()`` / ``Engine.restore(rules_file, snapshot, now)``: rule states,
  actuator holders, overrides and notifier rate limits survive restarts, and
  timers resume (they are absolute times). Windows are not persisted: after a
  restore, a rule whose devices have not reported yet is left alone (no
  renewal, no stop) for up to ``defaults.max_staleness`` instead of being
  stopped as stale; its lease runs out on the agent meanwhile if the data
  does not come back.
- ``held_back`` / ``held_back_end``: events when an interlock keeps a rule
  whose value is beyond its threshold from starting, and when that is over
  (the value back at its clear level or unknown, the interlocks let go, or the
  rule started). An idle rule's interlocks are not evaluated below the
  threshold and a remembered block emits no new ``interlock`` event, so
  nothing else would say either (incidents need both). Off the hot path: a
  steady evaluation looks at it only when the state remembers a block.
- ``reload(new_rules_file, now)`` swaps rules atomically, keeping the state of
  rules whose definition (model dump) is unchanged; a changed or removed rule
  starts over and lets go of its actuators.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.protocol import Event, Telemetry, now_ms
from rules.core.config import RulesFile
from rules.core.evaluator import (
    IDLE,
    STEADY,
    Action,
    EmitEvent,
    LeaseOn,
    Notify,
    RuleInputs,
    RuleState,
    SwitchOff,
    beyond,
    needs_interlocks,
    quiet,
    steady_code,
    transition,
)
from rules.core.limits import NO_BOUNDS, verdict
from rules.core.model import Rule
from rules.core.notifylimit import NotifyLimiter
from rules.core.window import DeviceTrack, Series

__all__ = [
    "Action",
    "EmitEvent",
    "Engine",
    "LeaseOn",
    "Notify",
    "Override",
    "SwitchOff",
]

SNAPSHOT_VERSION = 1
OverrideMode = Literal["on", "off", "auto"]
InstanceKey = tuple[str, str]  # (rule id, site)
Reader = Callable[[float], float | None]
# (ts, seq, values, now, status, flags, evaluate) -> actions
DeviceIngest = Callable[
    [float, int, Mapping[str, float], float, str, Mapping[str, str] | None, bool], list["Action"]
]


def rule_digest(rule: Rule) -> str:
    """Identity of a rule's definition: unchanged digest -> state carries over."""
    dump = json.dumps(rule.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(dump.encode()).hexdigest()[:16]


@dataclass(slots=True)
class Override:
    mode: Literal["on", "off"]
    until: float | None  # None: until set back to auto
    who: str
    since: float


@dataclass(slots=True)
class _Actuator:
    on: bool = False
    last_sent: float | None = None  # last LeaseOn sent
    lease_s: float = 0.0
    holders: dict[str, float] = field(default_factory=dict)  # rule id -> lease until

    def live_holders(self, now: float) -> list[str]:
        return [r for r, until in self.holders.items() if until > now]


@dataclass(frozen=True, slots=True)
class _SeriesRef:
    site: str
    devices: tuple[str, ...]
    metric: str
    aggregate: str
    window: float
    combine: str
    is_above: bool


class _Source:
    """A resolved _SeriesRef: direct references to its series, windows and device tracks."""

    __slots__ = (
        "aggregate",
        "combine",
        "compute",
        "is_above",
        "items",
        "memo_gen",
        "memo_now",
        "memo_value",
        "read",
        "ref",
        "shared",
    )

    def __init__(self, ref: _SeriesRef, items: list[tuple[Series, Reader, DeviceTrack]]) -> None:
        self.ref = ref
        self.items = items
        self.aggregate = ref.aggregate
        self.combine = ref.combine
        self.is_above = ref.is_above
        self.shared = False  # read by several rules: memoised per (now, data generation)
        self.memo_now: float | None = None
        self.memo_gen = -1
        self.memo_value: float | None = None
        if len(items) == 1:
            self.compute: Reader = _single(*items[0])
        elif self.combine == "any":
            self.compute = _any(items, self.is_above)
        else:
            self.compute = self._combined
        self.read: Reader = self.compute  # memoised instead if shared (Engine._reader)

    def _combined(self, now: float) -> float | None:
        known: list[float] = []
        unknown = False
        for series, read, track in self.items:
            ok_ts = series.last_ok_ts
            if series.bad or ok_ts is None or now - ok_ts > track.stale_after:
                unknown = True
                continue
            v = read(now)  # every fresh window is read (and evicted), also when one is unknown
            if v is None:
                unknown = True
            else:
                known.append(v)
        if self.combine == "any":
            return (max(known) if self.is_above else min(known)) if known else None
        if unknown:
            return None
        if self.combine == "all":
            return min(known) if self.is_above else max(known)
        return math.fsum(known) / len(known)


def _any(items: list[tuple[Series, Reader, DeviceTrack]], is_above: bool) -> Reader:
    """``combine: any``: the worst known value (max for ``above``, min for ``below``),
    None if none is known. :meth:`_Source._combined` without the list: the same
    reads in the same order and the same comparisons as ``max()``/``min()``."""

    def worst(now: float) -> float | None:
        best: float | None = None
        for series, read, track in items:
            ok_ts = series.last_ok_ts
            if series.bad or ok_ts is None or now - ok_ts > track.stale_after:
                continue
            v = read(now)
            if v is not None and (best is None or (v > best if is_above else v < best)):
                best = v
        return best

    return worst


def _single(series: Series, read: Reader, track: DeviceTrack) -> Reader:
    """The value of a one-device source: its aggregate, or None when stale or bad."""

    def compute(now: float) -> float | None:
        ok_ts = series.last_ok_ts
        if series.bad or ok_ts is None or now - ok_ts > track.stale_after:
            return None
        return read(now)

    return compute


@dataclass(frozen=True, slots=True)
class _Instance:
    rule: Rule
    site: str
    main: _SeriesRef
    background: _SeriesRef | None
    interlocks: tuple[tuple[str, _SeriesRef], ...]
    src_main: _Source
    src_background: _Source | None
    src_interlocks: tuple[tuple[str, _Source], ...]


class Engine:
    def __init__(self, rules_file: RulesFile, now: float | None = None) -> None:
        """A fresh engine (every rule idle). ``now`` is accepted for symmetry with
        :meth:`restore`; a fresh engine has no timers to place."""
        self._counts: Counter[str] = Counter()
        self._n_readings = 0
        # inputs of the last evaluation that was not steady (that changed state or acted)
        self.last_inputs: dict[InstanceKey, RuleInputs] = {}
        self.last_values: dict[InstanceKey, float | None] = {}  # main value, every evaluation
        self._tracks: dict[tuple[str, str], DeviceTrack] = {}
        self._series: dict[tuple[str, str, str], Series] = {}
        self._states: dict[InstanceKey, RuleState] = {}
        self._actuators: dict[tuple[str, str], _Actuator] = {}
        self._overrides: dict[tuple[str, str], Override] = {}
        self._notify = NotifyLimiter(self._notify_interval)
        self._notify_due = math.inf  # when held-back notifications are next due (tick)
        self._cmd_seq = 0
        self._warmup_until = -math.inf
        # rules an interlock keeps from starting while their value is beyond the threshold:
        # the tick says when that ends without a start (see _held_back_ended)
        self._held_back: set[InstanceKey] = set()
        self._compile(rules_file)

    # ----------------------------------------------------------- compile

    def _compile(self, rf: RulesFile) -> None:
        self.rules_file = rf
        d = rf.defaults
        self._stale = (d.stale_factor, d.min_staleness, d.max_staleness)
        self._default_lease = d.lease_s
        self._served: frozenset[str] | None = frozenset(rf.sites) if rf.sites is not None else None
        refs: dict[InstanceKey, tuple[_SeriesRef, _SeriesRef | None, Any]] = {}
        needs: dict[tuple[str, str, str], dict[float, set[str]]] = {}
        dependents: dict[tuple[str, str], set[InstanceKey]] = {}

        def need(ref: _SeriesRef, key: InstanceKey) -> None:
            for dev in ref.devices:
                kinds = needs.setdefault((ref.site, dev, ref.metric), {}).setdefault(
                    ref.window, set()
                )
                kinds.add(ref.aggregate)
                dependents.setdefault((ref.site, dev), set()).add(key)

        for rule in rf.rules:
            if not rule.enabled:
                continue
            for site in rule.site:
                key = (rule.id, site)
                main = _SeriesRef(
                    site,
                    tuple(rule.devices),
                    rule.metric,
                    rule.aggregate,
                    rule.window,
                    rule.combine,
                    rule.is_above,
                )
                bg = None
                if rule.relative_to is not None:
                    b = rule.relative_to
                    bg = _SeriesRef(
                        b.site or site,
                        tuple(b.devices),
                        b.metric or rule.metric,
                        b.aggregate or rule.aggregate,
                        b.window or rule.window,
                        b.combine,
                        rule.is_above,
                    )
                ils = tuple(
                    (
                        il.name,
                        _SeriesRef(
                            il.site or site,
                            tuple(il.devices),
                            il.metric,
                            il.aggregate,
                            il.window,
                            il.combine,
                            il.is_above,
                        ),
                    )
                    for il in rule.unless
                )
                refs[key] = (main, bg, ils)
                for ref in (main, bg, *(r for _, r in ils)):
                    if ref is not None:
                        need(ref, key)
        for site, dev, _ in needs:
            track = self._tracks.setdefault((site, dev), DeviceTrack(*self._stale))
            track.configure(*self._stale)
        by_device: dict[tuple[str, str], tuple[DeviceTrack, list[Any]]] = {}
        self.limits = limits = rf.limit_table
        for (site, dev, metric), lengths in needs.items():
            series = self._series.get((site, dev, metric))
            if series is None:
                series = self._series[(site, dev, metric)] = Series()
            for length, kinds in lengths.items():
                series.window(length, kinds)
            _, metrics = by_device.setdefault((site, dev), (self._tracks[(site, dev)], []))
            lo, hi = limits.get(metric, NO_BOUNDS)
            metrics.append((metric, series, [w.appender() for w in series.windows.values()],
                            lo, hi))  # fmt: skip
        self._by_device = by_device
        sources: dict[_SeriesRef, _Source] = {}

        def resolve(ref: _SeriesRef) -> _Source:
            src = sources.get(ref)
            if src is not None:
                src.shared = True
            else:
                items = []
                for dev in ref.devices:
                    series = self._series[(ref.site, dev, ref.metric)]
                    window = series.windows[ref.window]
                    items.append(
                        (series, window.reader(ref.aggregate), self._tracks[(ref.site, dev)])
                    )
                src = sources[ref] = _Source(ref, items)
            return src

        instances: dict[InstanceKey, _Instance] = {}
        for rule in rf.rules:
            for site in rule.site:
                key = (rule.id, site)
                if key not in refs:
                    continue
                main, bg, ils = refs[key]
                instances[key] = _Instance(
                    rule, site, main, bg, ils,
                    resolve(main),
                    resolve(bg) if bg is not None else None,
                    tuple((name, resolve(ref)) for name, ref in ils),
                )  # fmt: skip
        self._instances = instances
        for src in sources.values():
            src.read = self._reader(src)
        self._digests = {rid: rule_digest(inst.rule) for (rid, _), inst in instances.items()}
        self._dependents = {k: sorted(v) for k, v in dependents.items()}
        self._ingests = {
            (site, dev): self._make_ingest(site, dev, track, metrics)
            for (site, dev), (track, metrics) in by_device.items()
        }
        for key in instances:
            self._states.setdefault(key, IDLE)
        for a in rf.actuator_list:
            self._actuators.setdefault((a.site, a.id), _Actuator())
        # Sites the rules read from (a county background station, a shared weather
        # mast) are accepted even when `sites:` does not list them.
        read_sites = frozenset(site for site, _, _ in needs)
        self._served = (
            (self._served | read_sites) if self._served is not None else read_sites or None
        )

    # ------------------------------------------------------------- ingest

    def ingest(self, site: str, device: str, telemetry: Telemetry, now: float) -> list[Action]:
        """Store one reading from the wire and evaluate the rules that read this device."""
        return self.ingest_values(
            site,
            device,
            telemetry.ts / 1000.0,
            telemetry.seq,
            telemetry.values,
            now,
            status=telemetry.status.value,
            flags={k: v.value for k, v in telemetry.flags.items()} if telemetry.flags else None,
        )

    def ingest_values(
        self,
        site: str,
        device: str,
        ts: float,
        seq: int,
        values: Mapping[str, float],
        now: float,
        status: str = "ok",
        flags: Mapping[str, str] | None = None,
        evaluate: bool = True,
    ) -> list[Action]:
        """``ingest`` without a pydantic model; ``ts`` in seconds.

        With ``evaluate=False`` only the windows are updated (the replay does
        this and ticks once per second of data time).
        """
        ingest = self._ingests.get((site, device))
        if ingest is None:
            # every device a rule reads is on a served site, so the site check waits till here
            served = self._served
            if served is not None and site not in served:
                self._counts["other_site"] += 1
            else:
                self._counts["unknown_device"] += 1
            return []
        return ingest(ts, seq, values, now, status, flags, evaluate)

    def device_ingest(self, site: str, device: str) -> DeviceIngest | None:
        """:meth:`ingest_values` bound to one device some rule reads (None: no rule reads
        it): ``(ts, seq, values, now, status, flags, evaluate) -> actions``. Valid until
        the next :meth:`reload` (the service caches it per topic)."""
        return self._ingests.get((site, device))

    def _make_ingest(
        self, site: str, device: str, track: DeviceTrack, metrics: list[Any]
    ) -> DeviceIngest:
        """The ingest of one device, with what it needs looked up once (the hot path of
        the live engine and the replay)."""
        accept = track.accept
        counts = self._counts
        evaluate_instance = self._evaluate_instance
        dependents = [
            (key, self._instances[key]) for key in self._dependents.get((site, device), ())
        ]

        def ingest(
            ts: float,
            seq: int,
            values: Mapping[str, float],
            now: float,
            status: str,
            flags: Mapping[str, str] | None,
            evaluate: bool,
        ) -> list[Action]:
            rejected = accept(ts, seq)
            if rejected is not None:
                counts[rejected] += 1
                return []
            self._n_readings += 1  # also the data generation: memoised shared values are stale
            clean = flags is None and status == "ok"
            for metric, series, appends, lo, hi in metrics:
                value = values.get(metric)
                if value is None:
                    continue
                if clean and lo <= value <= hi:  # also False for NaN
                    # the hot path: Series.add inlined
                    series.last_ts = ts
                    series.last_ok_ts = ts
                    series.bad = False
                    for append in appends:
                        append(ts, value)
                    continue
                ok = flags.get(metric, status) == "ok" if flags is not None else status == "ok"
                if not lo <= value <= hi:
                    counts[verdict(value, (lo, hi)) or "over_limit"] += 1
                    if ok:
                        continue  # left out, as if the reading lacked the metric
                elif not ok:
                    counts["bad_status"] += 1
                series.add(ts, value, ok)
            if not evaluate:
                return []
            out: list[Action] = []
            for key, inst in dependents:
                out.extend(evaluate_instance(key, inst, now))
            return out

        return ingest

    # --------------------------------------------------------------- tick

    def tick(self, now: float) -> list[Action]:
        """Evaluate every rule; expire overrides and dead holders; renew ON overrides."""
        out: list[Action] = []
        evaluate = self._evaluate_instance
        for key, inst in self._instances.items():
            acts = evaluate(key, inst, now)
            if acts:
                out.extend(acts)
        if self._held_back:
            out.extend(self._held_back_ended(now))
        out.extend(self._tick_actuators(now))
        if now >= self._notify_due:
            out.extend(self._flush_notify(now))
        return out

    def _held_back_starts(
        self, key: InstanceKey, inst: _Instance, st: RuleState, v: float | None, now: float
    ) -> list[Action]:
        """A ``held_back`` event when an interlock keeps a rule whose value is beyond its
        threshold from starting (phase not active); remembered until it ends."""
        if st.phase == "active" or v is None or not beyond(inst.rule, v):
            return []
        self._held_back.add(key)
        event = Event(
            ts=now_ms(now),
            kind="held_back",
            text=f"{inst.rule.id}: {v:.1f} beyond the threshold, held back by "
            f"{', '.join(st.blocked)}",
            severity="warning",
            rule=inst.rule.id,
            data={"value": v, "interlocks": list(st.blocked)},
        )
        return [EmitEvent(inst.site, event)]

    def _held_back_ended(self, now: float) -> list[Action]:
        """A ``held_back_end`` event for each rule held back (``held_back``) once that is
        over: the value is back at its clear level (the rule's own hysteresis) or
        unknown, the interlocks let go, or the rule started (pending or active). An
        idle rule's interlocks are not evaluated below the threshold, so without this
        nothing would tell the end (incidents need it)."""
        out: list[Action] = []
        for key in sorted(self._held_back):
            inst, st = self._instances.get(key), self._states.get(key)
            if inst is None or st is None:
                self._held_back.discard(key)
                continue
            v = self.last_values.get(key)
            if v is None and now < self._warmup_until:
                continue  # just restored: the devices have not reported yet
            rule = inst.rule
            started = st.phase == "active" or st.phase == "pending"
            back = v is None or (v <= rule.clear_level if rule.is_above else v >= rule.clear_level)
            if st.blocked and not started and not back:
                continue  # still held back
            self._held_back.discard(key)
            why = "started" if started else "value unknown" if v is None else f"value {v:.1f}"
            event = Event(
                ts=now_ms(now),
                kind="held_back_end",
                text=f"{inst.rule.id}: no longer held back ({why})",
                rule=inst.rule.id,
                data={"value": v} if v is not None else None,
            )
            out.append(EmitEvent(inst.site, event))
        return out

    def _notify_interval(self, notifier: str) -> float | None:
        spec = self.rules_file.notifiers.get(notifier)
        return None if spec is None else spec.min_interval

    def _flush_notify(self, now: float) -> list[Action]:
        """Held-back notifications whose interval ran out, folded (see notifylimit)."""
        flushed: list[Action] = list(self._notify.due(now))
        self._counts["notify_flushed"] += len(flushed)
        self._notify_due = self._notify.next_due() or math.inf
        return flushed

    def _tick_actuators(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self._overrides:
            self._tick_overrides(now, out)
        for (site, act), a in self._actuators.items():
            if not (a.on or a.holders) or (site, act) in self._overrides:
                continue
            holders = a.holders
            for r in [r for r, until in holders.items() if until <= now]:
                del holders[r]
            if a.on and not holders:
                a.on = False
                out.append(SwitchOff(site, act, "lease expired without renewal", None))
        return out

    def _tick_overrides(self, now: float, out: list[Action]) -> None:
        for (site, act), ov in list(self._overrides.items()):
            if ov.until is not None and now >= ov.until:
                del self._overrides[(site, act)]
                out.append(
                    self._override_event(
                        site, act, "auto", f"override {ov.mode} expired", ov.who, now
                    )
                )
                out.extend(self._hand_back(site, act, now))
            elif ov.mode == "on":
                a = self._actuators[(site, act)]
                lease = self.rules_file.defaults.override_lease_s
                if a.last_sent is None or now - a.last_sent >= lease / 3:
                    out.append(
                        self._lease(site, act, a, lease, f"override on by {ov.who}", None, now)
                    )

    # ---------------------------------------------------------- evaluation

    def _reader(self, src: _Source) -> Reader:
        """``src``'s value at ``now``: computed, or, when several rules read it
        (interlocks, backgrounds), computed once per (now, data generation)."""
        if not src.shared:
            return src.compute
        compute = src.compute

        def read(now: float) -> float | None:
            gen = self._n_readings
            if src.memo_now == now and src.memo_gen == gen:
                return src.memo_value
            result = src.memo_value = compute(now)
            src.memo_now = now
            src.memo_gen = gen
            return result

        return read

    def inputs(self, key: InstanceKey, now: float) -> RuleInputs:
        """The aggregated inputs of one (rule, site) at ``now`` (interlocks always included)."""
        return self._inputs(self._instances[key], now, with_interlocks=True)

    def _main_value(self, inst: _Instance, now: float) -> float | None:
        v = inst.src_main.read(now)
        if v is not None and inst.src_background is not None:
            b = inst.src_background.read(now)
            v = None if b is None else v - b
        return v

    def _inputs(self, inst: _Instance, now: float, with_interlocks: bool) -> RuleInputs:
        v = self._main_value(inst, now)
        ils = {}
        if with_interlocks:
            ils = {name: src.read(now) for name, src in inst.src_interlocks}
        return RuleInputs(inst.site, v, ils)

    def _never_seen(self, inst: _Instance) -> bool:
        return any(track.last_ts is None for _, _, track in inst.src_main.items)

    def _evaluate_instance(self, key: InstanceKey, inst: _Instance, now: float) -> list[Action]:
        state = self._states[key]
        v = self.last_values[key] = self._main_value(inst, now)
        if quiet(inst.rule, state, v, now):
            return []
        return self._evaluate_rest(key, inst, state, v, now)

    def _evaluate_rest(
        self, key: InstanceKey, inst: _Instance, state: RuleState, v: float | None, now: float
    ) -> list[Action]:
        """The evaluation of a rule whose state is not quiet at ``now`` (value ``v``)."""
        if v is None and now < self._warmup_until and self._never_seen(inst):
            return []  # just restored: give the devices time to report
        ils: dict[str, float | None] = {}
        if inst.src_interlocks and needs_interlocks(inst.rule, state, v):
            for name, src in inst.src_interlocks:
                ils[name] = src.read(now)
        code = steady_code(inst.rule, state, v, ils, now, self._default_lease)
        if code is STEADY:
            if state.blocked and key not in self._held_back:
                return self._held_back_starts(key, inst, state, v, now)
            return []  # waiting for a timer or a crossing: nothing to build
        inputs = RuleInputs(inst.site, v, ils)
        self.last_inputs[key] = inputs
        new, actions = transition(inst.rule, state, inputs, now, self._default_lease)
        self._states[key] = new
        if new.blocked and key not in self._held_back:
            actions = actions + self._held_back_starts(key, inst, new, v, now)
        if not actions:
            return actions
        return self._arbitrate(actions, now)

    # -------------------------------------------------------- arbitration

    def _next_cmd_id(self, who: str | None) -> str:
        self._cmd_seq += 1
        return f"{(who or 'override')[:48]}-{self._cmd_seq}"

    def _lease(
        self,
        site: str,
        act: str,
        a: _Actuator,
        lease_s: float,
        reason: str,
        rule: str | None,
        now: float,
    ) -> LeaseOn:
        a.on = True
        a.last_sent = now
        a.lease_s = lease_s
        return LeaseOn(site, act, lease_s, reason[:200], rule, self._next_cmd_id(rule))

    def _arbitrate(self, actions: Iterable[Action], now: float) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            if isinstance(action, LeaseOn):
                key = (action.site, action.actuator)
                a = self._actuators.setdefault(key, _Actuator())
                assert action.rule is not None
                a.holders[action.rule] = now + action.lease_s
                ov = self._overrides.get(key)
                if ov is not None:
                    self._counts[f"override_{ov.mode}_wins"] += 1
                    continue
                due = a.last_sent is None or now - a.last_sent >= action.lease_s / 3
                if not a.on or due or action.lease_s > a.lease_s:
                    out.append(
                        self._lease(
                            action.site,
                            action.actuator,
                            a,
                            action.lease_s,
                            action.reason,
                            action.rule,
                            now,
                        )
                    )
            elif isinstance(action, SwitchOff):
                key = (action.site, action.actuator)
                a = self._actuators.setdefault(key, _Actuator())
                if action.rule is not None:
                    a.holders.pop(action.rule, None)
                if key in self._overrides:
                    continue
                if a.on and not a.live_holders(now):
                    a.on = False
                    out.append(action)
            elif isinstance(action, Notify):
                sent = self._notify.offer(action, now)
                if sent is None:
                    self._counts["notify_suppressed"] += 1
                    self._notify_due = min(self._notify_due, self._notify.next_due() or math.inf)
                else:
                    out.append(sent)
            else:
                out.append(action)
        return out

    def release_all(self, reason: str = "engine stopping") -> list[Action]:
        """OFF for every actuator the engine holds on (a clean shutdown).

        The actuators are recorded as off, but rule states and holders are
        kept: restored from a snapshot taken after this, a rule that still
        holds an actuator leases it again at its next renewal, and an ON
        override re-leases at once.
        """
        out: list[Action] = []
        for (site, act), a in self._actuators.items():
            if a.on:
                a.on = False
                a.last_sent = None
                out.append(SwitchOff(site, act, reason, None))
        return out

    # ----------------------------------------------------------- overrides

    def _override_event(
        self, site: str, act: str, mode: str, text: str, who: str, now: float
    ) -> EmitEvent:
        return EmitEvent(
            site,
            Event(
                ts=now_ms(now),
                kind="override",
                text=text[:1000],
                severity="warning",
                actuator=act,
                data={"mode": mode, "who": who},
            ),
        )

    def _hand_back(self, site: str, act: str, now: float) -> list[Action]:
        """After an override: the rules' wish decides again."""
        a = self._actuators[(site, act)]
        live = a.live_holders(now)
        if live:
            return [
                self._lease(
                    site, act, a, self._default_lease, f"back to rule {live[0]}", live[0], now
                )
            ]
        a.on = False
        return [SwitchOff(site, act, "override ended, no rule holds it", None)]

    def set_override(
        self,
        site: str,
        actuator: str,
        mode: OverrideMode,
        until: float | None,
        who: str,
        now: float,
    ) -> list[Action]:
        """A manual override; raises KeyError for an actuator not in the rules file."""
        key = (site, actuator)
        if key not in self._actuators:
            raise KeyError(f"actuator {site}/{actuator} is not declared in the rules file")
        if mode not in ("on", "off", "auto"):
            raise ValueError(f"override mode must be on, off or auto, got {mode!r}")
        a = self._actuators[key]
        span = "" if until is None else f" for {max(0.0, until - now) / 60:.1f} min"
        out: list[Action] = [
            self._override_event(
                site, actuator, mode, f"{who} set {actuator} {mode}{span}", who, now
            )
        ]
        if mode == "auto":
            if self._overrides.pop(key, None) is not None:
                out.extend(self._hand_back(site, actuator, now))
            return out
        self._overrides[key] = Override(mode, until, who, now)
        if mode == "on":
            lease = self.rules_file.defaults.override_lease_s
            out.append(self._lease(site, actuator, a, lease, f"override on by {who}", None, now))
        else:
            a.on = False
            out.append(SwitchOff(site, actuator, f"override off by {who}", None))
        return out

    # --------------------------------------------------------- inspection

    def state(self, rule: str, site: str) -> RuleState:
        return self._states[(rule, site)]

    @property
    def counters(self) -> Counter[str]:
        """Dropped and accepted readings, suppressed notifications, ... (a copy)."""
        c = Counter(self._counts)
        if self._n_readings:
            c["readings"] = self._n_readings
        return c

    @property
    def states(self) -> Mapping[InstanceKey, RuleState]:
        """Current state of every (rule, site) instance (read-only view)."""
        return self._states

    def metrics_of(self, site: str, device: str) -> frozenset[str]:
        """The metrics some rule reads from this device (empty: a device no rule reads)."""
        entry = self._by_device.get((site, device))
        return frozenset(m[0] for m in entry[1]) if entry is not None else frozenset()

    def instances(self) -> list[InstanceKey]:
        return list(self._instances)

    def rule(self, key: InstanceKey) -> Rule:
        return self._instances[key].rule

    def actuator_on(self, site: str, actuator: str) -> bool:
        a = self._actuators.get((site, actuator))
        return bool(a and a.on)

    # ------------------------------------------------------- persistence

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state for a restart (rule timers, holders, overrides)."""
        return {
            "version": SNAPSHOT_VERSION,
            "rules": {
                f"{rid}@{site}": {"digest": self._digests[rid], "state": st.to_json()}
                for (rid, site), st in self._states.items()
                if (rid, site) in self._instances
            },
            "actuators": {
                f"{site}/{act}": {
                    "on": a.on,
                    "last_sent": a.last_sent,
                    "lease_s": a.lease_s,
                    "holders": dict(a.holders),
                }
                for (site, act), a in self._actuators.items()
            },
            "overrides": {
                f"{site}/{act}": {"mode": o.mode, "until": o.until, "who": o.who, "since": o.since}
                for (site, act), o in self._overrides.items()
            },
            "notify": self._notify.to_json(),
            "cmd_seq": self._cmd_seq,
            "counters": dict(self.counters),
            "held_back": sorted(f"{rid}@{site}" for rid, site in self._held_back),
        }

    @classmethod
    def restore(cls, rules_file: RulesFile, snapshot: Mapping[str, Any], now: float) -> Engine:
        """An engine for ``rules_file`` carrying over ``snapshot`` where rules are unchanged.

        Raises ValueError for a snapshot it cannot read (the caller then starts fresh).
        """
        eng = cls(rules_file)
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {snapshot.get('version')!r} is not supported")
        try:
            for name, entry in dict(snapshot.get("rules", {})).items():
                rid, _, site = str(name).partition("@")
                key = (rid, site)
                if key in eng._instances and eng._digests[rid] == entry.get("digest"):
                    eng._states[key] = RuleState.from_json(entry["state"])
            active = {rid for (rid, _), st in eng._states.items() if st.phase == "active"}
            for name, entry in dict(snapshot.get("actuators", {})).items():
                site, _, act = str(name).partition("/")
                if (site, act) not in eng._actuators:
                    continue
                a = eng._actuators[(site, act)]
                a.on = bool(entry.get("on"))
                a.last_sent = entry.get("last_sent")
                a.lease_s = float(entry.get("lease_s") or 0.0)
                a.holders = {
                    str(r): float(u)
                    for r, u in dict(entry.get("holders", {})).items()
                    if r in active
                }
            for name, entry in dict(snapshot.get("overrides", {})).items():
                site, _, act = str(name).partition("/")
                if (site, act) in eng._actuators and entry.get("mode") in ("on", "off"):
                    eng._overrides[(site, act)] = Override(
                        entry["mode"],
                        entry.get("until"),
                        str(entry.get("who", "")),
                        float(entry.get("since", now)),
                    )
            eng._notify.restore(dict(snapshot.get("notify", {})))
            eng._notify_due = eng._notify.next_due() or math.inf
            eng._cmd_seq = int(snapshot.get("cmd_seq", 0))
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"unreadable snapshot: {exc}") from None
        eng._warmup_until = now + rules_file.defaults.max_staleness
        held = {str(k) for k in snapshot.get("held_back") or ()}
        eng._held_back = {k for k in eng._states if f"{k[0]}@{k[1]}" in held}
        return eng

    def reload(self, new_rules_file: RulesFile, now: float) -> list[Action]:
        """Swap in new rules; unchanged rules keep their state. Returns the resulting OFFs."""
        old_states, old_digests = self._states, self._digests
        old_actuators = self._actuators
        before = dict(self.__dict__)
        self._states = {}
        self._actuators = {}
        try:
            self._compile(new_rules_file)
        except Exception:
            self.__dict__.update(before)  # all or nothing: the old rules keep running
            raise
        kept: set[InstanceKey] = set()
        for key in self._instances:
            rid = key[0]
            if key in old_states and old_digests.get(rid) == self._digests[rid]:
                self._states[key] = old_states[key]
                kept.add(key)
        active = {rid for (rid, _), st in self._states.items() if st.phase == "active"}
        out: list[Action] = []
        for key, old in old_actuators.items():
            site, act = key
            old.holders = {r: u for r, u in old.holders.items() if r in active}
            if key in self._actuators:
                self._actuators[key] = old
                if key not in self._overrides and old.on and not old.live_holders(now):
                    old.on = False
                    out.append(SwitchOff(site, act, "rules reloaded, no rule holds it", None))
            elif old.on:
                out.append(SwitchOff(site, act, "actuator removed from the rules file", None))
        self._overrides = {k: o for k, o in self._overrides.items() if k in self._actuators}
        self.last_inputs = {k: v for k, v in self.last_inputs.items() if k in self._instances}
        self.last_values = {k: v for k, v in self.last_values.items() if k in self._instances}
        self._counts["reloads"] += 1
        return out
