"""The agent's MQTT 5 session: reconnects forever, drains the outbox, takes commands.

- Readings go through the outbox (``gateway.outbox``): committed to SQLite
  first, published with QoS 1, deleted when the broker's PUBACK arrives. Many
  publishes are in flight at once (a window), so a backlog after an outage
  drains at thousands of readings per second while new readings keep joining
  the queue behind it.
- The retained gateway status carries a last will: the broker itself marks
  the gateway offline if the link dies.
- Status, actuator state and acks are *posted* (:meth:`AgentSession.post`):
  queued without waiting, sent by a task of their own, and the latest
  retained payload per topic is sent again after every reconnect. The
  safety tick therefore never waits for a slow or dead broker.
- Commands arrive on a persistent session (stable client id, clean start off,
  session expiry), so a command sent during a short blip is still delivered.
- Reconnects use exponential backoff with jitter, forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
import paho.mqtt.client as paho

from gateway.backoff import Backoff
from gateway.configfile import MqttSettings
from gateway.mqttclient import PUBLISH_WINDOW, make_client
from gateway.mqttinternals import puback_hook
from gateway.outbox import Outbox

log = logging.getLogger(__name__)

TRANSIENT_QUEUE = 256  # acks waiting for the broker; older ones are dropped


@dataclass
class SessionStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    publish_failures: int = 0
    publish_refused: int = 0  # PUBACK with a failure reason code
    received: int = 0
    connected_since: float | None = None
    down_since: float | None = field(default_factory=time.monotonic)


@dataclass
class AgentSession:
    """Run :meth:`run` as a task. ``on_connect`` publishes retained state."""

    settings: MqttSettings
    client_id: str
    outbox: Outbox
    will: aiomqtt.Will
    subscriptions: list[str]
    on_message: Callable[[str, bytes], None]
    on_connect: Callable[[], None] = lambda: None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.stats = SessionStats()
        self._client: aiomqtt.Client | None = None
        self._data = asyncio.Event()
        self._backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max)
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._retained_dirty: set[str] = set()
        self._transient: deque[tuple[str, bytes, int]] = deque(maxlen=TRANSIENT_QUEUE)
        self._posted = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._client is not None

    def notify_data(self) -> None:
        """New rows in the outbox: wake the pump."""
        self._data.set()

    def post(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a message outside the outbox (status, state, ack); never blocks.

        A retained message replaces any not yet sent on the same topic and is
        sent again after every reconnect (so the broker always ends up with the
        latest); other messages are dropped when the queue is full or the
        broker is away. The caller (the safety tick, a command handler)
        must never wait for the network.
        """
        if retain:
            self._retained[topic] = (payload, qos)
            self._retained_dirty.add(topic)
        else:
            self._transient.append((topic, payload, qos))
        self._posted.set()

    async def flush(self, timeout: float) -> bool:
        """Wait until every posted message has been sent (False on timeout or offline)."""
        deadline = time.monotonic() + timeout
        while self._retained_dirty or self._transient:
            if self._client is None or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def run(self) -> None:
        failures = 0
        while True:
            client = make_client(self.settings, self.client_id, self.will, persistent=True)
            try:
                async with client:
                    failures = 0
                    self._client = client
                    self.stats.connects += 1
                    self.stats.connected_since = time.monotonic()
                    self.stats.down_since = None
                    log.info("connected to mqtt %s:%d", self.settings.host, self.settings.port)
                    client.pending_calls_threshold = PUBLISH_WINDOW + 64  # no warning spam
                    for sub in self.subscriptions:
                        await client.subscribe(sub, qos=1)
                    self._retained_dirty.update(self._retained)  # the broker may have lost them
                    self.on_connect()
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._pump(client))
                        tg.create_task(self._receive(client))
                        tg.create_task(self._send_posted(client))
            except* aiomqtt.MqttError as group:
                failures += 1
                log.warning("mqtt: %s", group.exceptions[0])
            except* Exception as group:
                # a bug here must not end the session (and with it the agent, whose
                # safety tick keeps running): log it, reconnect with backoff
                failures += 1
                log.error("mqtt session failed", exc_info=group.exceptions[0])
            finally:
                if self._client is not None:
                    self.stats.disconnects += 1
                self._client = None
                self.stats.connected_since = None
                if self.stats.down_since is None:
                    self.stats.down_since = time.monotonic()
                self.outbox.requeue_inflight()
            await asyncio.sleep(self._backoff.delay(max(failures, 1), self.rng.random()))

    async def _send_posted(self, client: aiomqtt.Client) -> None:
        while True:
            self._posted.clear()
            while self._transient:
                item = self._transient[0]
                await client.publish(item[0], item[1], qos=item[2], timeout=10)
                if self._transient and self._transient[0] is item:
                    self._transient.popleft()
            while self._retained_dirty:
                topic = next(iter(self._retained_dirty))
                payload, qos = self._retained[topic]
                await client.publish(topic, payload, qos=qos, retain=True, timeout=10)
                if self._retained[topic][0] is payload:  # not replaced meanwhile
                    self._retained_dirty.discard(topic)
            if not self._transient and not self._retained_dirty:
                await self._posted.wait()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.stats.received += 1
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = str(payload if payload is not None else "").encode()
            try:
                self.on_message(str(message.topic), bytes(payload))
            except Exception:  # a handler bug must not take the session down
                log.exception("command handler failed")

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Hand committed rows to paho, up to PUBLISH_WINDOW unacknowledged at once.

        The hot path: one ``paho.Client.publish`` per reading and one dict entry
        (message id -> row id) until its PUBACK, instead of a task, an event and
        a timer per message through aiomqtt's awaitable ``publish``. PUBACKs of
        our message ids are taken in paho's ``on_publish`` ahead of aiomqtt's
        handler (which still completes its own publishes: status, state, acks).
        """
        pending: dict[int, int] = {}  # paho message id -> outbox row id
        room = asyncio.Event()
        outbox = self.outbox
        stats = self.stats

        def take_puback(mid: int, reason: object) -> bool:
            row_id = pending.pop(mid, None)
            if row_id is None:
                return False  # aiomqtt's own publish (status, state, acks)
            if getattr(reason, "is_failure", False):
                # refused by the broker (ACL, quota): keep the row; it is sent
                # again after the next reconnect, and dropped only by max_age
                stats.publish_refused += 1
                if stats.publish_refused in (1, 10, 100) or stats.publish_refused % 1000 == 0:
                    log.warning("broker refused a reading (%s); kept in the outbox", reason)
            else:
                outbox.ack(row_id)
                stats.published += 1
            room.set()
            return True

        # Rows become publishable only by a commit (made here, by the agent's
        # tick or inside Outbox.put): look for new ones only after one.
        seen_commit = -1
        more = True  # a full batch last time: there may be more committed rows
        with puback_hook(client, take_puback) as mqtt:
            while True:
                outbox.maybe_commit(time.time())
                free = PUBLISH_WINDOW - len(pending)
                rows = []
                if free > 0 and (more or outbox.commits != seen_commit):
                    seen_commit = outbox.commits
                    rows = outbox.pending_for_publish(free)
                    more = len(rows) == free
                for row in rows:
                    info = mqtt.publish(row.topic, row.payload, qos=1)
                    if info.rc != paho.MQTT_ERR_SUCCESS:
                        stats.publish_failures += 1
                        # not connected any more: _receive sees it; the rest of
                        # the batch is handed out again after the reconnect
                        raise aiomqtt.MqttCodeError(info.rc, "could not publish a reading")
                    pending[info.mid] = row.id
                if free <= 0 or (rows and more):
                    room.clear()
                    if len(pending) >= PUBLISH_WINDOW:
                        await room.wait()
                    else:
                        await asyncio.sleep(0)
                    continue
                self._data.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(outbox.commit_interval_s):
                        await self._data.wait()
