"""The shell around the incident machine: MQTT in, SQLite and InfluxDB out, a clock.

:class:`IncidentService` applies every message and every tick to the
:class:`~rules.incidents.machine.Book` and commits the step at once (with the
notifications it causes) before taking the next; the
:class:`~rules.incidents.dispatch.Dispatcher` sends those in the background.
The console calls :meth:`IncidentService.acknowledge`, :meth:`note` and
:meth:`resolve` on the same object (its pages), so inspector actions and
engine events go through one machine in one process.

Subscriptions (a persistent MQTT session, so the engine's events sent while
this process restarts are delivered when it is back): ``{site}/events`` and
the retained gateway ``status`` at QoS 1, telemetry at QoS 0 (only counted
for data completeness; not queued for us while we are away).

``dustgate incidents --config incidents.yaml`` runs it alone (see
:mod:`rules.incidents.settings`); the console runs it inside.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiomqtt

from gateway import protocol as p
from gateway.backoff import Backoff
from gateway.configfile import ConfigError, MqttSettings
from gateway.mqttclient import make_client
from rules.core.config import RulesFile, load_rules_file
from rules.incidents.dispatch import Dispatcher, Sender, notifications_for
from rules.incidents.machine import Book, Changed, Conflict, Effect, Incident, Notify, Signal
from rules.incidents.points import incident_line
from rules.incidents.ranking import SiteIncidents, figures, over_closed, spans_of
from rules.incidents.settings import IncidentsSettings
from rules.incidents.signals import Deriver
from rules.incidents.store import IncidentStore, StaleWrite
from rules.service.notify import post

log = logging.getLogger(__name__)

CLIENT_ID = "dustgate-incidents"
TICK_S = 1.0


class LineSink(Protocol):
    def add(self, line: str | None) -> None: ...


class IncidentService:
    """See the module docstring. ``clock`` is wall-clock seconds (a test moves it)."""

    def __init__(
        self,
        settings: IncidentsSettings,
        store: IncidentStore,
        *,
        rules: RulesFile | None = None,
        rules_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        sender: Sender = post,
        sink: LineSink | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.rules_path = rules_path
        self.store = store
        self.clock = clock
        self.sink = sink
        self.book = store.load_book(settings.policies())
        self.deriver = Deriver(rules, settings.completeness)
        self.dispatcher = Dispatcher(store, settings, clock=clock, sender=sender, rand=rand)
        self.counters: Counter[str] = Counter()
        self.connected = asyncio.Event()
        # called with a site whose incidents changed (the console's board listens)
        self.listeners: list[Callable[[str], None]] = []

    # ------------------------------------------------------------- inputs

    def handle(self, topic: str, payload: bytes) -> None:
        """One MQTT message. Bad input is counted and logged, never raised."""
        try:
            t = p.parse_topic(topic)
            now = self.clock()
            if t.kind == "events":
                ev = p.decode(p.Event, payload)
                if ev.kind == "reload":
                    self._reload_rules()
                sigs = self.deriver.event(t.site, ev)
            elif t.kind == "status" and t.name is not None:
                if not payload:
                    return  # a cleared retained status
                sigs = self.deriver.status(t.site, t.name, p.decode(p.GatewayStatus, payload))
            elif t.kind == "telemetry" and t.name is not None:
                self.deriver.telemetry(t.site, t.name, p.decode(p.Telemetry, payload), now)
                return
            else:
                return
        except p.ProtocolError as exc:
            self.counters["bad_messages"] += 1
            log.warning("incidents: ignoring a message on %s: %s", topic, exc)
            return
        self.counters["messages"] += 1
        self.signals(sigs)

    def _reload_rules(self) -> None:
        """The engine reloaded its rules: read them again (which rule leases what)."""
        if self.rules_path is None:
            return
        try:
            self.deriver.set_rules(load_rules_file(self.rules_path))
        except (OSError, ConfigError) as exc:
            self.counters["rules_unreadable"] += 1
            log.warning("incidents: rules file %s not read again: %s", self.rules_path, exc)

    def signals(self, sigs: list[Signal]) -> None:
        for sig in sigs:
            self._step(functools.partial(self._signal, sig))

    def _signal(self, sig: Signal, book: Book) -> list[Effect]:
        return book.signal(sig, self.clock())

    def tick(self) -> None:
        """Timers: completeness, causes held long enough, overdue incidents."""
        self.signals(self.deriver.tick(self.clock()))
        self._step(lambda b: b.tick(self.clock()))

    # ----------------------------------------------------- inspector actions

    def acknowledge(self, incident_id: int, who: str, version: int) -> Incident:
        return self._act(
            incident_id, lambda b: b.acknowledge(incident_id, who, version, self.clock())
        )

    def note(self, incident_id: int, who: str, text: str, version: int) -> Incident:
        return self._act(
            incident_id, lambda b: b.note(incident_id, who, text, version, self.clock())
        )

    def resolve(self, incident_id: int, who: str, version: int, text: str = "") -> Incident:
        return self._act(
            incident_id, lambda b: b.resolve(incident_id, who, version, self.clock(), text)
        )

    def _act(self, incident_id: int, fn: Callable[[Book], list[Effect]]) -> Incident:
        """Raises ActionError, or Conflict carrying the incident as it is now (another
        inspector, possibly through another process, acted first)."""
        try:
            effects = self._step(fn, retry=False)
        except StaleWrite:
            current = self.store.incident(incident_id)
            if current is None:
                raise
            raise Conflict(current) from None
        changed = [e.incident for e in effects if isinstance(e, Changed)]
        return changed[-1]

    # --------------------------------------------------------------- steps

    def _step(self, fn: Callable[[Book], list[Effect]], retry: bool = True) -> list[Effect]:
        """Apply ``fn`` to the book and commit; on a write from elsewhere, reload the
        book from the store (the store wins) and, for engine input, apply it again."""
        for attempt in (1, 2):
            effects = fn(self.book)
            try:
                self._commit(effects)
                return effects
            except StaleWrite:
                self.counters["stale_writes"] += 1
                self.book = self.store.load_book(self.settings.policies())
                if not retry or attempt == 2:
                    raise
            except sqlite3.Error:
                # the disk did not take the step: forget it in memory too (the store
                # stays the truth); the caller hears of it, the input is counted lost
                self.counters["store_errors"] += 1
                self.book = self.store.load_book(self.settings.policies())
                raise
        return []

    def _commit(self, effects: list[Effect]) -> None:
        changes = [e for e in effects if isinstance(e, Changed)]
        rows = []
        missing = []
        for e in effects:
            if isinstance(e, Notify):
                mine = notifications_for(e, self.settings)
                rows += mine
                if not mine:
                    missing.append(e.level)
        self.store.commit(self.book, changes, rows)
        for level in missing:  # nobody to tell at that level: counted, visible on the page
            self.counters[f"no_contact_level_{level}"] += 1
        if rows:
            self.dispatcher.wake()
        for site in sorted({ch.incident.site for ch in changes}):
            for listener in self.listeners:
                listener(site)
        for ch in changes:
            self.counters[f"incident_{ch.kind}"] += 1
            log.info(
                "incident %d %s: %s %s",
                ch.incident.id,
                ch.kind,
                ch.incident.site,
                ch.incident.cause,
            )
            if self.sink is not None:
                over = self._over_s(ch) if ch.kind in ("cleared", "resolved") else None
                self.sink.add(incident_line(ch, over))

    def _over_s(self, ch: Changed) -> float | None:
        log_rows = [(r.at, r.kind) for r in self.store.log(ch.incident.id)]
        return over_closed(ch.incident, log_rows, ch.incident.updated_at)

    def unresolved_by_site(self) -> dict[str, tuple[int, int]]:
        """site -> (unresolved incidents, of which overdue), from memory."""
        out: dict[str, tuple[int, int]] = {}
        for inc in self.book.incidents.values():
            n, late = out.get(inc.site, (0, 0))
            out[inc.site] = (n + 1, late + (inc.overdue_at is not None))
        return out

    # -------------------------------------------------------------- ranking

    def figures(self, start: float, end: float) -> list[SiteIncidents]:
        incs = self.store.incidents(since=start, until=end, limit=100_000)
        spans = [
            s
            for inc in incs
            for s in spans_of(inc, [(r.at, r.kind) for r in self.store.log(inc.id)])
        ]
        return figures(incs, spans, start, end)

    # ------------------------------------------------------------------ run

    async def run(self, mqtt: MqttSettings, stop: asyncio.Event, telemetry: bool = True) -> None:
        """``telemetry=False``: someone else hands the readings to ``deriver.telemetry``
        (the console's own MQTT link), this session subscribes to events and status only."""
        dispatcher = asyncio.create_task(self.dispatcher.run(), name="incident-dispatch")
        ticker = asyncio.create_task(self._ticker(stop), name="incident-tick")
        try:
            await self._connection(mqtt, stop, telemetry)
        finally:
            ticker.cancel()
            dispatcher.cancel()
            await asyncio.gather(ticker, dispatcher, return_exceptions=True)

    async def run_offline(self, stop: asyncio.Event) -> None:
        """The clock and the notifications without a broker (until ``stop``)."""
        dispatcher = asyncio.create_task(self.dispatcher.run(), name="incident-dispatch")
        try:
            await self._ticker(stop)
        finally:
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)

    async def _ticker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug must not stop the clock
                self.counters["internal_errors"] += 1
                log.exception("incident tick failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await stop.wait()

    async def _connection(
        self, settings: MqttSettings, stop: asyncio.Event, telemetry: bool = True
    ) -> None:
        backoff = Backoff(settings.reconnect_min, settings.reconnect_max)
        rng = random.Random()
        failures = 0
        while not stop.is_set():
            client = make_client(settings, settings.client_id or CLIENT_ID, persistent=True)
            try:
                async with client:
                    await client.subscribe(p.subscription("events"), qos=1)
                    await client.subscribe(p.subscription("status"), qos=1)
                    if telemetry:
                        await client.subscribe(p.subscription("telemetry"), qos=0)
                    else:  # a persistent session keeps what an earlier start subscribed
                        await client.unsubscribe(p.subscription("telemetry"))
                    failures = 0
                    self.connected.set()
                    log.info("incidents: connected to mqtt %s:%d", settings.host, settings.port)
                    receiver = asyncio.create_task(self._receive(client))
                    stopper = asyncio.create_task(stop.wait())
                    done, _ = await asyncio.wait(
                        {receiver, stopper}, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in (receiver, stopper):
                        task.cancel()
                    await asyncio.gather(receiver, stopper, return_exceptions=True)
                    if receiver in done and receiver.exception() is not None:
                        raise receiver.exception()  # type: ignore[misc]
            except aiomqtt.MqttError as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("incidents: mqtt %s:%d: %s", settings.host, settings.port, exc)
            finally:
                self.connected.clear()
            if failures and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.delay(failures, rng.random())):
                        await stop.wait()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = (
                payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
            )
            try:
                self.handle(message.topic.value, bytes(data))
            except Exception:  # a bug must not cost the other messages
                self.counters["internal_errors"] += 1
                log.exception("incidents: handling a message on %s failed", message.topic.value)


# ----------------------------------------------------------------------- CLI


async def _serve(cfg_path: Path) -> int:
    from rules.incidents.settings import load_incidents_file

    cfg = load_incidents_file(cfg_path)
    rules = load_rules_file(cfg.rules_file) if cfg.rules_file is not None else None
    store = IncidentStore(cfg.incidents.db)
    sink: Any = None
    if cfg.influx is not None:
        from rules.sink.writer import InfluxSink

        sink = InfluxSink(cfg.influx, cfg.incidents.db.parent / "incident-sink")
        await sink.start()
    service = IncidentService(
        cfg.incidents, store, rules=rules, rules_path=cfg.rules_file, sink=sink
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await service.run(cfg.mqtt, stop)
    finally:
        if sink is not None:
            await sink.close()
        store.close()
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="dustgate incidents", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, type=Path, help="incidents.yaml")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        return asyncio.run(_serve(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
