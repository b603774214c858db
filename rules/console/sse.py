"""Live updates to open pages: server-sent events, coalesced.

The MQTT side marks sites changed (:meth:`Hub.changed`, cheap, any number of
times a second); every ``interval`` the hub renders each changed site's card
once (:attr:`Hub.render_site`) and queues it to every open stream. Events
(rule transitions, reloads, overrides) are pushed as they come. A client that
does not read (a stalled tab) has a bounded queue: when it is full the
client's stream is ended, and the browser's EventSource reconnects and gets
a fresh page state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

QUEUE_MAX = 1000
KEEPALIVE_S = 15.0


class Client:
    def __init__(self, site: str | None) -> None:
        self.site = site  # None: every site (the board)
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_MAX)

    def put(self, chunk: str) -> bool:
        try:
            self.queue.put_nowait(chunk)
        except asyncio.QueueFull:
            return False
        return True


def frame(event: str, data: Any) -> str:
    body = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {body}\n\n"


class Hub:
    def __init__(
        self,
        render_site: Callable[[str], str],
        interval: float = 0.1,
    ) -> None:
        self.render_site = render_site
        self.interval = interval
        self.clients: set[Client] = set()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.counters: dict[str, int] = {"frames": 0, "dropped_clients": 0, "renders": 0}

    def changed(self, site: str) -> None:
        self._dirty.add(site)
        self._wake.set()

    def publish(self, event: str, data: dict[str, Any], site: str | None = None) -> None:
        """Send one event now to every stream showing ``site`` (None: all)."""
        self._send(frame(event, data), site)

    def _send(self, chunk: str, site: str | None) -> None:
        for c in list(self.clients):
            if site is not None and c.site is not None and c.site != site:
                continue
            if c.put(chunk):
                self.counters["frames"] += 1
            else:
                self.counters["dropped_clients"] += 1
                self.clients.discard(c)
                with contextlib.suppress(asyncio.QueueFull):
                    c.queue.put_nowait(None)

    def flush(self) -> int:
        dirty, self._dirty = self._dirty, set()
        if not self.clients:
            return 0
        for site in sorted(dirty):
            try:
                html = self.render_site(site)
            except Exception:  # a page bug must not stop the live feed
                log.exception("rendering site %s for the live feed", site)
                continue
            self.counters["renders"] += 1
            self._send(frame("site", {"site": site, "html": html}), site)
        return len(dirty)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.interval)  # coalesce a burst into one frame per site
            self.flush()

    async def stream(self, site: str | None) -> AsyncIterator[str]:
        client = Client(site)
        self.clients.add(client)
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    chunk = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if chunk is None:
                    return
                yield chunk
        finally:
            self.clients.discard(client)
