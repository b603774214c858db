"""The rule service itself: the engine, fed by MQTT messages, and its timers.

The decisions are made by the pure :class:`rules.core.engine.Engine`;
:class:`RulesService` is the imperative shell around it. It owns what a
message does: decoding, checks, the sink, the engine, and turning the
engine's actions into publishes (:mod:`rules.service.outbound`); and the
life of the service (:meth:`RulesService.run`): the session
(:mod:`rules.service.session`), the timers and the order of a stop.

- **Bad input** never crashes or sprays: undecodable payloads and topics
  (``decode_errors``, and ``refused_<reason>`` per
  ``gateway.protocol.REFUSAL_REASONS``: a wrong JSON type, a non-finite or
  out-of-range number, a string InfluxDB could not store as it is ...),
  readings stamped more than ``max_future_s`` ahead of our clock
  (``future_ts``: one such reading would otherwise make every later, correct
  reading of that device look out of order), telemetry for a site we do not
  serve (``other_site``, not stored either); the engine itself drops
  duplicates / out-of-order readings and leaves values outside their
  plausibility limits (``rules.core.limits``) out of its windows; those are
  stored flagged (``<metric>_flag=over_range`` over the upper limit, HJ 212
  ``T``, else ``fault``; counted as ``stored_<flag>``). Readings of devices no
  rule reads are still stored.
- **Backlog**: telemetry held back by the receive loop
  (:mod:`rules.service.receive`) is handled in one batch before anything
  else uses the engine (:meth:`RulesService.settle`).
- **Overrides** (:mod:`rules.service.override`): a request for a declared
  actuator of a served site, at most ``MAX_AGE_S`` old, goes to the engine;
  otherwise an ``override_refused`` event says why.
- **Timers**: ``engine.tick(now)`` every ``tick_interval`` (1 s); the state
  file (:mod:`rules.service.state`) every ``persist_interval``; the rules
  file (:mod:`rules.service.reload`) every ``watch_interval``; health
  (:mod:`rules.service.health`) every ``stats_interval``.
- **Stop**: SIGTERM/SIGINT -> timers stop, then an explicit OFF (reason
  ``engine stopping``) for every actuator the engine holds on, sent while the
  session is still up (the leases would run out on the agent anyway, but the
  cannons should stop now); the engine records those actuators as off, so the
  restarted engine switches them on again with its next renewal (within
  ``lease_s / 3``) if a rule still holds them -- rule timers resume as saved.
  Then state saved, notifications given a few seconds, sink flushed (unsent
  points go to its disk spool). A killed engine sends nothing: its leases run
  out.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import protocol as p
from rules.core.config import RulesFile
from rules.core.engine import (
    Action,
    DeviceIngest,
    EmitEvent,
    Engine,
)
from rules.core.limits import outside
from rules.core.partition import (
    PRESENCE_ROOT,
    WHOLE,
    Partition,
    own_rules,
    parse_partition,
    read_sites,
    rule_sites,
)
from rules.service import health, presence, reload
from rules.service.notify import Notifier
from rules.service.outbound import RELEASE_TIMEOUT_S, LineSink, Outbound, Publish
from rules.service.override import (
    EVENT_APPLIED,
    EVENT_REFUSED,
    MAX_AGE_S,
    OverrideRequest,
    decode_request,
    parse_override_topic,
)
from rules.service.session import Session, cancel_and_wait, default_client_id, subscriptions
from rules.service.state import STATE_VERSION, StateFile, state_file_name
from rules.sink.points import actuator_line, event_line, gateway_line, telemetry_line

log = logging.getLogger("rules.service")

WARN_EVERY_S = 60.0  # bad-input warnings: at most one per kind per minute
TOPIC_CACHE_MAX = 100_000
DEFER_MAX = 10_000  # held-back telemetry handled at once even if nobody evaluates
_OK = p.Status.OK


@dataclass
class ServiceOptions:
    tick_interval: float = 1.0
    persist_interval: float = 5.0
    persist_max_age: float = 60.0  # rewrite at least this often while counters move
    watch_interval: float = 1.0
    stats_interval: float = 10.0
    max_future_s: float = 300.0
    client_id: str | None = None  # default: mqtt.client_id or dustgate-rules-<host>[-pK]
    partition: Partition | None = None  # default: rules.yaml service.partition, else all
    engine_name: str | None = None  # the `engine` tag of the health points


def served_sites(rf: RulesFile, part: Partition = WHOLE) -> frozenset[str]:
    """Sites whose telemetry we take: ``sites:``, or every site a rule reads
    (its own, its background's and its interlocks'). For a partition, ``rf`` is
    already cut to it (:func:`rules.core.partition.own_rules`): its ``sites:``
    and every site its rules read, backgrounds on other partitions included."""
    if part.count == 1 and rf.sites is not None:
        return frozenset(rf.sites)
    return read_sites(rf) | frozenset(rf.sites or ())


def owned_sites(rf: RulesFile, part: Partition) -> frozenset[str]:
    """The sites this engine acts for and stores: every served site, or a
    partition's own (not the backgrounds it only reads)."""
    if part.count == 1:
        return served_sites(rf, part)
    return rule_sites(rf) | frozenset(rf.sites or ())


