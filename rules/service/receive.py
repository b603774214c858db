"""The rule service's receive loop: messages off the MQTT client, in batches.

Each reading is evaluated as it arrives (decision latency). While a backlog
of ``COALESCE_BACKLOG`` or more messages is queued (after a reconnect, a
burst) rule evaluation is coalesced: telemetry is held back undecoded by
:meth:`rules.service.service.RulesService.on_message`, then decoded,
checked, sunk and stored into the windows in one batch just before the rules
are evaluated, once per ``COALESCE_MAX`` messages / ``COALESCE_S`` or when
the backlog is gone (a tight loop over a thousand readings runs far faster
than the same work interleaved with the MQTT client's: each keeps its own
working set in the CPU caches).

Messages already queued by the client are taken in batches
(:class:`gateway.mqttinternals.Inbox`), not one by one through aiomqtt's
iterator, whose per-message task and wait cost more than the engine's own
work. When the session ends, paho has acknowledged every message it queued,
so the broker will not send those again: :func:`handle_left` stores and
sinks them after the disconnect (rules not evaluated: the next tick does),
counted as ``handled_after_session``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Protocol

import aiomqtt

from gateway.mqttinternals import Inbox
from rules.service.outbound import Outbound, Publish

log = logging.getLogger("rules.service")

COALESCE_BACKLOG = 64  # queued messages that count as a backlog
COALESCE_MAX = 5000  # readings stored before the rules are evaluated, with a backlog
COALESCE_S = 0.25  # ... or this long
_BYTES = (bytes, bytearray)


class Consumer(Protocol):
    """What the receive loop needs of the service
    (:class:`rules.service.service.RulesService`)."""

    counters: Counter[str]
    outbound: Outbound

    def on_message(
        self, topic: str, payload: bytes, now: float, evaluate: bool = True
    ) -> list[Publish]: ...
    def on_tick(self, now: float) -> list[Publish]: ...


def payload_bytes(message: aiomqtt.Message) -> bytes:
    """The payload as bytes (paho gives bytes; aiomqtt's type allows more)."""
    payload = message.payload
    if not isinstance(payload, _BYTES):
        return b"" if payload is None else str(payload).encode()
    return bytes(payload)


async def receive(svc: Consumer, client: aiomqtt.Client, inbox: Inbox) -> None:
    """Feed the engine. With a backlog queued behind the current message
    (COALESCE_BACKLOG or more: after a reconnect, a burst), rule evaluation
    is coalesced: readings are stored, and every rule is evaluated once the
    backlog is gone or after COALESCE_MAX messages / COALESCE_S seconds.
    Otherwise each reading is evaluated at once (decision latency).

    The client's iterator hands over the first message of a batch; what is
    queued behind it is taken directly (``inbox``, see
    :class:`gateway.mqttinternals.Inbox`: the iterator's per-message task cost
    more than the engine's own work)."""
    clock = time.time
    on_message = svc.on_message
    send = svc.outbound.send
    deferred = 0
    deferred_since = 0.0
    backlog_known = 0  # messages still surely queued behind the current one
    for_tick: list[Publish] = []
    async for first in client.messages:
        batch = inbox.queued(first)
        left = len(batch)  # taken, not yet handled
        for message in batch:
            left -= 1
            now = clock()
            if backlog_known > COALESCE_BACKLOG:
                # only this loop takes messages off the queue: it cannot have
                # shrunk by more than one since it was counted
                backlog_known -= 1
                backlog = backlog_known
            else:
                backlog = backlog_known = left + len(inbox)
            evaluate = backlog < COALESCE_BACKLOG or (
                deferred > 0 and (deferred >= COALESCE_MAX or now - deferred_since >= COALESCE_S)
            )
            try:
                pubs = on_message(message.topic.value, payload_bytes(message), now, evaluate)
                if not evaluate:
                    if deferred == 0:
                        deferred_since = now
                    deferred += 1
                elif deferred:
                    deferred = 0
                    svc.counters["coalesced_ticks"] += 1
                    for_tick = svc.on_tick(now)
                    if for_tick:
                        pubs = [*pubs, *for_tick]
            except Exception:  # a bug must not take the service down
                svc.counters["internal_errors"] += 1
                log.exception("handling a message on %s failed", message.topic.value)
                continue
            if pubs:
                send(pubs)


def handle_left(svc: Consumer, inbox: Inbox) -> None:
    """Handle the messages still queued when the session ends (stop, resubscribe,
    a lost connection). paho acknowledged each as it arrived, so the broker will
    not send them again: dropped here, they would be lost to the sink too. Stored
    without evaluating the rules (the session that would carry the commands is
    gone); the next tick evaluates."""
    left = inbox.take_all()
    if not left:
        return
    now = time.time()
    for message in left:
        try:
            svc.outbound.send(
                svc.on_message(message.topic.value, payload_bytes(message), now, False)
            )
        except Exception:  # a bug must not cost the other messages
            svc.counters["internal_errors"] += 1
            log.exception("handling a message on %s failed", message.topic.value)
    svc.counters["handled_after_session"] += len(left)
    log.info("handled %d message(s) still queued when the MQTT session ended", len(left))
