"""The aiomqtt/paho behaviour ``gateway.mqttinternals`` relies on, pinned against a
real mosquitto: an aiomqtt release that changes one of these fails here first.

(1) aiomqtt keeps its paho client in ``_client``, with the connected socket;
(2) aiomqtt's PUBACK handling goes through paho's ``on_publish``, and still
completes its own publishes when ours are taken ahead of it;
(3) aiomqtt makes its queue through ``queue_type(maxsize=...)`` and its
iterator takes each message with ``get()``; paho has acknowledged a QoS 1
message once it is queued, so the broker does not send it again;
(4) paho's ``Properties`` sets only its four tables in ``__init__`` and
never changes them, so they can be built once and shared.
"""

from __future__ import annotations

import asyncio
import socket
import time

import paho.mqtt.client as paho

from gateway.configfile import MqttSettings
from gateway.localservices import Mosquitto
from gateway.mqttclient import make_client
from gateway.mqttinternals import Inbox, paho_client, puback_hook, set_nodelay

TOPIC = "dustgate/v1/site-01/dev-1/telemetry"


async def test_the_paho_client_and_its_socket(mosquitto: Mosquitto) -> None:
    settings = MqttSettings(host="127.0.0.1", port=mosquitto.port)
    async with make_client(settings, "internals-socket") as client:
        mqtt = paho_client(client)
        assert isinstance(mqtt, paho.Client)
        sock = mqtt.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # paho's default
        assert set_nodelay(client)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_pubacks_are_taken_ahead_of_aiomqtt_which_still_gets_its_own(
    mosquitto: Mosquitto,
) -> None:
    settings = MqttSettings(host="127.0.0.1", port=mosquitto.port)
    async with make_client(settings, "internals-puback") as client:
        theirs = paho_client(client).on_publish
        assert theirs is not None  # aiomqtt completes its publishes through it
        ours: set[int] = set()
        taken: list[int] = []
        acked = asyncio.Event()

        def take(mid: int, reason: object) -> bool:
            if mid not in ours:
                return False
            taken.append(mid)
            acked.set()
            return True

        with puback_hook(client, take) as mqtt:
            info = mqtt.publish(TOPIC, b"direct", qos=1)
            ours.add(info.mid)
            # aiomqtt's awaitable publish completes only if its handler saw the PUBACK
            await client.publish(TOPIC, b"through aiomqtt", qos=1, timeout=5)
            await asyncio.wait_for(acked.wait(), 5)
        assert taken == [info.mid]
        assert paho_client(client).on_publish is theirs  # put back


async def test_the_queue_is_made_by_queue_type_and_read_with_get(mosquitto: Mosquitto) -> None:
    settings = MqttSettings(host="127.0.0.1", port=mosquitto.port)
    inbox = Inbox()
    async with make_client(settings, "internals-queue", inbox=inbox) as client:
        queue = inbox._queue
        assert queue is not None  # aiomqtt called the factory
        await client.subscribe(TOPIC, qos=1)
        async with make_client(settings, "internals-pub") as pub:
            await pub.publish(TOPIC, b"1", qos=1)
        async for message in client.messages:
            assert queue.handed is message  # the iterator took it with get()
            assert inbox.queued(message) == [message]
            assert queue.handed is None
            break


async def test_a_queued_qos1_message_is_acknowledged_before_it_is_read(
    mosquitto: Mosquitto,
) -> None:
    """What :meth:`Inbox.take_all` exists for: messages queued but not read when the
    session ends are not sent again by the broker."""
    settings = MqttSettings(host="127.0.0.1", port=mosquitto.port)
    async with make_client(settings, "internals-ack", persistent=True) as client:
        await client.subscribe(TOPIC, qos=1)
    async with make_client(settings, "internals-pub") as pub:
        for k in range(5):
            await pub.publish(TOPIC, str(k).encode(), qos=1)
    inbox = Inbox()
    async with make_client(settings, "internals-ack", persistent=True, inbox=inbox):
        deadline = time.monotonic() + 10
        while len(inbox) < 5:
            assert time.monotonic() < deadline, f"only {len(inbox)} of 5 queued"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # paho has written its PUBACKs
    assert [m.payload for m in inbox.take_all()] == [b"0", b"1", b"2", b"3", b"4"]
    again = Inbox()
    async with make_client(settings, "internals-ack", persistent=True, inbox=again):
        await asyncio.sleep(1.0)  # a resend comes right after CONNACK
        assert len(again) == 0


def test_lean_properties_are_pahos_own_tables_and_behave_the_same() -> None:
    """(4) paho's Properties.__init__ sets exactly packetType, types, names and
    properties; the lean version shares tables equal to those paho builds, and
    setting, packing, unpacking, clearing and refusing behave as before."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import MQTTException, Properties

    from gateway.mqttinternals import lean_paho_properties

    lean_paho_properties()
    original = Properties._dustgate_original_init  # type: ignore[attr-defined]
    for pt in range(PacketTypes.CONNECT, PacketTypes.WILLMESSAGE + 1):
        ref = Properties.__new__(Properties)
        original(ref, pt)
        assert set(vars(ref)) == {"packetType", "types", "names", "properties"}
        lean = Properties(pt)
        assert vars(lean) == vars(ref)
    assert lean_paho_properties() is False  # once only

    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 60
    props.UserProperty = [("engine", "e0")]
    back = Properties(PacketTypes.PUBLISH)
    back.unpack(props.pack())
    assert back.MessageExpiryInterval == 60 and back.UserProperty == [("engine", "e0")]
    back.clear()
    assert back.isEmpty() and not hasattr(back, "UserProperty")
    assert Properties(PacketTypes.CONNACK).names is Properties(PacketTypes.PUBLISH).names
    try:
        Properties(PacketTypes.PUBLISH).SessionExpiryInterval = 1  # not a PUBLISH property
    except MQTTException:
        pass
    else:
        raise AssertionError("paho's property checks must still apply")
