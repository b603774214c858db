"""The live feed's hub: one render per changed site per flush, the newest card per site
kept for a slow client (never a growing queue), events bounded."""

from __future__ import annotations

import asyncio

from rules.console.sse import EVENTS_KEPT, Hub


def test_a_slow_client_gets_the_newest_card_per_site_only() -> None:
    async def run() -> None:
        version = {"s1": 0, "s2": 0}
        hub = Hub(lambda site: f"<article>{site} v{version[site]}</article>")
        stream = hub.stream(None)
        assert await anext(stream) == "retry: 2000\n\n"
        reader = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # the stream is registered and waiting
        for v in range(1, 500):  # a burst the client does not read
            version["s1"] = v
            hub.changed("s1")
            hub.changed("s2")
            hub.flush()
        chunk = await asyncio.wait_for(reader, 1)
        assert chunk.count("event: site") == 2
        assert "s1 v499" in chunk and "s1 v498" not in chunk
        assert hub.counters["renders"] == 2 * 499
        assert hub.counters["unchanged"] == 498  # s2 never changed after its first card
        for i in range(EVENTS_KEPT + 50):
            hub.publish("event", {"n": i})
        chunk = await asyncio.wait_for(anext(stream), 1)
        assert chunk.count("event: event") == EVENTS_KEPT
        assert '"n":0}' not in chunk and f'"n":{EVENTS_KEPT + 49}}}' in chunk
        await stream.aclose()
        assert hub.clients == set()

    asyncio.run(run())


def test_site_streams_get_their_site_only_and_a_failing_render_is_skipped() -> None:
    async def run() -> None:
        def render(site: str) -> str:
            if site == "bad":
                raise RuntimeError("template bug")
            return f"<article>{site}</article>"

        hub = Hub(render)
        s1 = hub.stream("s1")
        await anext(s1)
        pending = asyncio.ensure_future(anext(s1))
        await asyncio.sleep(0)
        for site in ("s2", "bad", "s1"):
            hub.changed(site)
        assert hub.flush() == 2
        chunk = await asyncio.wait_for(pending, 1)
        assert '"site":"s1"' in chunk and '"site":"s2"' not in chunk
        await s1.aclose()

    asyncio.run(run())


def test_the_stream_ends_when_its_session_does() -> None:
    async def run() -> None:
        hub = Hub(lambda site: f"<article>{site}</article>")
        alive = [True]
        stream = hub.stream(None, lambda: alive[0])
        await anext(stream)
        nxt = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        hub.changed("s1")
        hub.flush()
        assert "s1" in await asyncio.wait_for(nxt, 1)
        alive[0] = False  # signed out, disabled or expired
        nxt = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        hub.changed("s2")
        hub.flush()
        try:
            await asyncio.wait_for(nxt, 1)
            raise AssertionError("the stream went on after its session ended")
        except StopAsyncIteration:
            pass
        assert hub.clients == set()

    asyncio.run(run())
