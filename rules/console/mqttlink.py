"""The console's MQTT session: reads the district into :class:`rules.console.live.Live`,
publishes override requests.

Subscribes to every site's retained gateway ``status`` and actuator ``state``
(so a fresh console knows the district at once), ``events`` and
``telemetry`` (QoS 0: the board shows the latest reading, the engine and the
database keep every one). Reconnects with backoff; :meth:`MqttLink.status`
says whether the broker is there, for the pages to show. A clean session, no
persistence: what the console missed while away is in InfluxDB.

Other packages running in the console process take the decoded readings from
:attr:`MqttLink.telemetry_taps` rather than subscribing to the telemetry again.

Overrides go out as :class:`gateway.protocol.OverrideRequest` on the override
topic (MQTT 5 expiry, as ``dustgate override`` does); :meth:`MqttLink.override`
waits for the engine's answer event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

import aiomqtt

from gateway import protocol as p
from gateway.backoff import Backoff
from gateway.configfile import MqttSettings
from gateway.mqttclient import expiry, make_client
from gateway.mqttinternals import Inbox
from rules.console.live import Live

log = logging.getLogger(__name__)

REQUEST_EXPIRY_S = 60


class MqttLink:
    def __init__(
        self,
        settings: MqttSettings,
        live: Live,
        clock: Callable[[], float],
        on_change: Callable[[str], None] | None = None,
        on_event: Callable[[str, p.Event], None] | None = None,
    ) -> None:
        self.settings = settings
        self.live = live
        self.clock = clock
        self.on_change = on_change
        self.on_event = on_event
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.last_error = ""
        self._answers: dict[str, asyncio.Future[p.Event]] = {}
        # (site, device, reading, now) for every valid reading: other packages in the console
        # process (incidents: data completeness) read telemetry here instead of decoding
        # every reading a second time on a connection of their own
        self.telemetry_taps: list[Callable[[str, str, p.Telemetry, float], None]] = []
        self.client_id = settings.client_id or f"dustgate-console-{secrets.token_hex(4)}"

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected.is_set(),
            "error": self.last_error,
            "host": f"{self.settings.host}:{self.settings.port}",
        }

    def subscriptions(self) -> list[tuple[str, int]]:
        return [
            (p.subscription("status"), 1),
            (p.subscription("state"), 1),
            (p.subscription("events"), 1),
            (p.subscription("telemetry"), 0),
        ]

    def handle(self, topic: str, payload: bytes) -> None:
        if self.telemetry_taps and topic.endswith("/telemetry"):
            self._telemetry(topic, payload)
            return
        site = self.live.on_message(topic, payload, self.clock())
        if site is None:
            return
        if self.on_change is not None:
            self.on_change(site)
        if topic.endswith("/" + p.EVENTS_SEGMENT):
            event = self.live.sites[site].events[-1]
            req = (event.data or {}).get("request")
            if isinstance(req, str):
                fut = self._answers.pop(req, None)
                if fut is not None and not fut.done():
                    fut.set_result(event)
            if self.on_event is not None:
                self.on_event(site, event)

    def _telemetry(self, topic: str, payload: bytes) -> None:
        """A reading decoded once, for the board and every tap."""
        now = self.clock()
        self.live.counters["messages"] += 1
        try:
            t = p.parse_topic(topic)
            msg = p.decode(p.Telemetry, payload)
        except p.ProtocolError:
            self.live.counters["bad_messages"] += 1
            return
        if t.kind != "telemetry" or t.name is None:
            return
        self.live.on_telemetry(t.site, t.name, msg, now)
        for tap in self.telemetry_taps:
            try:
                tap(t.site, t.name, msg, now)
            except Exception:  # another package's bug must not cost the board its readings
                log.exception("telemetry tap %r failed", tap)
        if self.on_change is not None:
            self.on_change(t.site)

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        backoff = Backoff(s.reconnect_min, s.reconnect_max)
        rng = random.Random()
        failures = 0
        while not stop.is_set():
            inbox = Inbox()
            try:
                async with make_client(s, self.client_id, inbox=inbox) as client:
                    self.client = client
                    for topic, qos in self.subscriptions():
                        await client.subscribe(topic, qos=qos)
                    self.connected.set()
                    self.last_error = ""
                    failures = 0
                    log.info("console connected to mqtt %s:%d", s.host, s.port)
                    async for first in client.messages:
                        for m in inbox.queued(first):
                            raw = m.payload
                            if isinstance(raw, bytes | bytearray):
                                self.handle(str(m.topic), bytes(raw))
            except aiomqtt.MqttError as exc:
                failures += 1
                self.last_error = str(exc)
                if failures == 1 or failures % 10 == 0:
                    log.warning("mqtt %s:%d: %s (attempt %d)", s.host, s.port, exc, failures)
            except Exception as exc:  # a bug must not leave the console without the broker
                failures += 1
                self.last_error = f"internal error: {exc}"
                log.exception("console mqtt session failed; reconnecting")
            finally:
                self.client = None
                self.connected.clear()
            if failures:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.delay(failures, rng.random())):
                        await stop.wait()

    async def override(
        self, site: str, actuator: str, req: p.OverrideRequest, timeout: float = 5.0
    ) -> p.Event | None:
        """Publish ``req``; the engine's answer event, or None after ``timeout``.
        Raises aiomqtt.MqttError when the broker is away."""
        client = self.client
        if client is None:
            raise aiomqtt.MqttError("not connected to the broker")
        fut: asyncio.Future[p.Event] = asyncio.get_running_loop().create_future()
        self._answers[req.id] = fut
        try:
            await client.publish(
                p.override_topic(site, actuator),
                p.encode(req),
                qos=1,
                properties=expiry(REQUEST_EXPIRY_S),
                timeout=timeout,
            )
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None
        finally:
            self._answers.pop(req.id, None)
