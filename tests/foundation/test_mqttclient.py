"""``gateway.mqttclient.Inbox`` against a real mosquitto: a persistent session's
queued backlog is taken in batches, in order, nothing lost or repeated."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest

from gateway.configfile import MqttSettings
from gateway.localservices import Mosquitto
from gateway.mqttclient import Inbox, make_client

TOPIC = "dustgate/v1/site-01/dev-1/telemetry"


async def test_a_queued_backlog_is_taken_in_batches_in_order(mosquitto: Mosquitto) -> None:
    settings = MqttSettings(host="127.0.0.1", port=mosquitto.port)
    async with make_client(settings, "inbox-test", persistent=True) as client:
        await client.subscribe(TOPIC, qos=1)  # the session outlives this connection
    async with make_client(settings, "inbox-pub") as pub:
        for k in range(300):
            await pub.publish(TOPIC, str(k).encode(), qos=1)

    inbox = Inbox()
    got: list[int] = []
    sizes: list[int] = []
    async with make_client(settings, "inbox-test", persistent=True, inbox=inbox) as client:
        deadline = time.monotonic() + 10
        while len(inbox) < 300:  # the broker delivers the backlog on connect
            assert time.monotonic() < deadline, f"only {len(inbox)} of 300 queued"
            await asyncio.sleep(0.02)
        async for first in client.messages:
            batch = inbox.queued(first, limit=120)
            sizes.append(len(batch))
            got.extend(int(m.payload) for m in batch)  # type: ignore[arg-type]
            if len(got) >= 300:
                break
    assert got == list(range(300))
    assert sizes == [120, 120, 60]
    assert len(inbox) == 0


async def test_without_a_backlog_a_batch_is_the_one_message(mosquitto: Mosquitto) -> None:
    settings = MqttSettings(host="127.0.0.1", port=mosquitto.port)
    inbox = Inbox()
    async with make_client(settings, "inbox-live", inbox=inbox) as client:
        await client.subscribe(TOPIC, qos=1)
        async with make_client(settings, "inbox-pub") as pub:
            await pub.publish(TOPIC, b"7", qos=1)
        async for first in client.messages:
            assert [m.payload for m in inbox.queued(first)] == [b"7"]
            break


def test_an_inbox_not_given_to_a_client_says_so() -> None:
    first = aiomqtt.Message(TOPIC, b"1", qos=0, retain=False, mid=1, properties=None)
    with pytest.raises(RuntimeError, match="make_client"):
        Inbox().queued(first)
