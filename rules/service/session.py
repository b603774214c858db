"""The rule service's MQTT session: connect, subscribe, reconnect, end.

MQTT 5 through aiomqtt, with a persistent session so QoS 1 readings queued
while the service restarts still reach InfluxDB. Subscriptions, QoS 1, per
served site (``sites:``) or ``+``: ``telemetry`` (into the engine and the
sink), ``state`` (actuator changes -> ``actuator`` points), ``status``
(gateway health -> ``gateway`` points), ``events`` (agent events ->
``rule_event`` points; *no local*, our own events are written directly) and
``override`` (:mod:`rules.service.override`). A partitioned engine
(``--partition K/N``, :mod:`rules.core.partition`) subscribes per site:
telemetry of the sites its rules read, the rest for the sites it owns, and
the other engines' presences (:mod:`rules.service.presence`); before its
session starts it waits while another engine serves its partition, and its
session carries a retained presence with a last will. Subscriptions dropped
from the config are unsubscribed on the next start (they are remembered in
the state file, the session being persistent).

A persistent session's queued messages arrive right after CONNACK, ahead of
the SUBACKs: the receive loop (:mod:`rules.service.receive`) runs while we
subscribe. TCP_NODELAY is set on the broker socket (paho does not), so a
command does not wait for the ACK of our previous packet. When the session
ends (stop, resubscribe, lost connection), the messages paho had queued are
handed to :func:`rules.service.receive.handle_left`; on stop, the actuators
the engine holds are switched off while the session is still up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway import protocol as p
from gateway.backoff import Backoff
from gateway.mqttclient import make_client
from gateway.mqttinternals import Inbox, set_nodelay
from rules.core.config import RulesFile
from rules.core.engine import Action, Engine
from rules.core.partition import WHOLE, Partition, presence_topic
from rules.service import presence
from rules.service.outbound import Publish
from rules.service.override import override_subscription
from rules.service.receive import Consumer, handle_left, receive

log = logging.getLogger("rules.service")

SUBSCRIBE_BATCH = 200  # topic filters per SUBSCRIBE packet


def default_client_id(part: Partition = WHOLE) -> str:
    """``dustgate-rules-<host>``, and ``-p<K>`` for partition K (several on one host)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())
    suffix = f"-p{part.index}" if part.count > 1 else ""
    return f"dustgate-rules-{host}"[: 64 - len(suffix)] + suffix


def subscriptions(
    rules_file: RulesFile,
    part: Partition = WHOLE,
    served: frozenset[str] = frozenset(),
    owned: frozenset[str] = frozenset(),
) -> list[str]:
    """The topic filters the service subscribes to, in order. One engine: per
    ``sites:`` or ``+``. A partition: telemetry of every ``served`` site (what its
    rules read), state, status, events and overrides of its ``owned`` sites, and
    the engines' presences."""
    if part.count == 1:
        sites = sorted(rules_file.sites) if rules_file.sites is not None else ["+"]
        return [
            sub
            for s in sites
            for sub in (
                p.subscription("telemetry", s),
                p.subscription("state", s),
                p.subscription("status", s),
                p.subscription("events", s),
                override_subscription(s),
            )
        ]
    out = [p.subscription("telemetry", s) for s in sorted(served)]
    for s in sorted(owned):
        out += [
            p.subscription("state", s),
            p.subscription("status", s),
            p.subscription("events", s),
            override_subscription(s),
        ]
    out.append(presence.SUBSCRIPTION)
    return out


