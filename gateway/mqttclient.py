"""How both sides connect to the broker: an aiomqtt MQTT 5 client from ``MqttSettings``.

Shared by the agent (``gateway.session``), the rule engine (``rules.service``)
and the CLIs, so TLS, credentials and session options mean the same
everywhere. Part of the contract, like ``gateway.protocol``.
"""

from __future__ import annotations

import ssl

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.configfile import MqttSettings

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
) -> aiomqtt.Client:
    """An aiomqtt client for MQTT 5 built from the shared settings."""
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
    )
