"""What the engine and the gateways publish -> incident signals. Pure (clock injected).

The engine decides; this only reads its decisions off the ``{site}/events``
topic (:class:`gateway.protocol.Event`, emitted by
:mod:`rules.core.evaluator` and :mod:`rules.core.engine`):

=================  ===========================================================
event              signals (source = the rule id)
=================  ===========================================================
``on``             ``rule_active`` on; ``unsprayed`` on if the rule leases no
                   cannon or every cannon it leases is overridden off, else off
``off``            ``rule_active`` off; ``unsprayed`` on if it stopped for an
                   interlock with the value still beyond the threshold, else off
``interlock``      ``unsprayed`` on when the value is beyond the threshold (the
                   rule wants to spray and may not: frost, wind, rain, water)
``held_back``      ``unsprayed`` on (the engine: an interlock keeps the rule from
                   a value beyond its threshold)
``held_back_end``  ``unsprayed`` off, unless the rule started (then its ``on``
                   said whether it sprays)
``pending``        ``unsprayed`` off (the rule is about to spray)
``stale``          ``unsprayed`` off (the engine cannot see the dust)
``override``       re-judges ``unsprayed`` of the site's active rules leasing
                   that actuator (``off`` stops their spray, ``auto``/``on`` not)
``reload``         both off for the rules it names changed or removed (they
                   start over idle, without an ``off`` event)
=================  ===========================================================

Without the rules file the ``unsprayed`` judgement takes every rule as leasing
a cannon and an interlock event as meaning "beyond the threshold".

The engine's ``held_back`` / ``held_back_end`` events tell when an interlock
keeps a rule from a value beyond its threshold and when that is over (the
dust fell back to the clear level, the interlock let go, the rule started):
without them an idle rule behind an interlock whose dust falls would emit
nothing at all.

Gateways: the retained ``status`` (``offline`` also by the broker's last
will) is the ``gateway_offline`` signal, source = the gateway id.

Data completeness: every ``ok`` reading of a device is counted in the minute
it was read (a counter per minute: memory does not grow with the rate); once
a minute, for devices known for a whole window, :meth:`Deriver.tick` signals
``data_incomplete`` (source = the device id) when fewer than ``below_pct`` %
of the expected readings arrived in the last window, and again when it
recovers. Expected = window / the device's read interval (the reading's
``interval_s``, else the gateway status's ``poll_interval_s``), else the
configured interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.protocol import Event, GatewayStatus, Telemetry
from rules.core.config import RulesFile
from rules.core.evaluator import beyond
from rules.core.model import Rule
from rules.incidents.machine import Signal
from rules.incidents.settings import Completeness


@dataclass
class _Device:
    first_seen: float
    interval: float | None = None
    per_minute: dict[int, int] = field(default_factory=dict)  # epoch minute -> ok readings
    incomplete: bool | None = None  # last signalled


class Deriver:
    """Per-site memory the mapping needs (active rules, overrides, device counts)."""

    def __init__(
        self, rules: RulesFile | None = None, completeness: Completeness | None = None
    ) -> None:
        self.completeness = completeness or Completeness()
        self._rules: dict[str, Rule] = {}
        self.set_rules(rules)
        self._active: dict[tuple[str, str], float] = {}  # (site, rule) -> since
        self._overridden_off: set[tuple[str, str]] = set()  # (site, actuator)
        self._devices: dict[tuple[str, str], _Device] = {}
        self._judged_minute: int | None = None

    def set_rules(self, rules: RulesFile | None) -> None:
        self._rules = {r.id: r for r in rules.rules} if rules is not None else {}

    # -------------------------------------------------------------- events

    def _sprays(self, site: str, rule_id: str) -> bool:
        rule = self._rules.get(rule_id)
        if rule is None:
            return True
        leases = rule.actions.lease
        return any((site, a) not in self._overridden_off for a in leases)

    def _over(self, rule_id: str, value: object) -> bool:
        rule = self._rules.get(rule_id)
        if rule is None or not isinstance(value, int | float):
            return True
        return beyond(rule, float(value))

    def event(self, site: str, ev: Event) -> list[Signal]:
        ts = ev.ts / 1000
        data = ev.data or {}
        r = ev.rule
        if ev.kind == "override" and ev.actuator is not None:
            key = (site, ev.actuator)
            if data.get("mode") == "off":
                self._overridden_off.add(key)
            else:
                self._overridden_off.discard(key)
            out = []
            for (s, rule_id), _ in sorted(self._active.items()):
                rule = self._rules.get(rule_id)
                if s == site and (rule is None or ev.actuator in rule.actions.lease):
                    sprays = self._sprays(site, rule_id)
                    out.append(Signal(site, "unsprayed", rule_id, not sprays, ts, ev.text))
            return out
        if ev.kind == "reload":
            # a changed or removed rule starts over idle without an event of its own
            out = []
            for what in ("changed", "removed"):
                ids = data.get(what)
                for item in ids if isinstance(ids, list) else []:
                    rule_id = str(item)
                    self._active.pop((site, rule_id), None)
                    out.append(Signal(site, "rule_active", rule_id, False, ts, ev.text))
                    out.append(Signal(site, "unsprayed", rule_id, False, ts, ev.text))
            return out
        if r is None:
            return []
        if ev.kind == "on":
            self._active[(site, r)] = ts
            sprays = self._sprays(site, r)
            return [
                Signal(site, "rule_active", r, True, ts, ev.text),
                Signal(site, "unsprayed", r, not sprays, ts, ev.text),
            ]
        if ev.kind == "off":
            self._active.pop((site, r), None)
            reason = str(data.get("reason", ""))
            blocked = reason.startswith("interlock") and self._over(r, data.get("value"))
            return [
                Signal(site, "rule_active", r, False, ts, ev.text),
                Signal(site, "unsprayed", r, blocked, ts, ev.text),
            ]
        if ev.kind == "interlock":
            if self._over(r, data.get("value")):
                return [Signal(site, "unsprayed", r, True, ts, ev.text)]
            return []
        if ev.kind == "held_back":
            return [Signal(site, "unsprayed", r, True, ts, ev.text)]
        if ev.kind == "held_back_end":
            if (site, r) in self._active:
                return []  # it started: its `on` said whether it sprays
            return [Signal(site, "unsprayed", r, False, ts, ev.text)]
        if ev.kind in ("pending", "stale"):
            return [Signal(site, "unsprayed", r, False, ts, ev.text)]
        return []

    # ------------------------------------------------------------ gateways

    def status(self, site: str, gateway: str, st: GatewayStatus) -> list[Signal]:
        ts = st.ts / 1000
        for dev, health in st.devices.items():
            d = self._devices.get((site, dev))
            if d is None:
                d = self._devices[(site, dev)] = _Device(first_seen=ts)
            if health.poll_interval_s:
                d.interval = health.poll_interval_s
        offline = st.state == "offline"
        text = f"gateway {gateway} {st.state}"
        return [Signal(site, "gateway_offline", gateway, offline, ts, text)]

    # -------------------------------------------------------- completeness

    def telemetry(self, site: str, device: str, msg: Telemetry, now: float) -> None:
        d = self._devices.get((site, device))
        if d is None:
            d = self._devices[(site, device)] = _Device(first_seen=now)
        if msg.interval_s:
            d.interval = msg.interval_s
        if msg.status == "ok" and msg.values:
            minute = msg.ts // 60_000  # counted in the minute it was read (backlog too)
            d.per_minute[minute] = d.per_minute.get(minute, 0) + 1

    def tick(self, now: float) -> list[Signal]:
        """Judge completeness once a minute, over the last whole minutes of the window."""
        minute = int(now // 60)
        if minute == self._judged_minute:
            return []
        self._judged_minute = minute
        c = self.completeness
        whole = max(1, int(c.window // 60))
        first = minute - whole  # the window: minutes first .. minute - 1
        out = []
        for (site, dev), d in sorted(self._devices.items()):
            for old in [m for m in d.per_minute if m < first]:
                del d.per_minute[old]
            if now - d.first_seen < c.window + 60:
                continue  # not known for a whole window yet
            got = sum(n for m, n in d.per_minute.items() if m < minute)
            expected = whole * 60 / (d.interval or c.interval)
            pct = min(100.0, 100.0 * got / expected) if expected > 0 else 100.0
            incomplete = pct < c.below_pct
            if incomplete != d.incomplete:
                was_judged, d.incomplete = d.incomplete is not None, incomplete
                if not was_judged and not incomplete:
                    continue  # complete from the start: nothing to say
                text = f"{dev}: {pct:.0f} % of the expected readings in the last {whole} min"
                out.append(Signal(site, "data_incomplete", dev, incomplete, now, text))
        return out
