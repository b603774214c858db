"""How both sides connect to the broker: an aiomqtt MQTT 5 client from ``MqttSettings``.

Shared by the agent (``gateway.session``), the rule engine (``rules.service``)
and the CLIs, so TLS, credentials and session options mean the same
everywhere. Part of the contract, like ``gateway.protocol``. What it (and
the agent, the engine) needs of aiomqtt's internals is in
:mod:`gateway.mqttinternals`, nowhere else.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Callable
from typing import TypeVar

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import protocol as p
from gateway.configfile import MqttSettings
from gateway.mqttinternals import Inbox, lean_paho_properties

M = TypeVar("M", bound=p.Payload)

PUBLISH_WINDOW = 500  # QoS 1 publishes awaiting PUBACK at once
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
    client's incoming queue is that inbox's (see :class:`gateway.mqttinternals.Inbox`)."""
    lean_paho_properties()  # once per process: paho's per-packet table rebuilding goes
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