def subscribe_options(topic: str) -> SubscribeOptions:
    # our own events are written to the sink directly
    return SubscribeOptions(qos=1, noLocal=topic.endswith(f"/{p.EVENTS_SEGMENT}"))


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float = 10.0) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again while they live on.

    Python 3.11's ``asyncio.wait_for`` (used inside aiomqtt's publish) can
    swallow a cancellation that races with the awaited future completing.
    """
    pending = [t for t in tasks if not t.done()]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.1)
        pending = [t for t in pending if not t.done()]
    if pending:
        log.error("%d task(s) did not stop: %s", len(pending), [t.get_name() for t in pending])


class Service(Consumer, Protocol):
    """What the session needs of the service (:class:`rules.service.service.RulesService`)."""

    rules_file: RulesFile
    client_id: str
    partition: Partition
    counters: Counter[str]

    def subscriptions(self) -> list[str]: ...
    def settle(self) -> Engine: ...
    def apply(
        self, actions: Iterable[Action], now: float, override: bool = False
    ) -> list[Publish]: ...


class Session:
    """The broker session of one service: :meth:`run` keeps it up until stopped."""

    def __init__(self, svc: Service, old_subscriptions: list[str]) -> None:
        self.svc = svc
        # the saved session's subscriptions: those no longer wanted are unsubscribed
        self.old_subscriptions = old_subscriptions
        self.reconnect = asyncio.Event()
        self.release = asyncio.Event()  # stopping: switch off what we hold, then disconnect
        self.connected = asyncio.Event()  # set while the broker session is up

    def resubscribe(self) -> None:
        """End the session and start a new one (the subscriptions changed)."""
        self.reconnect.set()

    async def run(self, stop: asyncio.Event) -> None:
        svc = self.svc
        out = svc.outbound
        settings = svc.rules_file.mqtt
        backoff = Backoff(settings.reconnect_min, settings.reconnect_max)
        rng = random.Random()
        failures = 0
        part = svc.partition
        since = p.now_ms(time.time())
        if part.count > 1 and not await presence.wait_until_clear(svc, stop):
            return
        while not stop.is_set():
            inbox = Inbox()
            will = presence.will(svc.client_id, part, since) if part.count > 1 else None
            client = make_client(settings, svc.client_id, will, persistent=True, inbox=inbox)
            try:
                async with client:
                    set_nodelay(client)
                    out.client = client
                    self.reconnect.clear()
                    # a persistent session's queued messages come right after CONNACK,
                    # ahead of the SUBACKs: taken as they come, not after all of them
                    # were read into memory (an hour's backlog would not fit)
                    receiver = asyncio.create_task(receive(svc, client, inbox))
                    others: list[asyncio.Task[Any]] = []
                    try:
                        if part.count > 1:  # after the receiver started: the backlog
                            # comes ahead of this PUBACK and is handled as it comes
                            await client.publish(
                                presence_topic(svc.client_id),
                                presence.payload(svc.client_id, part, True, since),
                                qos=1,
                                retain=True,
                            )
                        subs = svc.subscriptions()
                        stale = [s for s in self.old_subscriptions if s not in subs]
                        if stale:
                            await client.unsubscribe(stale)
                        # many filters a SUBSCRIBE packet: a partition subscribes per
                        # site, thousands of filters for a city, one round trip each
                        # held a persistent session's backlog back for seconds
                        for i in range(0, len(subs), SUBSCRIBE_BATCH):
                            batch = subs[i : i + SUBSCRIBE_BATCH]
                            await client.subscribe([(s, subscribe_options(s)) for s in batch])
                        self.old_subscriptions = subs
                        if failures:
                            log.info("reconnected to mqtt %s:%d", settings.host, settings.port)
                        else:
                            log.info(
                                "connected to mqtt %s:%d as %s; subscribed to %s",
                                settings.host,
                                settings.port,
                                svc.client_id,
                                ", ".join(subs),
                            )
                        failures = 0
                        self.connected.set()
                        waiter = asyncio.create_task(self.reconnect.wait())
                        release = asyncio.create_task(self.release.wait())
                        others = [waiter, release]
                        done, _ = await asyncio.wait(
                            {receiver, *others}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        await cancel_and_wait([receiver, *others])
                    if release in done:
                        await self._switch_off_held(client)
                        if part.count > 1:  # a clean stop: no last will, so say it
                            await client.publish(
                                presence_topic(svc.client_id),
                                presence.payload(svc.client_id, part, False, since),
                                qos=1,
                                retain=True,
                            )
                        return
                    if receiver in done and receiver.exception() is not None:
                        raise receiver.exception()  # type: ignore[misc]
                    log.info("resubscribing (the sites changed)")
            except aiomqtt.MqttError as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "mqtt %s:%d: %s (attempt %d)", settings.host, settings.port, exc, failures
                    )
            except Exception:  # a bug must not leave us running without a broker session
                failures += 1
                svc.counters["internal_errors"] += 1
                log.exception("mqtt session failed; reconnecting")
            finally:
                out.client = None
                self.connected.clear()
                # after the disconnect: paho reads (and acknowledges) until then
                handle_left(svc, inbox)
            if failures:
                delay = backoff.delay(failures, rng.random())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    async def _switch_off_held(self, client: aiomqtt.Client) -> None:
        """Stopping, still connected (nothing else runs any more): OFF for every
        actuator the engine holds on, each awaited up to RELEASE_TIMEOUT_S."""
        svc = self.svc
        pubs = svc.apply(svc.settle().release_all("engine stopping"), time.time())
        if not pubs:
            return
        log.info("stopping: switching off %d actuator(s) the engine holds", len(pubs))
        await svc.outbound.publish_all(client, pubs)