def partition_of(rf: RulesFile, options: ServiceOptions) -> Partition:
    """``--partition`` (options), else rules.yaml ``service.partition``, else all sites."""
    if options.partition is not None:
        return options.partition
    if rf.service.partition is not None:
        return parse_partition(rf.service.partition)
    return WHOLE


class RulesService:
    """The engine plus its MQTT, sink, notifier, persistence and reload shell.

    The synchronous methods (:meth:`on_message`, :meth:`on_tick`,
    :meth:`reload_text`, :meth:`apply`) take ``now`` and return the MQTT
    publishes to make; :meth:`run` is the asynchronous shell that does them.
    """

    def __init__(
        self,
        rules_path: Path,
        rules_file: RulesFile,
        options: ServiceOptions | None = None,
        *,
        sink: LineSink | None = None,
        notifier: Notifier | None = None,
        now: float | None = None,
        rules_text: str | None = None,
    ) -> None:
        self.rules_path = Path(rules_path)
        self.options = options or ServiceOptions()
        self.partition = partition_of(rules_file, self.options)
        self.full_rules = rules_file  # the whole file, as every engine reads it
        self.rules_file = rules_file = own_rules(rules_file, self.partition)
        self.sink = sink
        self.notifier = notifier if notifier is not None else Notifier(rules_file.notifiers)
        self.counters: Counter[str] = Counter()
        self.state = StateFile(
            Path(rules_file.state_dir) / state_file_name(self.partition),
            self.options.persist_max_age,
            self.partition,
        )
        self.client_id = (
            self.options.client_id or rules_file.mqtt.client_id or default_client_id(self.partition)
        )
        self.engine_name = self.options.engine_name or self.client_id
        self.served = served_sites(rules_file, self.partition)
        self.owned = owned_sites(rules_file, self.partition)
        # telemetry topic -> (site, device, the engine's ingest for that device or None);
        # cleared when the rules are reloaded (the engine's device bindings change)
        self._topic_cache: dict[str, tuple[str, str, DeviceIngest | None]] = {}
        # (site, device) -> read interval from the gateways' status, stored with readings
        # that do not carry their own (gateways from before telemetry had interval_s)
        self._intervals: dict[tuple[str, str], float] = {}
        self._warned: dict[str, tuple[float, int]] = {}
        t = time.time() if now is None else now
        # telemetry held back during a backlog, undecoded (see `engine`): where, payload, now
        self._deferred: list[tuple[tuple[str, str, DeviceIngest | None], bytes, float]] = []
        self._engine, old_subscriptions = self.state.load(rules_file, t)
        self.watch = reload.FileWatch(self.rules_path, rules_text)
        self.outbound = Outbound(self.counters, sink, self.notifier, self.engine_name)
        self.session = Session(self, old_subscriptions)
        self.rate = health.Rate(time.monotonic())
        self._last_summary = time.monotonic()

    @property
    def connected(self) -> asyncio.Event:
        """Set while the broker session is up."""
        return self.session.connected

    # ---------------------------------------------------------------- engine

    @property
    def engine(self) -> Engine:
        """The rule engine as it is (telemetry held back during a backlog may still
        wait: :meth:`settle`)."""
        return self._engine

    def settle(self) -> Engine:
        """The rule engine with every held-back reading handled first: whatever reads
        or changes the engine (a tick, an override, a reload, a snapshot, counters)
        goes through here, so it sees the readings in the order they came."""
        if self._deferred:
            self._store_deferred()
        return self._engine

    def _store_deferred(self) -> None:
        """Decode, check, sink and store the telemetry held back during a backlog, in
        the order it came (one tight loop: see :mod:`rules.service.receive`)."""
        deferred, self._deferred = self._deferred, []
        handle = self._telemetry_message
        for where, payload, now in deferred:
            try:
                handle(where, payload, now, False)
            except Exception:  # a bug must not cost the other readings
                self.counters["internal_errors"] += 1
                log.exception("storing a deferred reading failed")

    def rules_changed(self, new: RulesFile, now: float) -> list[Action]:
        """Swap in a new, valid rules file (unchanged rules keep their state)."""
        self.full_rules = new
        new = own_rules(new, self.partition)
        actions = self.settle().reload(new, now)
        self._topic_cache.clear()  # the engine's per-device ingest bindings are new
        self.rules_file = new
        self.served = served_sites(new, self.partition)
        self.owned = owned_sites(new, self.partition)
        self.notifier.update(new.notifiers)
        self.counters["reloads"] += 1
        return actions

    def reload_text(self, text: str, now: float) -> list[Publish]:
        """Validate ``text`` as the new rules file; swap it in or report why not."""
        return reload.reload_text(self, text, now)

    # ------------------------------------------------------------ state file

    def state_snapshot(self, now: float) -> dict[str, Any]:
        """The state file's content as plain data (built on the event loop: consistent)."""
        snap = self.settle().snapshot()
        counters = snap.pop("counters", {})  # informative only: not a reason to rewrite
        return {
            "version": STATE_VERSION,
            "saved_at": now,
            "rules_file": str(self.rules_path),
            "subscriptions": self.subscriptions(),
            "counters": counters,
            "engine": snap,
        }

    def save_state_due(self, now: float, force: bool = False) -> bytes | None:
        """The state file's bytes if they are due to be written, else None."""
        return self.state.bytes_due(self.state_snapshot(now), force)

    def save_state(self, now: float) -> None:
        """Write the state now (blocking; used on shutdown)."""
        self.state.save(self.state_snapshot(now))

    # --------------------------------------------------------- subscriptions

    def subscriptions(self) -> list[str]:
        return subscriptions(self.rules_file, self.partition, self.served, self.owned)

    def resubscribe(self) -> None:
        """End the broker session and start one with the current subscriptions."""
        self.session.resubscribe()

    # ---------------------------------------------------------------- inbound

    def _warn(self, kind: str, now: float, fmt: str, *args: object) -> None:
        """Log bad input at most once per kind per minute, with the count in between."""
        last, skipped = self._warned.get(kind, (-1e18, 0))
        if now - last >= WARN_EVERY_S:
            more = f" (+{skipped} more since the last warning)" if skipped else ""
            log.warning(fmt + more, *args)
            self._warned[kind] = (now, 0)
        else:
            self._warned[kind] = (last, skipped + 1)

    def on_message(
        self, topic: str, payload: bytes, now: float, evaluate: bool = True
    ) -> list[Publish]:
        """Handle one inbound message; never raises for bad input.

        ``evaluate=False`` holds a telemetry message of a known topic back, to be
        handled without evaluating the rules that read it once the engine is next
        used (the caller runs :meth:`on_tick` soon after: backlog coalescing).
        """
        self.counters["messages"] += 1
        where = self._topic_cache.get(topic)  # the hot path: a telemetry topic seen before
        if where is not None and not evaluate:
            # a backlog: handled in one batch before the next evaluation (see `engine`)
            deferred = self._deferred
            deferred.append((where, payload, now))
            if len(deferred) >= DEFER_MAX:
                self._store_deferred()
            return []
        if self._deferred:  # whatever comes next comes after them (sink lines included)
            self._store_deferred()
        if where is None:
            if not topic.endswith("/telemetry"):
                return self._other_message(topic, payload, now)
            where = self._telemetry_topic(topic)
            if where is None:
                self.counters["decode_errors"] += 1
                self.counters["refused_topic"] += 1
                self._warn("topic", now, "ignored message on malformed topic %r", topic[:200])
                return []
        return self._telemetry_message(where, payload, now, evaluate)

    def _telemetry_message(
        self,
        where: tuple[str, str, DeviceIngest | None],
        payload: bytes,
        now: float,
        evaluate: bool,
    ) -> list[Publish]:
        try:
            msg = p.decode(p.Telemetry, payload)
        except p.ProtocolError as exc:
            self.counters["decode_errors"] += 1
            self.counters[f"refused_{exc.reason}"] += 1
            self._warn(
                "telemetry",
                now,
                "dropped undecodable telemetry of %s/%s: %s",
                where[0],
                where[1],
                exc,
            )
            return []
        return self.on_telemetry(where[0], where[1], msg, now, evaluate, where[2])

    def _other_message(self, topic: str, payload: bytes, now: float) -> list[Publish]:
        try:
            if topic.endswith(f"/{p.EVENTS_SEGMENT}") or topic.endswith(("/state", "/status")):
                return self._other(p.parse_topic(topic), payload, now)
            if topic.endswith("/override"):
                site, actuator = parse_override_topic(topic)
                return self.on_override(site, actuator, decode_request(payload), now)
            if topic.startswith(PRESENCE_ROOT + "/"):
                presence.on_presence(self, topic, payload)
                return []
            raise p.ProtocolError(f"unexpected topic {topic!r}")
        except p.ProtocolError as exc:
            self.counters["decode_errors"] += 1
            self.counters[f"refused_{exc.reason}"] += 1
            self._warn("other", now, "dropped message on %s: %s", topic[:200], exc)
            return []

    def _telemetry_topic(self, topic: str) -> tuple[str, str, DeviceIngest | None] | None:
        """(site, device, ingest) of a valid telemetry topic, remembered; None if malformed."""
        try:
            t = p.parse_topic(topic)
        except p.ProtocolError:
            return None
        if t.kind != "telemetry" or not t.name:
            return None
        cache = self._topic_cache
        if len(cache) >= TOPIC_CACHE_MAX:  # bounded even if someone sprays random device ids
            cache.clear()
        where = cache[topic] = (t.site, t.name, self._engine.device_ingest(t.site, t.name))
        return where

    def on_telemetry(
        self,
        site: str,
        device: str,
        msg: p.Telemetry,
        now: float,
        evaluate: bool = True,
        ingest: DeviceIngest | None = None,
    ) -> list[Publish]:
        """One decoded reading, the second half of :meth:`on_message` (which has handled
        any telemetry held back before it). ``ingest``: the engine's ingest bound to
        this device (from :meth:`Engine.device_ingest`, cached per topic), else looked up."""
        if site not in self.served:
            self.counters["other_site"] += 1
            self._warn("site", now, "dropped telemetry from %s/%s: site not served", site, device)
            return []
        if msg.ts > (now + self.options.max_future_s) * 1000.0:
            self.counters["future_ts"] += 1
            self._warn(
                "future",
                now,
                "dropped reading of %s/%s stamped %.0fs in the future (clock wrong?)",
                site,
                device,
                msg.ts / 1000.0 - now,
            )
            return []
        sink = self.sink
        if sink is not None and site in self.owned:
            stored = msg
            marks = outside(msg.values, self._engine.limits)  # implausible: stored flagged
            if marks:
                stored = self._flagged(msg, marks)
            iv = None if msg.interval_s is not None else self._intervals.get((site, device))
            sink.add(telemetry_line(site, device, stored, interval_s=iv))
        flags = msg.flags
        status = "ok" if msg.status is _OK else msg.status.value
        flag_map = {k: v.value for k, v in flags.items()} if flags else None
        if ingest is not None:
            actions = ingest(msg.ts / 1000.0, msg.seq, msg.values, now, status, flag_map, evaluate)
        else:  # a device no rule reads (counted by the engine), or not cached
            actions = self._engine.ingest_values(
                site, device, msg.ts / 1000.0, msg.seq, msg.values, now, status, flag_map, evaluate
            )
        return self.apply(actions, now) if actions else []

    def _flagged(self, msg: p.Telemetry, marks: dict[str, p.Status]) -> p.Telemetry:
        """``msg`` with its implausible values flagged (where the gateway said ok)."""
        flags = dict(msg.flags or {})
        for m, flag in marks.items():
            if msg.metric_status(m) is _OK:
                flags[m] = flag
                self.counters[f"stored_{flag.value}"] += 1
        return msg.model_copy(update={"flags": flags})

    def _other(self, t: p.Topic, payload: bytes, now: float) -> list[Publish]:
        sink = self.sink
        if t.kind == "state" and t.name:
            st = p.decode(p.ActuatorState, payload)
            self.counters["states"] += 1
            log.debug("%s/%s is %s (%s)", t.site, t.name, st.state, st.source)
            if sink is not None:
                sink.add(actuator_line(t.site, t.name, st))
        elif t.kind == "status" and t.name:
            gs = p.decode(p.GatewayStatus, payload)
            self.counters["statuses"] += 1
            if gs.state == "offline":
                log.warning("gateway %s of site %s is offline", t.name, t.site)
            if sink is not None:
                sink.add(gateway_line(t.site, t.name, gs))
            if len(self._intervals) >= TOPIC_CACHE_MAX:  # bounded whatever ids come in
                self._intervals.clear()
            for dev, health_ in gs.devices.items():
                if health_.poll_interval_s and health_.poll_interval_s > 0:
                    self._intervals[(t.site, dev)] = health_.poll_interval_s
        elif t.kind == "events":
            ev = p.decode(p.Event, payload)
            self.counters["events_in"] += 1
            if sink is not None:
                sink.add(event_line(t.site, ev))
        else:
            raise p.ProtocolError(f"unexpected {t.kind} message")
        return []

    # ------------------------------------------------------------- override

    def on_override(
        self, site: str, actuator: str, req: OverrideRequest, now: float
    ) -> list[Publish]:
        if site not in self.owned:
            return []  # another engine's site
        age = now - req.ts / 1000.0
        why = ""
        if age > MAX_AGE_S:
            why = f"request is {age:.0f}s old (limit {MAX_AGE_S:g}s)"
        elif self.rules_file.actuator(site, actuator) is None:
            why = f"actuator {site}/{actuator} is not declared in {self.rules_path.name}"
        if why:
            self.counters["override_refused"] += 1
            log.warning(
                "override %s of %s/%s by %s refused: %s", req.mode, site, actuator, req.who, why
            )
            ev = p.Event(
                ts=p.now_ms(now),
                kind=EVENT_REFUSED,
                text=f"override {req.mode} of {actuator} by {req.who} refused: {why}"[:1000],
                severity="warning",
                actuator=actuator,
                data={"request": req.id, "mode": req.mode, "who": req.who, "why": why},
            )
            return self.apply([EmitEvent(site, ev)], now)
        until = None if req.mode == "auto" or req.for_s is None else now + req.for_s
        try:
            actions = self.settle().set_override(site, actuator, req.mode, until, req.who, now)
        except (KeyError, ValueError) as exc:  # raced with a reload
            self.counters["override_refused"] += 1
            ev = p.Event(
                ts=p.now_ms(now),
                kind=EVENT_REFUSED,
                text=f"override refused: {exc}"[:1000],
                severity="warning",
                actuator=actuator,
                data={"request": req.id, "why": str(exc)[:200]},
            )
            return self.apply([EmitEvent(site, ev)], now)
        self.counters["overrides"] += 1
        log.warning(
            "override: %s/%s %s%s by %s%s",
            site,
            actuator,
            req.mode,
            f" for {req.for_s:g}s" if until is not None and req.for_s else "",
            req.who,
            f" ({req.reason})" if req.reason else "",
        )
        tagged: list[Action] = []
        for a in actions:
            if isinstance(a, EmitEvent) and a.event.kind == EVENT_APPLIED:
                data = dict(a.event.data or {})
                data["request"] = req.id
                if until is not None:
                    data["until"] = p.now_ms(until)
                if req.reason:
                    data["reason"] = req.reason
                a = EmitEvent(a.site, a.event.model_copy(update={"data": data}))
            tagged.append(a)
        return self.apply(tagged, now, override=True)

    # ---------------------------------------------------------------- actions

    def on_tick(self, now: float) -> list[Publish]:
        actions = self.settle().tick(now)
        return self.apply(actions, now) if actions else []

    def apply(self, actions: Iterable[Action], now: float, override: bool = False) -> list[Publish]:
        """Turn engine actions into publishes (and sink lines, notifications)."""
        return self.outbound.apply(actions, now, override)

    # --------------------------------------------------------------- the shell

    async def _every(self, interval: float, what: str, fn: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("%s failed", what)

    async def _tick(self) -> None:
        self.outbound.send(self.on_tick(time.time()))

    async def _persist(self) -> None:
        # the snapshot is taken here, serialising and fsync happen off the event loop
        await asyncio.to_thread(self.state.persist, self.state_snapshot(time.time()))

    async def _watch(self) -> None:
        self.outbound.send(reload.check_reload(self, time.time()))

    async def _stats(self) -> None:
        now = time.time()
        line = health.stats_line(self, now)
        if self.sink is not None:
            self.sink.add(line)
        mono = time.monotonic()
        if mono - self._last_summary >= health.SUMMARY_EVERY_S:
            self._last_summary = mono
            log.info("engine: %s", health.summary(self))

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then save state and flush."""
        o = self.options
        if self.sink is not None:
            await self.sink.start()
        await self.notifier.start()
        # The rules, windows and config are long-lived: moved out of the cyclic
        # collector's generations, full collections no longer rescan them on
        # the hot path (they cost several microseconds per message otherwise).
        gc.collect()
        gc.freeze()
        tasks = [
            asyncio.create_task(self.session.run(stop), name="mqtt"),
            asyncio.create_task(self._every(o.tick_interval, "tick", self._tick), name="tick"),
            asyncio.create_task(
                self._every(o.persist_interval, "saving state", self._persist), name="persist"
            ),
            asyncio.create_task(
                self._every(o.watch_interval, "rules file watch", self._watch), name="watch"
            ),
            asyncio.create_task(self._every(o.stats_interval, "stats", self._stats), name="stats"),
        ]
        log.info(
            "rule engine %s: %d rules for sites %s from %s",
            self.engine_name,
            len(self.rules_file.rules),
            ", ".join(sorted(self.served)) or "(none)",
            self.rules_path,
        )
        try:
            await stop.wait()
        finally:
            log.info("stopping: saving state, flushing")
            connection, timers = tasks[0], tasks[1:]
            # no tick may lease anything between the OFFs and the end of the session
            await cancel_and_wait(timers)
            if self.outbound.publishing:
                await asyncio.wait(list(self.outbound.publishing), timeout=2.0)
            self.session.release.set()  # the session sends the OFFs and ends (or is not up)
            await asyncio.wait([connection], timeout=RELEASE_TIMEOUT_S + 2.0)
            await cancel_and_wait([connection])
            try:
                self.save_state(time.time())
            except OSError as exc:
                log.error("cannot save state to %s: %s", self.state.path, exc)
            await self.notifier.close(timeout=3.0)
            if self.sink is not None:
                await self.sink.close()
            log.info("stopped: %s", health.summary(self))
