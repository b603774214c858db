"""Live updates to open pages: server-sent events, coalesced.

The MQTT side marks sites changed (:meth:`Hub.changed`, cheap, any number of
times a second); every ``interval`` the hub renders each changed site's card
once (:attr:`Hub.render_site`), skips it if the HTML is what it last sent,
and hands it to every open stream showing that site. Events (rule
transitions, reloads, overrides) are handed over as they come.

A stream keeps only the *latest* card per site until its client reads it
(:class:`Client`), so a slow or stalled tab never makes the server queue
grow: it gets fewer, newer cards. Events wait in a bounded list (the oldest
dropped, counted) until the client reads them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

EVENTS_KEPT = 200
KEEPALIVE_S = 15.0


class Client:
    """One open stream: the newest card per site and the events not yet sent."""

    def __init__(self, site: str | None) -> None:
        self.site = site  # None: every site (the board)
        self.cards: dict[str, str] = {}
        self.events: deque[str] = deque(maxlen=EVENTS_KEPT)
        self.dropped = 0
        self.wake = asyncio.Event()

    def card(self, site: str, chunk: str) -> None:
        self.cards[site] = chunk  # a newer card replaces one not yet sent
        self.wake.set()

    def event(self, chunk: str) -> None:
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
        self.events.append(chunk)
        self.wake.set()

    def take(self) -> str:
        out = "".join(self.events) + "".join(self.cards.values())
        self.events.clear()
        self.cards.clear()
        self.wake.clear()
        return out


def frame(event: str, data: Any) -> str:
    body = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {body}\n\n"


class Hub:
    def __init__(self, render_site: Callable[[str], str], interval: float = 0.1) -> None:
        self.render_site = render_site
        self.interval = interval
        self.clients: set[Client] = set()
        self._dirty: set[str] = set()
        self._last: dict[str, str] = {}
        self._wake = asyncio.Event()
        self.counters: dict[str, int] = {"frames": 0, "renders": 0, "unchanged": 0}

    def changed(self, site: str) -> None:
        self._dirty.add(site)
        self._wake.set()

    def publish(self, event: str, data: dict[str, Any], site: str | None = None) -> None:
        """Send one event to every stream showing ``site`` (None: all)."""
        chunk = frame(event, data)
        for c in self.clients:
            if site is None or c.site is None or c.site == site:
                c.event(chunk)
                self.counters["frames"] += 1

    def flush(self) -> int:
        dirty, self._dirty = self._dirty, set()
        if not self.clients:
            self._last.clear()  # nobody saw them: a new page renders its own
            return 0
        sent = 0
        for site in sorted(dirty):
            try:
                html = self.render_site(site)
            except Exception:  # a page bug must not stop the live feed
                log.exception("rendering site %s for the live feed", site)
                continue
            self.counters["renders"] += 1
            if self._last.get(site) == html:
                self.counters["unchanged"] += 1
                continue
            self._last[site] = html
            chunk = frame("site", {"site": site, "html": html})
            for c in self.clients:
                if c.site is None or c.site == site:
                    c.card(site, chunk)
                    self.counters["frames"] += 1
            sent += 1
        return sent

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.interval)  # coalesce a burst into one card per site
            self.flush()

    async def stream(
        self, site: str | None, still_valid: Callable[[], bool] | None = None
    ) -> AsyncIterator[str]:
        """The frames for one open page; ends when ``still_valid()`` says the session
        that opened it has ended (asked before each chunk: keep it cheap)."""
        client = Client(site)
        self.clients.add(client)
        self._last.clear()  # the new page may be older than the last cards sent
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    await asyncio.wait_for(client.wake.wait(), KEEPALIVE_S)
                except TimeoutError:
                    if still_valid is not None and not still_valid():
                        return
                    yield ": keepalive\n\n"
                    continue
                if still_valid is not None and not still_valid():
                    return
                yield client.take()
        finally:
            self.clients.discard(client)
