"""``gateway.mqttinternals.Inbox`` against a real mosquitto: a persistent session's
queued backlog is taken in batches, in order, nothing lost or repeated."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest

from gateway.configfile import MqttSettings
from gateway.localservices import Mosquitto
from gateway.mqttclient import make_client
from gateway.mqttinternals import Inbox

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


def messages(n: int) -> list[aiomqtt.Message]:
    """``n`` QoS 1 messages as aiomqtt queues them, payloads "0", "1", ..."""
    return [
        aiomqtt.Message(TOPIC, str(k).encode(), qos=1, retain=False, mid=k, properties=None)
        for k in range(n)
    ]


def test_an_inbox_not_given_to_a_client_says_so() -> None:
    with pytest.raises(RuntimeError, match="make_client"):
        Inbox().queued(messages(1)[0])


def test_take_all_empties_the_queue_in_order() -> None:
    inbox = Inbox()
    assert inbox.take_all() == []  # no client made its queue yet
    queue = inbox.queue_type()(maxsize=0)  # as aiomqtt makes it
    msgs = messages(5)
    for m in msgs:
        queue.put_nowait(m)
    assert len(inbox) == 5
    assert inbox.take_all() == msgs
    assert len(inbox) == 0 and inbox.take_all() == []


async def test_the_message_a_cancelled_iterator_took_is_handed_over_at_the_end() -> None:
    """aiomqtt's iterator gets each message in a task; cancelled right after that
    task took one, it drops it. take_all() hands that one over first."""
    inbox = Inbox()
    queue = inbox.queue_type()(maxsize=0)
    msgs = messages(4)
    for m in msgs:
        queue.put_nowait(m)
    got = await asyncio.create_task(queue.get())  # the iterator's task, as aiomqtt runs it
    assert inbox.queued(got, limit=2) == msgs[:2]  # handed over: confirmed
    await asyncio.create_task(queue.get())  # taken, then the consumer was cancelled
    assert inbox.take_all() == [msgs[2], msgs[3]]
    assert inbox.take_all() == []  # nothing twice
