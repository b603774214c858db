"""Running a long-lived service in a test: start it as a task, wait until it is
connected, stop it on the way out; and waiting for a condition with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any


async def until(pred: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred()`` every 50 ms until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(
    run: Callable[[asyncio.Event], Awaitable[None]],
    connected: asyncio.Event,
    *,
    start_timeout: float = 10.0,
    stop_timeout: float = 15.0,
) -> AsyncIterator[None]:
    """``run(stop)`` as a task, yielded once ``connected`` is set; stopped (and awaited,
    so its errors surface) when the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop))
    try:
        async with asyncio.timeout(start_timeout):
            await connected.wait()
        yield
    finally:
        stop.set()
        async with asyncio.timeout(stop_timeout):
            await task
