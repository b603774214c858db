"""What the rule service sends: engine actions to the wire.

- ``LeaseOn`` -> ``Command(action="on", lease_s, ...)`` on
  ``{site}/{actuator}/cmd`` (QoS 1, MQTT 5 message expiry = lease_s: a
  command is never delivered after its lease would have ended);
- ``SwitchOff`` -> an ``off`` command (expiry ``OFF_EXPIRY_S``);
- ``EmitEvent`` -> ``{site}/events`` (and the sink);
- ``Notify`` -> :class:`rules.service.notify.Notifier`.

While the broker is away, commands and events are dropped and counted (a
late command is worse than none: leases run out on the agent by
themselves). Publishes are counted as sent (``commands_sent``,
``events_sent``) or failed (``publish_failures``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import protocol as p
from rules.core.engine import Action, EmitEvent, LeaseOn, Notify, SwitchOff
from rules.service.notify import Message, Notifier
from rules.sink.points import event_line

log = logging.getLogger("rules.service")

PUBLISH_TIMEOUT_S = 10.0
OFF_EXPIRY_S = 60  # an OFF that could not be delivered within a minute is moot
RELEASE_TIMEOUT_S = 3.0  # stopping: how long the OFFs for held actuators may take
EVENT_EXPIRY_S = 3600


class LineSink(Protocol):
    """What the service needs of :class:`rules.sink.writer.InfluxSink`."""

    def add(self, line: str | None) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 1
    expiry_s: int | None = None
    kind: str = "event"  # "command" | "event": for counters and logs


def _props(seconds: int | None, engine: str) -> Properties | None:
    """MQTT 5 properties of a publish: its expiry, and the sending engine (a user
    property, so a command or an event says which engine sent it)."""
    if not seconds and not engine:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if seconds:
        props.MessageExpiryInterval = max(1, seconds)
    if engine:
        props.UserProperty = [("engine", engine)]
    return props


class Outbound:
    """Turns engine actions into publishes, sink lines and notifications, and
    publishes on the session's client (``client``, None while disconnected)."""

    def __init__(
        self, counters: Counter[str], sink: LineSink | None, notifier: Notifier, engine: str = ""
    ) -> None:
        self.counters = counters
        self.engine = engine  # sent as the "engine" user property of every publish
        self.sink = sink
        self.notifier = notifier
        self.client: aiomqtt.Client | None = None
        self.publishing: set[asyncio.Task[None]] = set()
        self.boot = format(int(time.time()) % 36**6, "x")  # in OFF command ids
        self._off_seq = 0

    def apply(self, actions: Iterable[Action], now: float, override: bool = False) -> list[Publish]:
        """Turn engine actions into publishes (and sink lines, notifications)."""
        out: list[Publish] = []
        ts = p.now_ms(now)
        for a in actions:
            if isinstance(a, LeaseOn):
                source = "rule" if a.rule is not None and not override else "override"
                cmd = p.Command(
                    id=a.cmd_id or self._off_id(a.rule),
                    action="on",
                    lease_s=a.lease_s,
                    reason=a.reason[:200],
                    source=source,  # type: ignore[arg-type]
                    ts=ts,
                    rule=a.rule,
                )
                level = logging.DEBUG if a.reason.endswith(": renew") else logging.INFO
                log.log(
                    level, "cmd %s/%s on, lease %gs: %s", a.site, a.actuator, a.lease_s, a.reason
                )
                out.append(
                    Publish(
                        p.cmd_topic(a.site, a.actuator),
                        p.encode(cmd),
                        1,
                        max(1, int(a.lease_s)),
                        "command",
                    )
                )
            elif isinstance(a, SwitchOff):
                cmd = p.Command(
                    id=self._off_id(a.rule),
                    action="off",
                    reason=a.reason[:200],
                    source="override" if override else "rule",
                    ts=ts,
                    rule=a.rule,
                )
                log.info("cmd %s/%s off: %s", a.site, a.actuator, a.reason)
                out.append(
                    Publish(
                        p.cmd_topic(a.site, a.actuator), p.encode(cmd), 1, OFF_EXPIRY_S, "command"
                    )
                )
            elif isinstance(a, EmitEvent):
                ev = a.event
                level = logging.INFO if ev.severity == "info" else logging.WARNING
                log.log(level, "event %s %s: %s", a.site, ev.kind, ev.text)
                if self.sink is not None:
                    self.sink.add(event_line(a.site, ev))
                out.append(
                    Publish(p.events_topic(a.site), p.encode(ev), 1, EVENT_EXPIRY_S, "event")
                )
            elif isinstance(a, Notify):
                self.counters["notify_requested"] += 1
                self.notifier.submit(Message(a.notifier, a.rule, a.site, a.text, a.severity, ts))
        return out

    def _off_id(self, rule: str | None) -> str:
        self._off_seq += 1
        return f"{rule or 'engine'}-off-{self.boot}-{self._off_seq}"[-64:]

    def send(self, pubs: list[Publish]) -> None:
        """Publish ``pubs`` in order, in the background; dropped and counted while
        the broker is away."""
        if not pubs:
            return
        client = self.client
        if client is None:
            self.counters["publish_dropped_offline"] += len(pubs)
            for pub in pubs:
                if pub.kind == "command":
                    log.warning("broker unreachable: command to %s dropped", pub.topic)
            return
        for pub in pubs:
            # tasks start in creation order, so paho queues the publishes in order
            task = asyncio.create_task(self.publish(client, pub))
            self.publishing.add(task)
            task.add_done_callback(self.publishing.discard)

    async def publish(self, client: aiomqtt.Client, pub: Publish) -> None:
        props = _props(pub.expiry_s, self.engine)
        try:
            await client.publish(
                pub.topic, pub.payload, qos=pub.qos, properties=props, timeout=PUBLISH_TIMEOUT_S
            )
        except aiomqtt.MqttError as exc:
            self.counters["publish_failures"] += 1
            log.warning("publish to %s failed: %s", pub.topic, exc)
            return
        self.counters["commands_sent" if pub.kind == "command" else "events_sent"] += 1

    async def publish_all(self, client: aiomqtt.Client, pubs: list[Publish]) -> None:
        """Publish ``pubs`` and wait for them, at most RELEASE_TIMEOUT_S (stopping)."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await asyncio.gather(*(self.publish(client, pub) for pub in pubs))
        except TimeoutError:
            log.warning("stopping: OFF commands not confirmed within %gs", RELEASE_TIMEOUT_S)
