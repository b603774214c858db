"""The board's picture of the district, built from what the broker says. Pure.

:class:`Live` takes decoded messages with the time they arrived
(:meth:`Live.on_message`: retained gateway ``status`` and actuator ``state``,
``events``, ``telemetry``) and the rules file (:meth:`Live.set_rules`: which
rule governs each site's PM10 / PM2.5 / TSP / noise, with its ON and clear
thresholds). :meth:`Live.site_view` answers what the board shows for a site
at a given time; every entry point returns the site it changed, so the shell
can push just that site to open pages.

A site's state, first match wins:

``offline``      its gateway's retained status says offline (LWT), or nothing
                 arrived from the site for ``stale_after``
``spraying``     an actuator of the site is on
``interlocked``  a governing rule's last transition was an ``interlock`` event
                 and its metric is beyond the ON threshold
``pending``      a governing rule's last transition was ``pending`` (on-delay)
``over``         a governed metric is beyond its ON threshold, no rule acting
``stale``        no governed metric has a fresh reading (``stale_after``)
``ok``

Data completeness follows the report's definition (DESIGN, "What counts as
valid data"): the time valid readings stand for (each reading's
``interval_s``; where a reading does not carry it, the device's poll
interval from the gateway's status, else the median gap seen) over the time
watched (at least two minutes: until then none is shown), at most the last
hour. A valid reading has status ``ok`` and no
flagged metric. It is summed per device in one-minute buckets, so memory is
60 numbers per device whatever the rate.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from gateway import protocol as p
from rules.core.config import RulesFile

BOARD_METRICS: tuple[str, ...] = ("pm10", "pm25", "tsp", "noise")
METRIC_LABELS = {"pm10": "PM10", "pm25": "PM2.5", "tsp": "TSP", "noise": "Noise"}
STATES: tuple[str, ...] = (
    "ok", "pending", "spraying", "interlocked", "over", "stale", "offline",
)  # fmt: skip
RULE_TRANSITIONS = frozenset({"pending", "on", "off", "interlock", "stale", "max_on"})
EVENTS_KEPT = 50
RELOADS_KEPT = 20
COMPLETENESS_TTL_S = 10.0
MIN_WATCHED_S = 120.0  # completeness is shown once a device has been watched this long


@dataclass(slots=True)
class Governing:
    rule: str
    above: bool
    threshold: float
    clear: float
    devices: tuple[str, ...]


@dataclass(slots=True)
class DeviceLive:
    ts: float = 0.0  # sensor read time (s)
    arrived: float = 0.0
    values: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    minute_covered: list[float] = field(default_factory=lambda: [0.0] * 60)  # seconds
    minute_tags: list[int] = field(default_factory=lambda: [-1] * 60)
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=15))
    first_seen: float = 0.0


@dataclass(slots=True)
class SiteLive:
    site: str
    devices: dict[str, DeviceLive] = field(default_factory=dict)
    gateways: dict[str, p.GatewayStatus] = field(default_factory=dict)
    actuators: dict[str, p.ActuatorState] = field(default_factory=dict)
    events: deque[p.Event] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    rule_phase: dict[str, str] = field(default_factory=dict)  # rule -> last transition kind
    last_heard: float = 0.0


@dataclass(frozen=True, slots=True)
class MetricView:
    metric: str
    label: str
    value: float | None
    rule: str | None
    threshold: float | None
    clear: float | None
    beyond: bool


@dataclass(frozen=True, slots=True)
class ActuatorView:
    id: str
    on: bool
    source: str
    lease_left_s: float | None
    since: float
    reason: str


@dataclass(frozen=True, slots=True)
class SiteView:
    site: str
    state: str
    metrics: tuple[MetricView, ...]
    actuators: tuple[ActuatorView, ...]
    gateway_online: bool | None
    backlog: int | None
    completeness: float | None  # 0..1, last hour
    last_heard: float
    devices: int


class Live:
    def __init__(self, stale_after: float = 120.0) -> None:
        self.stale_after = stale_after
        self.sites: dict[str, SiteLive] = {}
        self.governing: dict[str, dict[str, Governing]] = {}
        self.site_rules: dict[str, list[str]] = {}
        self.reloads: deque[tuple[str, p.Event]] = deque(maxlen=RELOADS_KEPT)
        self.counters: dict[str, int] = {"messages": 0, "bad_messages": 0}
        self.order: list[str] | None = None
        self._completeness: dict[str, tuple[float, float | None]] = {}

    # ------------------------------------------------------------ inputs

    def set_rules(self, rf: RulesFile) -> None:
        gov: dict[str, dict[str, Governing]] = {}
        per_site: dict[str, list[str]] = {}
        for rule in rf.rules:
            for site in rule.site:
                per_site.setdefault(site, []).append(rule.id)
                # a rule on a difference to a background is not comparable with the reading
                if not rule.enabled or rule.metric not in BOARD_METRICS or rule.relative_to:
                    continue
                g = Governing(
                    rule.id, rule.is_above, rule.threshold, rule.clear_level, tuple(rule.devices)
                )
                have = gov.setdefault(site, {}).get(rule.metric)
                # several rules on one metric: the strictest (lowest ON threshold) governs
                if have is None or (g.above and g.threshold < have.threshold):
                    gov[site][rule.metric] = g
        self.governing = gov
        self.site_rules = per_site
        for site in per_site:
            self._site(site)

    def _site(self, site: str) -> SiteLive:
        s = self.sites.get(site)
        if s is None:
            s = self.sites[site] = SiteLive(site)
        return s

    def on_message(self, topic: str, payload: bytes, now: float) -> str | None:
        """Take one message; return the site it changed (None: not ours or bad)."""
        self.counters["messages"] += 1
        try:
            t = p.parse_topic(topic)
            if t.kind == "telemetry":
                self.on_telemetry(t.site, t.name or "", p.decode(p.Telemetry, payload), now)
            elif t.kind == "status":
                if not payload:  # a cleared retained status
                    self._site(t.site).gateways.pop(t.name or "", None)
                else:
                    st = p.decode(p.GatewayStatus, payload)
                    site = self._site(t.site)
                    site.gateways[t.name or ""] = st
                    site.last_heard = max(site.last_heard, now)
            elif t.kind == "state":
                if not payload:
                    self._site(t.site).actuators.pop(t.name or "", None)
                else:
                    self._site(t.site).actuators[t.name or ""] = p.decode(p.ActuatorState, payload)
                    self._site(t.site).last_heard = max(self._site(t.site).last_heard, now)
            elif t.kind == "events":
                self.on_event(t.site, p.decode(p.Event, payload))
            else:
                return None
        except p.ProtocolError:
            self.counters["bad_messages"] += 1
            return None
        return t.site

    def on_telemetry(self, site: str, device: str, msg: p.Telemetry, now: float) -> None:
        s = self._site(site)
        d = s.devices.get(device)
        if d is None:
            d = s.devices[device] = DeviceLive(first_seen=now)
        ts = msg.ts / 1000.0
        if d.ts and ts > d.ts:
            d.gaps.append(ts - d.ts)
        if ts >= d.ts:
            d.ts = ts
            d.values = dict(msg.values)
            d.status = msg.status.value
        d.arrived = now
        s.last_heard = max(s.last_heard, now)
        if msg.status == p.Status.OK and msg.values and not msg.flags:
            interval = msg.interval_s or self._interval(s, device, d)
            if interval is None:
                return
            minute = int(ts // 60)
            i = minute % 60
            if d.minute_tags[i] != minute:
                d.minute_tags[i] = minute
                d.minute_covered[i] = 0.0
            d.minute_covered[i] += interval

    @staticmethod
    def _interval(s: SiteLive, device: str, d: DeviceLive) -> float | None:
        for gw in s.gateways.values():
            h = gw.devices.get(device)
            if h is not None and h.poll_interval_s:
                return float(h.poll_interval_s)
        return statistics.median(d.gaps) if d.gaps else None

    def on_event(self, site: str, event: p.Event) -> None:
        s = self._site(site)
        s.events.append(event)
        if event.kind in ("reload", "reload_error"):
            self.reloads.append((site, event))
        if event.rule is not None and event.kind in RULE_TRANSITIONS:
            s.rule_phase[event.rule] = event.kind

    # ------------------------------------------------------------ views

    def site_ids(self) -> list[str]:
        if self.order is not None:
            rest = sorted(set(self.sites) - set(self.order))
            return [*self.order, *rest]
        return sorted(self.sites)

    def completeness(self, site: str, now: float) -> float | None:
        """Share of the expected ok readings that came in the last hour (cached for
        :data:`COMPLETENESS_TTL_S`: it moves slowly, the board asks for it often)."""
        cached = self._completeness.get(site)
        if cached is not None and 0 <= now - cached[0] < COMPLETENESS_TTL_S:
            return cached[1]
        value = self._completeness_now(site, now)
        self._completeness[site] = (now, value)
        return value

    def _completeness_now(self, site: str, now: float) -> float | None:
        s = self.sites.get(site)
        if s is None or not s.devices:
            return None
        minute_now = int(now // 60)
        watched = 0.0
        covered = 0.0
        for d in s.devices.values():
            if now - d.first_seen < MIN_WATCHED_S:
                continue  # a figure from the first seconds would be noise
            span = min(3600.0, now - d.first_seen)
            got = sum(
                c
                for c, tag in zip(d.minute_covered, d.minute_tags, strict=True)
                if minute_now - 60 < tag <= minute_now
            )
            watched += span
            covered += min(got, span)  # a device reading faster than it says makes up no gap
        if watched <= 0:
            return None
        return min(1.0, covered / watched)

    def site_view(self, site: str, now: float) -> SiteView:
        s = self.sites.get(site) or SiteLive(site)
        gov = self.governing.get(site, {})
        fresh_cut = now - self.stale_after
        metrics = []
        any_fresh = False
        any_beyond = False
        for metric in BOARD_METRICS:
            g = gov.get(metric)
            value: float | None = None
            for name, d in s.devices.items():
                if g is not None and name not in g.devices:
                    continue
                if d.arrived < fresh_cut or d.status != "ok":
                    continue
                v = d.values.get(metric)
                if v is not None and (value is None or v > value):
                    value = v
            if value is not None and (g is not None or metric in ("pm10", "pm25")):
                any_fresh = True
            beyond = (
                value is not None
                and g is not None
                and (value > g.threshold if g.above else value < g.threshold)
            )
            any_beyond = any_beyond or beyond
            metrics.append(
                MetricView(
                    metric,
                    METRIC_LABELS[metric],
                    value,
                    g.rule if g else None,
                    g.threshold if g else None,
                    g.clear if g else None,
                    beyond,
                )
            )
        acts = tuple(
            ActuatorView(
                name,
                st.state == "on",
                st.source,
                max(0.0, st.lease_until / 1000.0 - now)
                if st.state == "on" and st.lease_until is not None
                else None,
                st.since / 1000.0,
                st.reason,
            )
            for name, st in sorted(s.actuators.items())
        )
        online: bool | None = None
        backlog: int | None = None
        if s.gateways:
            online = all(g.state == "online" for g in s.gateways.values())
            backlog = sum(g.backlog for g in s.gateways.values())
        phases = {s.rule_phase.get(g.rule) for g in gov.values()}
        if online is False or (s.last_heard and s.last_heard < fresh_cut) or not s.last_heard:
            state = "offline"
        elif any(a.on for a in acts):
            state = "spraying"
        elif "interlock" in phases and any_beyond:
            state = "interlocked"
        elif "pending" in phases and any_beyond:
            state = "pending"
        elif any_beyond:
            state = "over"
        elif not any_fresh:
            state = "stale"
        else:
            state = "ok"
        return SiteView(
            site,
            state,
            tuple(metrics),
            acts,
            online,
            backlog,
            self.completeness(site, now),
            s.last_heard,
            len(s.devices),
        )

    def events(self, site: str) -> list[p.Event]:
        s = self.sites.get(site)
        return list(reversed(s.events)) if s is not None else []

    def last_reload(self) -> tuple[str, p.Event] | None:
        return self.reloads[-1] if self.reloads else None
