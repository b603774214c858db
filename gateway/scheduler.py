"""One task per bus: polls its devices in turn, writes jump the queue.

A serial bus carries one transaction at a time, so a bus is a single task
that owns its link. Each device has its own poll interval (phase-locked:
the next poll is due one interval after the previous due time, so the rate
does not drift with the bus's latency) and its own exponential backoff: a
dead slave is retried at most once per backoff period and therefore costs
the others at most one timeout per period. A device in backoff, or not yet
heard from since the start, is *probed*: with its ``probe`` poll (one try,
not the retry count), and a probe in backoff yields
once to the healthy polls that fall due while it may hold the bus (its
``probe_hold``), so it runs right after them instead of delaying them. The
backoff can be resumed after a restart (``add_device(resume=...)``, wall
clock) and every change of it is reported to ``on_backoff``, so the agent
can keep it on disk and a restart does not probe a dead unit from the
shortest delay again. Actuator writes are queued
separately and always run before the next poll. When the link itself drops
(USB adapter unplugged, TCP device server rebooted) it is reopened with
backoff, without restarting the process.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers.errors import DriverError, LinkDown
from gateway.backoff import Backoff

log = logging.getLogger(__name__)

OFFLINE_AFTER = 3  # consecutive failures before a device is reported offline


class Link(Protocol):
    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class DeviceSlot:
    """Scheduling and health state of one device on a bus."""

    id: str
    interval: float
    poll: Callable[[], Awaitable[dict[str, float]]]
    timeout: float
    probe: Callable[[], Awaitable[dict[str, float]]] | None = None
    probe_hold: float = 0.0
    due: float = 0.0
    yielded: bool = False  # this backoff period's probe has already let healthy polls go first
    resume_wall: float | None = None  # restored backoff: probe at this wall time
    failures: int = 0
    errors: int = 0
    polls: int = 0
    last_ok_wall: float | None = None
    last_error: str | None = None

    @property
    def state(self) -> str:
        if self.polls == 0 and self.failures == 0:
            return "starting"
        if self.failures == 0:
            return "online"
        return "offline" if self.failures >= OFFLINE_AFTER else "backoff"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


ResultCallback = Callable[[str, float, dict[str, float] | None, DriverError | None], None]
# (device id, consecutive failures, wall time of the next probe; 0 failures: healthy again)
BackoffCallback = Callable[[str, int, float], None]


@dataclass
class _Write:
    run: Callable[[], Awaitable[Any]]
    done: asyncio.Future[Any]


@dataclass
class BusScheduler:
    """Owns one link; call :meth:`run` as a task."""

    name: str
    link: Link
    on_result: ResultCallback
    device_backoff: Backoff = field(default_factory=lambda: Backoff(base=2.0, maximum=300.0))
    link_backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, maximum=60.0))
    pause_after_connect: float = 0.0
    pause_between: float = 0.0
    wall: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    on_backoff: BackoffCallback | None = None

    def __post_init__(self) -> None:
        self.devices: dict[str, DeviceSlot] = {}
        # (due, rank, counter, device): at equal due times healthy devices (rank 0) go first
        self._heap: list[tuple[float, int, int, str]] = []
        self._writes: asyncio.Queue[_Write] = asyncio.Queue()
        self._waiter: asyncio.Future[None] | None = None
        self._counter = 0
        self.link_failures = 0
        self._link_up = False
        self.reconnects = 0
        self.report_errors = 0

    @property
    def link_up(self) -> bool:
        """Connected, as far as anyone can tell without a transaction (a TCP peer that
        closed is seen at once; a dead RS485 slave only by a failed transaction)."""
        return self._link_up and self.link.connected

    def health(self, slot: DeviceSlot) -> str:
        """The device's state for the status: offline too while its link is down."""
        if self.link_failures >= OFFLINE_AFTER:
            return "offline"
        return slot.state

    # ------------------------------------------------------------ setup

    def add_device(
        self,
        device_id: str,
        interval: float,
        poll: Callable[[], Awaitable[dict[str, float]]],
        timeout: float,
        *,
        probe: Callable[[], Awaitable[dict[str, float]]] | None = None,
        probe_hold: float = 0.0,
        resume: tuple[int, float] | None = None,
    ) -> None:
        """Add a device. ``probe`` (default ``poll``) is used while it is in backoff and may
        hold the bus ``probe_hold`` seconds; ``resume`` = (failures, wall time of the next
        probe) continues a backoff saved before a restart."""
        slot = DeviceSlot(device_id, interval, poll, timeout, probe, probe_hold)
        self.devices[device_id] = slot
        if resume is not None and resume[0] > 0:
            slot.failures = resume[0]
            slot.resume_wall = resume[1]
        self._push(device_id, 0.0)

    def _push(self, device_id: str, due: float) -> None:
        slot = self.devices[device_id]
        slot.due = due
        self._counter += 1
        heapq.heappush(self._heap, (due, int(slot.failures > 0), self._counter, device_id))
        self._wakeup()

    def _resume(self, loop: asyncio.AbstractEventLoop) -> None:
        """Turn restored wall-clock probe times into loop times (once, at the start)."""
        now, wall = loop.time(), self.wall()
        for slot in self.devices.values():
            if slot.resume_wall is None:
                continue
            left = min(max(0.0, slot.resume_wall - wall), self.device_backoff.maximum)
            slot.resume_wall = None
            self._heap = [e for e in self._heap if e[3] != slot.id]
            heapq.heapify(self._heap)
            self._push(slot.id, now + left)

    def _yield_probe(self, slot: DeviceSlot, now: float) -> bool:
        """Once per backoff period, move a due probe behind the healthy polls falling due
        while it may hold the bus. True if it moved."""
        if slot.failures == 0 or slot.yielded or slot.probe_hold <= 0:
            return False
        until = now + slot.probe_hold
        later = [e[0] for e in self._heap if e[1] == 0 and e[0] < until]
        if not later:
            return False
        slot.yielded = True
        heapq.heappop(self._heap)
        self._push(slot.id, max(max(later), now))
        return True

    # ------------------------------------------------------------ writes

    async def submit(self, run: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
        """Run ``run`` on this bus before any queued poll; returns its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._writes.put(_Write(run, fut))
        self._wakeup()
        async with asyncio.timeout(timeout):
            return await fut

    # ------------------------------------------------------------ loop

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._resume(loop)
        while True:
            if not self.link.connected:
                await self._reconnect()
                continue
            if not self._writes.empty():
                await self._run_write(self._writes.get_nowait())
                continue
            if not self._heap:
                await self._wait(None)
                continue
            due, _, _, device_id = self._heap[0]
            now = loop.time()
            if due > now:
                await self._wait(due - now)
                continue
            if self._yield_probe(self.devices[device_id], now):
                continue
            heapq.heappop(self._heap)
            await self._poll(self.devices[device_id], due, loop)
            if self.pause_between:
                await asyncio.sleep(self.pause_between)

    def _wakeup(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        """Sleep until ``timeout`` passes or :meth:`_wakeup` (a new write or due time).

        A bare future and one timer handle: this runs before every poll, so it
        avoids the heavier ``asyncio.timeout`` + ``Event`` pair.
        """
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        handle = None
        if timeout is not None:
            handle = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def _reconnect(self) -> None:
        was_up = self._link_up
        self._link_up = False
        try:
            await self.link.connect()
        except DriverError as exc:
            self.link_failures += 1
            delay = self.link_backoff.delay(self.link_failures, self.rng.random())
            if self.link_failures == 1 or was_up:
                log.warning("%s: link down (%s); retrying in %.1fs", self.name, exc, delay)
            self._fail_writes(exc)
            self._report_link_down(exc)
            await self._wait_link(delay)
            return
        if self.link_failures or self.reconnects:
            log.info("%s: link up again", self.name)
        self.reconnects += 1
        self.link_failures = 0
        self._link_up = True
        if self.pause_after_connect:
            await asyncio.sleep(self.pause_after_connect)

    async def _wait_link(self, delay: float) -> None:
        # writes arriving while the link is down fail fast instead of waiting
        deadline = asyncio.get_running_loop().time() + delay
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            await self._wait(left)
            self._fail_writes(LinkDown(f"{self.name}: link down"))

    def _fail_writes(self, exc: DriverError) -> None:
        while not self._writes.empty():
            w = self._writes.get_nowait()
            if not w.done.done():
                w.done.set_exception(exc)

    def _report_link_down(self, exc: DriverError) -> None:
        # every device on a dead link is unreachable: count it once per attempt
        now = asyncio.get_running_loop().time()
        for slot in self.devices.values():
            if slot.due <= now:
                self._record_failure(slot, exc, now)

    async def _run_write(self, w: _Write) -> None:
        try:
            result = await w.run()
        except DriverError as exc:
            if not w.done.done():
                w.done.set_exception(exc)
            if isinstance(exc, LinkDown):
                await self.link.close()
        except Exception as exc:  # a bug in the caller's write must not kill the bus
            log.exception("%s: write failed unexpectedly", self.name)
            if not w.done.done():
                w.done.set_exception(exc)
        else:
            if not w.done.done():
                w.done.set_result(result)

    async def _poll(self, slot: DeviceSlot, due: float, loop: asyncio.AbstractEventLoop) -> None:
        slot.polls += 1
        # not heard from since the start, or in backoff: one try (a dead unit listed in
        # site.yaml would otherwise hold the bus for every retry at each start)
        probing = slot.failures > 0 or slot.last_ok_wall is None
        poll = slot.probe if probing and slot.probe is not None else slot.poll
        slot.yielded = False
        try:
            async with asyncio.timeout(slot.timeout):
                values = await poll()
        except TimeoutError:
            from drivers.errors import DeviceTimeout

            self._record_failure(
                slot, DeviceTimeout(f"{slot.id}: poll exceeded {slot.timeout}s"), loop.time()
            )
            return
        except DriverError as exc:
            if isinstance(exc, LinkDown):
                await self.link.close()
            self._record_failure(slot, exc, loop.time())
            return
        except Exception as exc:  # a driver bug must not stop the bus
            log.exception("%s: %s: poll failed unexpectedly", self.name, slot.id)
            self._record_failure(slot, DriverError(f"internal error: {exc!r}"), loop.time())
            return
        wall = self.wall()
        now = loop.time()
        if slot.failures and self.on_backoff is not None:
            self._backoff_changed(slot.id, 0, wall)
        slot.failures = 0
        slot.last_ok_wall = wall
        slot.last_error = None
        # phase-locked: keep the rhythm, but never queue up missed polls; the rhythm starts
        # at the first poll (due 0.0: "at once")
        nxt = due + slot.interval if due > 0.0 else now + slot.interval
        if nxt < now:
            nxt = now + slot.interval * 0.5 if now - due > slot.interval * 2 else nxt
            nxt = max(nxt, now)
        self._push(slot.id, nxt)
        self._report(slot.id, wall, values, None)

    def _record_failure(self, slot: DeviceSlot, exc: DriverError, now: float) -> None:
        slot.failures += 1
        slot.errors += 1
        slot.last_error = f"{type(exc).__name__}: {exc}"[:200]
        delay = max(slot.interval, self.device_backoff.delay(slot.failures, self.rng.random()))
        if slot.failures == OFFLINE_AFTER:
            log.warning("%s: %s offline (%s); retrying with backoff", self.name, slot.id, exc)
        # remove any pending entry for this device (the heap may hold none: polled)
        self._heap = [e for e in self._heap if e[3] != slot.id]
        heapq.heapify(self._heap)
        self._push(slot.id, now + delay)
        wall = self.wall()
        if self.on_backoff is not None:
            self._backoff_changed(slot.id, slot.failures, wall + delay)
        self._report(slot.id, wall, None, exc)

    def _backoff_changed(self, device_id: str, failures: int, next_wall: float) -> None:
        assert self.on_backoff is not None
        try:
            self.on_backoff(device_id, failures, next_wall)
        except Exception:  # keeping it on disk is best effort: the bus goes on
            log.exception("%s: %s: saving the backoff failed", self.name, device_id)

    def _report(
        self,
        device_id: str,
        wall: float,
        values: dict[str, float] | None,
        error: DriverError | None,
    ) -> None:
        try:
            self.on_result(device_id, wall, values, error)
        except Exception:  # a bug in handling one reading must not stop the bus
            self.report_errors += 1
            if self.report_errors in (1, 10, 100) or self.report_errors % 1000 == 0:
                log.exception("%s: %s: handling a result failed", self.name, device_id)
