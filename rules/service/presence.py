"""A partitioned engine's presence on the broker, and the check before it acts.

Each engine started with ``--partition K/N`` keeps a retained
``dustgate/engines/<client id>`` (:class:`rules.core.partition.Presence`):
``online`` once its session is up, and, as the session's last will, the same
with ``online: false`` -- so the broker says "gone" for an engine that died.

Before its session starts, an engine reads the others' retained presences
(:func:`wait_until_clear`, a short clean session of its own): another online
member on the same K/N, or one running with another N (a change of N in
progress), makes it wait, logging why once a minute, until that member is
gone. While running it keeps reading them (:func:`on_presence`): a member
that appears on its partition is reported (``partition_conflicts``; that
newcomer waits). This detects configuration mistakes; it is not a consensus
protocol (two engines started in the same instant can both see nobody): the
supervisor runs one instance per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from typing import Protocol

import aiomqtt
from pydantic import ValidationError

from gateway.configfile import MqttSettings
from gateway.mqttclient import make_client
from rules.core.config import RulesFile
from rules.core.partition import (
    PRESENCE_ROOT,
    Partition,
    Presence,
    conflicts,
    missing,
    presence_topic,
)


class Host(Protocol):
    """What presence needs of the service (:class:`rules.service.service.RulesService`)."""

    partition: Partition
    client_id: str
    rules_file: RulesFile
    counters: Counter[str]


log = logging.getLogger("rules.service")

SUBSCRIPTION = f"{PRESENCE_ROOT}/+"
GATHER_S = 1.0  # how long the check listens for retained presences
RETRY_S = 5.0  # how often a waiting engine looks again
WARN_EVERY_S = 60.0


def payload(member: str, part: Partition, online: bool, since_ms: int) -> bytes:
    doc = Presence(member=member, partition=str(part), online=online, since=since_ms)
    return doc.model_dump_json().encode()


def will(member: str, part: Partition, since_ms: int) -> aiomqtt.Will:
    """The session's last will: this member is gone (retained)."""
    return aiomqtt.Will(
        presence_topic(member), payload(member, part, False, since_ms), qos=1, retain=True
    )


def decode(topic: str, data: bytes) -> Presence | None:
    """A presence message, or None for a cleared or unreadable one."""
    if not data:
        return None
    try:
        doc = Presence.model_validate(json.loads(data))
    except (ValueError, ValidationError):
        return None
    return doc if topic == presence_topic(doc.member) else None


async def gather(settings: MqttSettings, member: str) -> list[Presence]:
    """The retained presences on the broker now (a short clean session)."""
    found: dict[str, Presence] = {}
    client = make_client(settings, f"{member}-check"[:64])
    async with client:
        await client.subscribe(SUBSCRIPTION, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GATHER_S):
                async for m in client.messages:
                    doc = decode(m.topic.value, m.payload if isinstance(m.payload, bytes) else b"")
                    if doc is not None:
                        found[doc.member] = doc
    return list(found.values())


async def wait_until_clear(svc: Host, stop: asyncio.Event) -> bool:
    """Wait until no other online member serves our partition or runs another N.
    False if stopped meanwhile. A broker that cannot be reached is the session's
    business (it retries): the check then passes."""
    part, me = svc.partition, svc.client_id
    last_warn = -1e18
    while not stop.is_set():
        try:
            others = await gather(svc.rules_file.mqtt, me)
        except aiomqtt.MqttError as exc:
            log.warning("partition %s: cannot read presences (%s); not waiting", part, exc)
            return True
        verdict, who = conflicts(me, part, others)
        if verdict == "ok":
            gaps = missing(part, others, me)
            if gaps:
                log.warning(
                    "partition %s: no engine online for partition(s) %s of %d: their sites "
                    "are not served until one starts",
                    part,
                    ", ".join(map(str, gaps)),
                    part.count,
                )
            return True
        svc.counters["partition_waits"] += 1
        if time.monotonic() - last_warn >= WARN_EVERY_S:
            last_warn = time.monotonic()
            why = (
                f"{', '.join(who)} already serve(s) partition {part}"
                if verdict == "overlap"
                else f"{', '.join(who)} run(s) with another partition count (a change of N "
                "in progress? stop the old engines first)"
            )
            log.error("partition %s: waiting, not acting on any site: %s", part, why)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RETRY_S):
                await stop.wait()
    return False


def on_presence(svc: Host, topic: str, data: bytes) -> None:
    """Another engine's presence while we run: report a conflict (counted, logged)."""
    doc = decode(topic, data)
    if doc is None or doc.member == svc.client_id:
        return
    verdict, who = conflicts(svc.client_id, svc.partition, [doc])
    if verdict != "ok":
        svc.counters["partition_conflicts"] += 1
        log.error(
            "partition %s: %s came online for %s while we serve it (it should wait)",
            svc.partition,
            ", ".join(who),
            doc.partition,
        )
