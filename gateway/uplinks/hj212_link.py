"""HJ 212 uplink: the TCP connection to one environmental platform.

Settings are in :mod:`gateway.uplinks.hj212_settings`, what to say and how to
answer in :mod:`gateway.uplinks.hj212_station` (pure), the backlog on disk in
:mod:`gateway.uplinks.hj212_store`. This is the shell around them:

- :meth:`Hj212Uplink.on_reading` (sync, cheap) hands each reading to the station.
- A ticker closes finished periods into the on-disk backlog, saves the open
  statistics each minute, and queues a real-time upload (CN 2011) on every
  ``realtime_interval`` boundary while connected.
- :meth:`Hj212Uplink.run` connects and reconnects forever with jittered
  exponential backoff, with TCP keepalive on (a 4G path can die silently).
  Real-time uploads go first (only the newest is kept: it is only worth
  sending now); then the backlog, oldest first. With ``reply: true`` each
  packet carries Flag A and waits ``reply_timeout`` for the platform's 9014
  (or 9011) with its QN, resent up to ``retries`` times (the CN 1000
  ``OverTime``/``ReCount`` semantics). A record leaves the backlog only when
  every one of its packets was acknowledged; when every try fails the link is
  taken as dead, closed and reopened, and the record is sent again, whole,
  under the QN it was first sent with (also after a restart), so a platform
  that did get it can tell the copy.
  Without replies a record leaves the backlog once written to the socket: a
  cut can then lose what the kernel had not delivered, so keep replies on
  where the platform supports them.
- Platform requests are answered by the station; a request with a bad CRC
  gets QnRtn 9 when its header can be read. Nothing the platform sends ends
  the connection except closing it.
- Idle for ``heartbeat.interval``: a heartbeat packet, if configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from gateway.backoff import Backoff
from gateway.logthrottle import ThrottledLog
from gateway.protocol import Telemetry
from gateway.uplinks import hj212
from gateway.uplinks.hj212 import Hj212Error, Packet, StreamParser
from gateway.uplinks.hj212_settings import Hj212Settings
from gateway.uplinks.hj212_station import Runtime, Station
from gateway.uplinks.hj212_store import Hj212Store

log = logging.getLogger(__name__)
peer_log = ThrottledLog(log)  # what the platform can make us log: one line per kind a minute

COUNTERS = (
    "sent",  # packets written (each try)
    "acked",  # packets acknowledged by a 9014/9011
    "records_sent",  # backlog records delivered (acknowledged, or written without replies)
    "retries",  # packets resent after reply_timeout
    "reconnects",  # connections opened after the first
    "connect_failures",
    "link_timeouts",  # every try of a packet unanswered
    "bad_packets",  # CRC/length/format errors from the platform ('##' not starting a packet)
    "bad_requests",  # well-formed packets whose handling failed (the session goes on)
    "unmatched_replies",
    "realtime_skipped",  # due while disconnected or with no fresh data
    "heartbeats",
)
SNAPSHOT_INTERVAL = 60.0
"""Open-period statistics are saved this often (and at shutdown)."""


class _LinkDown(Exception):
    """The platform stopped answering: drop the connection and reconnect."""


class Hj212Uplink:
    """An HJ 212 platform connection: feed readings, run, read stats."""

    def __init__(
        self,
        settings: Hj212Settings,
        site_id: str,
        *,
        store_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        tick: float = 1.0,
    ) -> None:
        self.settings = settings
        self.site_id = site_id
        self.name = settings.key
        self._clock = clock
        self._rng = rng
        self._tick = tick
        self.store = Hj212Store(store_path, settings.key, settings.backlog_max)
        saved, saved_base, periods = self.store.load_state()
        base = Runtime.from_settings(settings)
        self._base = asdict(base)
        self.station = Station(settings, base.merged(saved, saved_base))
        self.station.restore(periods)
        self.store.save_runtime(asdict(self.station.runtime), self._base)
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._realtime: list[Packet] | None = None
        self._connected = False
        self._waiters: dict[str, asyncio.Future[Packet]] = {}
        self._work = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._last_write = time.monotonic()
        self._last_snapshot = -float("inf")

    # ------------------------------------------------------------ input

    def on_reading(self, device_id: str, reading: Telemetry) -> None:
        """Take one reading (cheap, never raises on data)."""
        self.station.on_reading(device_id, reading, self._clock())

    def tick(self, now: float) -> None:
        """Clock step: close periods into the backlog, queue real-time data, save state."""
        st = self.station
        records = st.close_periods(now)
        if records:
            self.store.append(records)
            self._work.set()
        if records or now - self._last_snapshot >= SNAPSHOT_INTERVAL:
            self._last_snapshot = now
            self.store.save_periods(st.snapshot())
        self._save_runtime_if_changed()
        if st.realtime_due(now):
            packets = st.realtime_packets(now) if self._connected else None
            if packets is None:
                self._counts["realtime_skipped"] += 1
            else:
                self._realtime = packets  # a newer one replaces one not yet sent
                self._work.set()

    def _save_runtime_if_changed(self) -> None:
        """Keep what a platform request changed (password, intervals) on disk."""
        if self.station.runtime_changed:
            self.station.runtime_changed = False
            self.store.save_runtime(asdict(self.station.runtime), self._base)

    def stats(self) -> dict[str, int | float | bool | None]:
        out: dict[str, int | float | bool | None] = {**self._counts, **self.station.counts}
        rt = self.station.runtime
        out.update(
            backlog=self.store.count(),
            evicted=self.store.evicted,
            store_errors=self.store.errors,
            connected=self._connected,
            realtime_on=rt.realtime_on,
            rtd_interval=rt.rtd_interval,
            minute_interval=rt.minute_interval,
            platform_skew=self.station.platform_skew,
        )
        return out

    # ------------------------------------------------------------ shell

    async def run(self) -> None:
        """Run until cancelled: clock ticks and the connection, reconnecting forever."""
        ticker = asyncio.create_task(self._ticker())
        try:
            await self._connection_loop()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self.store.save_periods(self.station.snapshot())

    async def _ticker(self) -> None:
        while True:
            try:
                self.tick(self._clock())
            except Exception:  # a bug here must not stop the uplink
                log.exception("hj212 %s: tick failed", self.name)
            await asyncio.sleep(self._tick)

    async def _connection_loop(self) -> None:
        s = self.settings
        backoff = Backoff(base=s.reconnect_min, maximum=s.reconnect_max)
        failures = 0
        opened = 0
        while True:
            try:
                async with asyncio.timeout(s.connect_timeout):
                    reader, writer = await asyncio.open_connection(s.host, s.port)
            except (OSError, TimeoutError) as exc:
                failures += 1
                self._counts["connect_failures"] += 1
                delay = backoff.delay(failures, self._rng())
                log.warning(
                    "hj212 %s: cannot connect to %s:%s (%s); retry in %.1f s",
                    self.name,
                    s.host,
                    s.port,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if opened:
                self._counts["reconnects"] += 1
            opened += 1
            _keepalive(writer)
            log.info("hj212 %s: connected to %s:%s", self.name, s.host, s.port)
            started = time.monotonic()
            try:
                await self._session(reader, writer)
            except (OSError, _LinkDown) as exc:
                log.warning("hj212 %s: link down: %s", self.name, exc or type(exc).__name__)
            except Exception:  # a bug must not end the uplink: log it, reconnect
                log.exception("hj212 %s: session failed", self.name)
            finally:
                self._connected = False
                for fut in self._waiters.values():
                    fut.cancel()
                self._waiters.clear()
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()
            # a link that dies right away backs off like a failed connect
            failures = 1 if time.monotonic() - started > s.reconnect_max else failures + 1
            await asyncio.sleep(backoff.delay(failures, self._rng()))

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connected = True
        self._work.set()
        if self.settings.request_time:
            await self._write(writer, hj212.encode_packet(self.station.time_request(self._clock())))
        tasks = [
            asyncio.create_task(self._read_loop(reader, writer)),
            asyncio.create_task(self._send_loop(writer)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, OSError, _LinkDown):
                    await t
        for t in done:
            t.result()  # raise why the session ended

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = StreamParser()
        while True:
            data = await reader.read(4096)
            if not data:
                raise ConnectionError("closed by the platform")
            bad = parser.bad_packets
            packets = parser.feed(data)
            if parser.bad_packets != bad:
                self._counts["bad_packets"] += parser.bad_packets - bad
                peer_log.warning(
                    f"{self.name}:bad-data",
                    "hj212 %s: bad data from platform: %s",
                    self.name,
                    parser.errors,
                )
            for req in parser.crc_failed:
                for r in self.station.refuse_crc(req):
                    await self._write(writer, hj212.encode_packet(r))
            parser.crc_failed.clear()
            for p in packets:
                try:
                    await self._on_packet(p, writer)
                except OSError:
                    raise  # the socket: the session is over
                except Exception as exc:  # one bad request must not drop the session
                    self._counts["bad_requests"] += 1
                    peer_log.error(
                        f"{self.name}:bad-request",
                        "hj212 %s: cannot handle CN=%s QN=%.40s from the platform: %.200r",
                        self.name,
                        p.cn,
                        p.qn,
                        exc,
                    )

    async def _on_packet(self, p: Packet, writer: asyncio.StreamWriter) -> None:
        if p.cn in hj212.REPLY_CNS:  # a 9013 too: no notification of ours waits for one
            fut = self._waiters.get(p.qn or "")
            if fut is not None and not fut.done():
                fut.set_result(p)
            elif p.cn != hj212.CN_EXE_REPLY:
                self._counts["unmatched_replies"] += 1
            return
        now = self._clock()
        replies = self.station.handle_request(p, now)
        peer_log.info(
            f"{self.name}:request:{p.cn}",
            "hj212 %s: platform request CN=%s QN=%.40s",  # QN is the peer's text
            self.name,
            p.cn,
            p.qn,
        )
        for r in replies:
            await self._write(writer, hj212.encode_packet(r))
        self._save_runtime_if_changed()
        if p.cn == hj212.CN_REALTIME and self.station.runtime.realtime_on:
            self._realtime = self.station.realtime_packets(now)
            self._work.set()
        if p.cn == hj212.CN_STOP_REALTIME:
            self._realtime = None

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        async with self._write_lock:
            writer.write(data)
            await writer.drain()
            self._last_write = time.monotonic()

    async def _send_loop(self, writer: asyncio.StreamWriter) -> None:
        hb = self.settings.heartbeat
        while True:
            if self._realtime is not None:
                packets, self._realtime = self._realtime, None
                await self._send_unit(writer, packets, "real-time data")
                continue
            head = self.store.head()
            if head is not None:
                row_id, record, qn = head
                try:
                    packets = self.station.record_packets(record, self._clock(), qn)
                except Hj212Error as exc:
                    self.station.counts["unencodable"] += 1
                    log.error("hj212 %s: cannot encode %s: %s", self.name, record, exc)
                    self.store.remove(row_id)
                    continue
                if qn is None and packets[0].qn is not None:
                    self.store.set_qn(row_id, packets[0].qn)
                await self._send_unit(writer, packets, f"{record.cn} {record.data_time}")
                self.store.remove(row_id)
                self._counts["records_sent"] += 1
                continue
            self._work.clear()
            if hb is None:
                await self._work.wait()
                continue
            idle = time.monotonic() - self._last_write
            if idle >= hb.interval:
                packet = self.station.heartbeat_packet(self._clock())
                if packet is not None:
                    await self._write(writer, hj212.encode_packet(packet))
                    self._counts["heartbeats"] += 1
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hb.interval - idle):
                    await self._work.wait()

    async def _send_unit(
        self, writer: asyncio.StreamWriter, packets: list[Packet], what: str
    ) -> None:
        """Send the packets of one upload in order, each acknowledged when asked for."""
        rt = self.station.runtime
        for packet in packets:
            raw = hj212.encode_packet(packet)
            for attempt in range(rt.retries + 1):
                if attempt:
                    self._counts["retries"] += 1
                await self._write(writer, raw)
                self._counts["sent"] += 1
                if not packet.wants_reply:
                    break
                if await self._await_reply(packet.qn or "", rt.reply_timeout):
                    self._counts["acked"] += 1
                    break
            else:
                self._counts["link_timeouts"] += 1
                raise _LinkDown(f"no reply to {what} after {rt.retries + 1} tries")

    async def _await_reply(self, qn: str, timeout: float) -> bool:
        fut: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._waiters[qn] = fut
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
            # cancellation that races with the reply, and the task never ends
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(qn, None)
        return True


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive: probe after 60 s idle, give up after 5 probes 10 s apart."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
