"""How both sides connect to the broker: an aiomqtt MQTT 5 client from ``MqttSettings``.

Shared by the agent (``gateway.session``), the rule engine (``rules.service``)
and the CLIs, so TLS, credentials and session options mean the same
everywhere. Part of the contract, like ``gateway.protocol``.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Callable
from typing import TypeVar, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import protocol as p
from gateway.configfile import MqttSettings

M = TypeVar("M", bound=p.Payload)

PUBLISH_WINDOW = 500  # QoS 1 publishes awaiting PUBACK at once
DRAIN_MAX = 500  # messages taken off the inbox at once (the event loop waits meanwhile)
SESSION_EXPIRY_S = 3600  # broker keeps a persistent session (subscriptions) for an hour


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure:
        ctx.check_hostname = False
    return ctx


def make_client(
    settings: MqttSettings,
    client_id: str,
    will: aiomqtt.Will | None = None,
    persistent: bool = False,
    inbox: Inbox | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client for MQTT 5 built from the shared settings; ``inbox``: the
    client's incoming queue is that inbox's (see :class:`Inbox`)."""
    props = None
    if persistent:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        clean_start=False if persistent else paho.MQTT_CLEAN_START_FIRST_ONLY,
        properties=props,
        keepalive=int(settings.keepalive),
        tls_context=tls_context(settings),
        max_inflight_messages=PUBLISH_WINDOW,
        timeout=30,
        queue_type=inbox.queue_type() if inbox is not None else None,
    )


class _InboxQueue(asyncio.Queue[aiomqtt.Message]):
    """asyncio.Queue that remembers the message its ``get()`` last handed out until
    the consumer confirms it (:meth:`Inbox.queued`). aiomqtt's iterator gets each
    message in a task of its own; cancelled just after that task took one, it
    drops the message (already acknowledged to the broker)."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.handed: aiomqtt.Message | None = None

    async def get(self) -> aiomqtt.Message:
        message = await super().get()
        self.handed = message
        return message


class Inbox:
    """The incoming queue of one aiomqtt client, taken in batches by a busy consumer.

    aiomqtt's iterator (``async for m in client.messages``) creates a task and
    waits on it with ``asyncio.wait`` for every message: about 14-20 us a
    message here, more than paho's own work or our decode. A consumer that is
    behind (the rule engine draining the backlog a reconnect brings) pays that
    per message for nothing: the next messages are already queued. So it waits
    with the iterator only for the first message (a disconnect still ends the
    wait) and takes what is queued behind it directly: :meth:`queued`.

    paho acknowledges a QoS 1 message as it queues it, so the broker will not
    send again what is still queued when the session ends: :meth:`take_all`
    hands it over then, with the message the iterator had taken when it was
    cancelled (aiomqtt drops that one).

    The queue is made by aiomqtt through its public ``queue_type`` parameter
    (called as ``queue_type(maxsize=n)``), so :meth:`queue_type` hands it a
    factory that keeps the queue it makes. One inbox per client, and every
    message the iterator yields goes through :meth:`queued` (that is how the
    inbox knows the consumer has it).
    """

    def __init__(self) -> None:
        self._queue: _InboxQueue | None = None

    def queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        def make(maxsize: int = 0) -> asyncio.Queue[aiomqtt.Message]:
            self._queue = _InboxQueue(maxsize)
            return self._queue

        # aiomqtt only calls it; a factory does that as well as a class
        return cast("type[asyncio.Queue[aiomqtt.Message]]", make)

    def __len__(self) -> int:
        """Messages queued (received, not yet taken)."""
        return self._queue.qsize() if self._queue is not None else 0

    def queued(self, first: aiomqtt.Message, limit: int = DRAIN_MAX) -> list[aiomqtt.Message]:
        """``first`` (just from the client's iterator: call this before any ``await``),
        then up to ``limit - 1`` messages queued behind it, in order of arrival."""
        queue = self._queue
        if queue is None:
            raise RuntimeError("the inbox was not given to the client (make_client(inbox=...))")
        queue.handed = None  # the consumer has it
        n = min(queue.qsize(), limit - 1)
        if n <= 0:
            return [first]
        take = queue.get_nowait
        return [first, *[take() for _ in range(n)]]

    def take_all(self) -> list[aiomqtt.Message]:
        """Once the session has ended: the message the iterator took but never
        handed over (if it was cancelled in between), then every message queued."""
        queue = self._queue
        if queue is None:
            return []
        out = [] if queue.handed is None else [queue.handed]
        queue.handed = None
        take = queue.get_nowait
        out.extend(take() for _ in range(queue.qsize()))
        return out


def expiry(seconds: float) -> Properties:
    """PUBLISH properties with an MQTT 5 message expiry: the broker drops the message
    if it cannot deliver it in time (a late command must never act)."""
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = max(1, math.ceil(seconds))
    return props


async def request_reply(
    client: aiomqtt.Client,
    request_topic: str,
    payload: bytes,
    reply_filter: str,
    reply_model: type[M],
    is_reply: Callable[[M], bool],
    timeout: float,
    expiry_s: float,
) -> M | None:
    """Publish a request (QoS 1, expiring) and wait for the first matching reply.

    Replies that do not decode or do not match are skipped; ``None`` after
    ``timeout`` without one. Used by the CLIs that talk to the agent
    (``dustgate actuate``) and to the engine (``dustgate override``).
    """
    await client.subscribe(reply_filter, qos=1)
    await client.publish(
        request_topic, payload, qos=1, properties=expiry(expiry_s), timeout=timeout
    )
    try:
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                raw = message.payload
                if not isinstance(raw, bytes | bytearray):
                    continue
                try:
                    reply = p.decode(reply_model, bytes(raw))
                except p.ProtocolError:
                    continue
                if is_reply(reply):
                    return reply
    except TimeoutError:
        return None
    return None
