"""HJ 212 uplink: push a site's dust data to an environmental platform over TCP.

The pure packet work is in :mod:`gateway.hj212`; this is the shell around it.
``site.yaml`` lists uplinks; each HJ 212 one becomes an :class:`Hj212Uplink`::

    uplinks:
      - type: hj212
        host: 203.0.113.10          # the platform
        port: 8212
        mn: "SITE0001DUST00000001"  # device number the platform issued
        pw: {env: HJ212_PW}         # or inline, or {file: /etc/dustgate/hj212.pw}
        st: "39"                    # construction-site dust
        realtime_interval: 60s
        minute: true
        hourly: true
        devices: [dust1, weather]   # default: every device
        factors: {noise: NOIS}      # override / add codes; null drops a metric

What it does:

- :meth:`Hj212Uplink.on_reading` (sync, cheap) keeps the latest value of every
  mapped metric and feeds the minute/hour(/day) aggregates. Aggregates follow
  the readings' own timestamps; a period is closed ``grace`` after it ends.
- :meth:`Hj212Uplink.run` connects, reconnects forever with jittered
  exponential backoff, sends real-time data (CN 2011) every
  ``realtime_interval`` with the freshest value of each factor and its data flag,
  and minute (2051), hourly (2061) and optionally daily (2031) aggregates.
- With ``reply: true`` uploads carry Flag A (2017: ``Flag=5``) and wait
  ``reply_timeout`` for the platform's 9014 (or 9011) with the same QN, resending
  the same bytes up to ``retries`` times (the CN 1000 ``OverTime``/``ReCount``
  semantics; the platform may change both with CN 1000). When every try fails
  the link is taken as dead: the connection is closed and reopened, and the
  unit stays at the head of the backlog (a split unit is resent whole).
- Aggregates go through an in-memory backlog, sent oldest first and resent after
  a reconnect. It is bounded by ``backlog_max`` units (default 1500: a day of
  1-minute data plus the hours); past that the oldest unit is dropped and
  counted. Real-time data is never backlogged (it is only worth sending now).
  The backlog does not survive a restart of the process.
- Platform requests are answered: 1000 timeout/retries, 1011 get time
  (SystemTime), 1012 set time (acknowledged and logged; the system clock is
  not touched: NTP owns it), 1061/1062 get/set real-time interval (30-3600 s),
  1063 get minute interval (1064 is refused: the interval is configuration),
  2011/2012 start/stop real-time. A request with the wrong PW or MN gets QnRtn
  3 or 4; an unknown CN gets QnRtn 8.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gateway import hj212
from gateway.backoff import Backoff
from gateway.configfile import Duration, Secret, StrictModel
from gateway.hj212 import Hj212Error, Packet, PeriodAggregator, Sample, StreamParser
from gateway.protocol import ID_PATTERN, Telemetry

log = logging.getLogger(__name__)

Id = Annotated[str, Field(pattern=ID_PATTERN)]
# printable ASCII without the separators ; = &
HeaderText = Annotated[str, Field(pattern=r"^[\x21-\x25\x27-\x3a\x3c\x3e-\x7e]{1,64}$")]
FactorCode = Annotated[str, Field(pattern=hj212.FACTOR_CODE.pattern)]


class Hj212Settings(StrictModel):
    """One HJ 212 platform connection (an entry of ``uplinks`` in site.yaml)."""

    type: Literal["hj212"] = "hj212"
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    mn: HeaderText
    pw: Secret
    st: Annotated[str, Field(pattern=r"^[0-9]{2}$")] = hj212.ST_DUST
    version: Literal[2017, 2025] = 2017
    # Flag bits V5..V0; 2017 is 1. Required for 2025 (its text was not available).
    version_bits: Annotated[int, Field(ge=0, le=63)] | None = None
    realtime: bool = True
    realtime_interval: Annotated[Duration, Field(gt=0)] = 60.0
    minute: bool = True
    minute_interval: Annotated[Duration, Field(gt=0)] = 60.0
    hourly: bool = True
    daily: bool = False
    factor_names: Literal["2017", "legacy"] = "2017"
    factors: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")], FactorCode | None] | None = (
        None
    )
    decimals: Annotated[int, Field(ge=0, le=6)] = 1
    devices: list[Id] | None = None
    reply: bool = True
    reply_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    utc_offset_h: Annotated[float, Field(ge=-12, le=14)] = 8.0  # platforms run on Beijing time
    grace: Duration = 5.0  # wait this long after a period ends for late readings
    stale_after: Duration | None = None  # real-time values older than this are left out
    connect_timeout: Annotated[Duration, Field(gt=0)] = 15.0
    reconnect_min: Annotated[Duration, Field(gt=0)] = 1.0
    reconnect_max: Annotated[Duration, Field(gt=0)] = 120.0
    backlog_max: Annotated[int, Field(ge=1, le=100_000)] = 1500

    @model_validator(mode="after")
    def _check(self) -> Hj212Settings:
        if self.version != 2017 and self.version_bits is None:
            raise ValueError(f"version {self.version}: set version_bits (not known to dustgate)")
        if 3600 % self.minute_interval or self.minute_interval % 60:
            raise ValueError("minute_interval must be whole minutes dividing an hour")
        return self

    @property
    def flag_version(self) -> int:
        if self.version_bits is not None:
            return self.version_bits
        return hj212.VERSION_BITS[self.version]

    def factor_map(self) -> dict[str, str]:
        """Metric name to factor code, in upload order."""
        out = dict(hj212.FACTOR_SETS[self.factor_names])
        for metric, code in (self.factors or {}).items():
            if code is None:
                out.pop(metric, None)
            else:
                out[metric] = code
        return out


@dataclass(slots=True)
class _Unit:
    """What one upload carries: one or several packets (a split), sent in order."""

    what: str
    packets: list[Packet]
    done: int = 0  # parts already acknowledged


class _LinkDown(Exception):
    """The platform stopped answering: drop the connection and reconnect."""


COUNTERS = (
    "sent",  # packets written (each try)
    "acked",  # packets acknowledged by a 9014/9011
    "retries",  # packets resent after reply_timeout
    "reconnects",  # connections opened after the first
    "connect_failures",
    "link_timeouts",  # every try of a packet unanswered
    "dropped",  # aggregate units evicted from a full backlog or not encodable
    "requests",  # platform requests answered
    "refused",  # requests answered with QnRtn != 1
    "bad_packets",  # CRC/length/format errors from the platform
    "unmatched_replies",
    "realtime_skipped",  # due while disconnected or with no fresh data
    "late_readings",
    "future_readings",  # stamped more than FUTURE_TOLERANCE ahead of our clock: ignored
)
FUTURE_TOLERANCE = 300.0


class Hj212Uplink:
    """An HJ 212 platform connection: feed readings, run, read stats."""

    def __init__(
        self,
        settings: Hj212Settings,
        site_id: str,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        tick: float = 1.0,
    ) -> None:
        self.settings = settings
        self.site_id = site_id
        self._clock = clock
        self._rng = rng
        self._tick = tick
        self._offset = settings.utc_offset_h * 3600
        self._factors = settings.factor_map()
        self._devices = set(settings.devices) if settings.devices is not None else None
        self._pw = settings.pw.get_secret_value()
        self._latest: dict[str, tuple[float, float, str]] = {}
        self._periods: list[tuple[str, PeriodAggregator]] = []
        for enabled, cn, period in (
            (settings.minute, hj212.CN_MINUTE, settings.minute_interval),
            (settings.hourly, hj212.CN_HOURLY, 3600.0),
            (settings.daily, hj212.CN_DAILY, 86400.0),
        ):
            if enabled:
                self._periods.append(
                    (cn, PeriodAggregator(period, self._offset, grace_s=settings.grace))
                )
        self._backlog: deque[_Unit] = deque()
        self._realtime_slot: _Unit | None = None
        self._counts = dict.fromkeys(COUNTERS, 0)
        self.realtime_on = settings.realtime
        self.rtd_interval = settings.realtime_interval
        self.reply_timeout = settings.reply_timeout
        self.retries = settings.retries
        self._next_rtd: float | None = None
        self._last_qn_ms = 0
        self._connected = False
        self._waiters: dict[str, asyncio.Future[Packet]] = {}
        self._work = asyncio.Event()
        self._write_lock = asyncio.Lock()

    # ------------------------------------------------------------ input

    def on_reading(self, device_id: str, reading: Telemetry) -> None:
        """Take one reading (cheap, never raises on data): latest values and aggregates."""
        if self._devices is not None and device_id not in self._devices:
            return
        ts = reading.ts / 1000
        if ts > self._clock() + FUTURE_TOLERANCE:
            # a device with a wrong clock would open periods that never close
            self._counts["future_readings"] += 1
            return
        for metric, value in reading.values.items():
            if metric not in self._factors:
                continue
            flag = reading.metric_status(metric).hj212_flag
            prev = self._latest.get(metric)
            if prev is None or ts >= prev[0]:
                self._latest[metric] = (ts, value, flag)
            for _, agg in self._periods:
                if not agg.add(ts, metric, value, flag):
                    self._counts["late_readings"] += 1

    # ------------------------------------------------------------ pure-ish steps

    def _template(self, cn: str, now: float, *, reply: bool) -> Packet:
        ms = max(math.floor(now * 1000), self._last_qn_ms + 1)  # QN is unique per request
        self._last_qn_ms = ms
        return Packet(
            cn=cn,
            qn=hj212.qn_text(ms, self._offset),
            st=self.settings.st,
            pw=self._pw,
            mn=self.settings.mn,
            flag=hj212.make_flag(self.settings.flag_version, reply=reply),
        )

    def _codes(self, values: dict[str, Any]) -> list[tuple[str, str]]:
        return [(m, code) for m, code in self._factors.items() if m in values]

    def realtime_unit(self, now: float) -> _Unit | None:
        """A CN 2011 upload of the freshest values, or None when nothing is fresh."""
        stale = self.settings.stale_after
        max_age = stale if stale is not None else max(3 * self.rtd_interval, 180.0)
        fresh = {m: v for m, v in self._latest.items() if now - v[0] <= max_age}
        samples = {code: Sample(fresh[m][1], fresh[m][2]) for m, code in self._codes(fresh)}
        if not samples:
            return None
        groups = hj212.realtime_groups(
            hj212.data_time(now, self._offset), samples, self.settings.decimals
        )
        template = self._template(hj212.CN_REALTIME, now, reply=self.settings.reply)
        return _Unit("realtime", hj212.split_upload(template, groups))

    def collect(self, now: float) -> int:
        """Close finished periods into backlog units; return how many were queued."""
        queued = 0
        for cn, agg in self._periods:
            for start, stats in agg.close(now):
                by_code = {code: stats[m] for m, code in self._codes(stats)}
                when = hj212.data_time(start, self._offset)
                groups = hj212.aggregate_groups(when, by_code, self.settings.decimals)
                template = self._template(cn, now, reply=self.settings.reply)
                try:
                    unit = _Unit(f"{cn} {when}", hj212.split_upload(template, groups))
                except Hj212Error as exc:
                    self._counts["dropped"] += 1
                    log.error("hj212 %s: cannot encode %s %s: %s", self.site_id, cn, when, exc)
                    continue
                if len(self._backlog) >= self.settings.backlog_max:
                    old = self._backlog.popleft()
                    self._counts["dropped"] += 1
                    log.warning("hj212 %s: backlog full, dropped %s", self.site_id, old.what)
                self._backlog.append(unit)
                queued += 1
        if queued:
            self._work.set()
        return queued

    def tick(self, now: float) -> None:
        """Clock step: close periods, and queue a real-time upload when it is due."""
        self.collect(now)
        interval = self.rtd_interval
        if self._next_rtd is None:
            self._next_rtd = (math.floor(now / interval) + 1) * interval
        if now < self._next_rtd:
            return
        self._next_rtd = (math.floor(now / interval) + 1) * interval
        if not self.realtime_on:
            return
        unit = self.realtime_unit(now) if self._connected else None
        if unit is None:
            self._counts["realtime_skipped"] += 1
            return
        self._realtime_slot = unit  # a newer one replaces one not yet sent
        self._work.set()

    def handle_request(self, req: Packet, now: float) -> list[Packet]:
        """Answer a platform request (and apply it); the packets to send back."""
        flag = hj212.make_flag(self.settings.flag_version, reply=False)

        def answer(cn: str, cp: str, st: str = hj212.ST_SYSTEM) -> Packet:
            return hj212.reply_to(req, cn, cp, st=st, pw=self._pw, mn=self.settings.mn, flag=flag)

        def qn_rtn(code: int) -> Packet:
            if code != hj212.QN_READY:
                self._counts["refused"] += 1
            return answer(hj212.CN_QN_REPLY, f"QnRtn={code}")

        def exe_rtn(code: int) -> Packet:
            return answer(hj212.CN_EXE_REPLY, f"ExeRtn={code}")

        self._counts["requests"] += 1
        if req.mn is not None and req.mn != self.settings.mn:
            return [qn_rtn(hj212.QN_BAD_MN)]
        if req.pw is not None and req.pw != self._pw:
            return [qn_rtn(hj212.QN_BAD_PW)]
        try:
            fields = req.cp_fields()
        except Hj212Error:
            fields = {}
        cn = req.cn
        ours = self.settings.st
        if cn == hj212.CN_GET_TIME:
            pol = f"PolId={fields['PolId']};" if "PolId" in fields else ""
            now_text = hj212.data_time(now, self._offset)
            return [
                qn_rtn(hj212.QN_READY),
                answer(cn, f"{pol}SystemTime={now_text}", ours),
                exe_rtn(hj212.EXE_OK),
            ]
        if cn == hj212.CN_SET_TIME:
            asked = fields.get("SystemTime", "")
            try:
                skew = hj212.parse_data_time(asked, self._offset) - now
                log.warning(
                    "hj212 %s: platform asks to set the clock to %s (%+.1f s); ignored, NTP "
                    "owns the clock",
                    self.site_id,
                    asked,
                    skew,
                )
            except Hj212Error:
                log.warning("hj212 %s: set-time request with bad SystemTime", self.site_id)
                return [qn_rtn(hj212.QN_READY), exe_rtn(hj212.EXE_CONDITION)]
            return [qn_rtn(hj212.QN_READY), exe_rtn(hj212.EXE_OK)]
        if cn == hj212.CN_GET_RTD_INTERVAL:
            return [
                qn_rtn(hj212.QN_READY),
                answer(cn, f"RtdInterval={round(self.rtd_interval)}", ours),
                exe_rtn(hj212.EXE_OK),
            ]
        if cn == hj212.CN_SET_RTD_INTERVAL:
            value = fields.get("RtdInterval", "")
            if not value.isdigit() or not 30 <= int(value) <= 3600:
                return [qn_rtn(hj212.QN_READY), exe_rtn(hj212.EXE_CONDITION)]
            self.rtd_interval = float(value)
            self._next_rtd = None
            log.info("hj212 %s: real-time interval set to %s s", self.site_id, value)
            return [qn_rtn(hj212.QN_READY), exe_rtn(hj212.EXE_OK)]
        if cn == hj212.CN_GET_MIN_INTERVAL:
            minutes = round(self.settings.minute_interval / 60)
            return [
                qn_rtn(hj212.QN_READY),
                answer(cn, f"MinInterval={minutes}", ours),
                exe_rtn(hj212.EXE_OK),
            ]
        if cn == hj212.CN_TIMEOUT_RETRIES:
            over, count = fields.get("OverTime", ""), fields.get("ReCount", "")
            if not (over.isdigit() and count.isdigit() and int(over) > 0 and int(count) <= 10):
                return [qn_rtn(hj212.QN_READY), exe_rtn(hj212.EXE_CONDITION)]
            self.reply_timeout, self.retries = float(over), int(count)
            return [qn_rtn(hj212.QN_READY), exe_rtn(hj212.EXE_OK)]
        if cn == hj212.CN_REALTIME:
            self.realtime_on = True
            self._next_rtd = None
            return [qn_rtn(hj212.QN_READY)]
        if cn == hj212.CN_STOP_REALTIME:
            self.realtime_on = False
            self._realtime_slot = None
            return [answer(hj212.CN_NOTICE_REPLY, "")]
        if cn == hj212.CN_SET_MIN_INTERVAL:
            return [qn_rtn(hj212.QN_REFUSED)]
        return [qn_rtn(hj212.QN_BAD_CN)]

    # ------------------------------------------------------------ shell

    def stats(self) -> dict[str, int | float | bool]:
        out: dict[str, int | float | bool] = dict(self._counts)
        out["backlog"] = len(self._backlog)
        out["connected"] = self._connected
        out["realtime_on"] = self.realtime_on
        out["rtd_interval"] = self.rtd_interval
        return out

    async def run(self) -> None:
        """Run until cancelled: clock ticks and the connection, reconnecting forever."""
        ticker = asyncio.create_task(self._ticker())
        try:
            await self._connection_loop()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _ticker(self) -> None:
        while True:
            try:
                self.tick(self._clock())
            except Exception:  # a bug here must not stop the uplink
                log.exception("hj212 %s: tick failed", self.site_id)
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
                    self.site_id,
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
            log.info("hj212 %s: connected to %s:%s", self.site_id, s.host, s.port)
            started = time.monotonic()
            try:
                await self._session(reader, writer)
            except (OSError, _LinkDown) as exc:
                log.warning("hj212 %s: link down: %s", self.site_id, exc or type(exc).__name__)
            except Exception:  # a bug must not end the uplink: log it, reconnect
                log.exception("hj212 %s: session failed", self.site_id)
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
                log.warning("hj212 %s: bad data from platform: %s", self.site_id, parser.errors)
            for p in packets:
                await self._on_packet(p, writer)

    async def _on_packet(self, p: Packet, writer: asyncio.StreamWriter) -> None:
        if p.cn in (hj212.CN_DATA_REPLY, hj212.CN_QN_REPLY, hj212.CN_EXE_REPLY):
            fut = self._waiters.get(p.qn or "")
            if fut is not None and not fut.done():
                fut.set_result(p)
            elif p.cn != hj212.CN_EXE_REPLY:
                self._counts["unmatched_replies"] += 1
            return
        replies = self.handle_request(p, self._clock())
        log.info("hj212 %s: platform request CN=%s QN=%s", self.site_id, p.cn, p.qn)
        for r in replies:
            await self._write(writer, hj212.encode_packet(r))
        if p.cn == hj212.CN_REALTIME and self.realtime_on:
            unit = self.realtime_unit(self._clock())
            if unit is not None:
                self._realtime_slot = unit
                self._work.set()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        async with self._write_lock:
            writer.write(data)
            await writer.drain()

    async def _send_loop(self, writer: asyncio.StreamWriter) -> None:
        while True:
            if self._realtime_slot is not None:
                unit = self._realtime_slot
                self._realtime_slot = None
                await self._send_unit(writer, unit)
            elif self._backlog:
                unit = self._backlog[0]
                await self._send_unit(writer, unit)
                if self._backlog and self._backlog[0] is unit:  # not evicted meanwhile
                    self._backlog.popleft()
            else:
                self._work.clear()
                await self._work.wait()

    async def _send_unit(self, writer: asyncio.StreamWriter, unit: _Unit) -> None:
        while unit.done < len(unit.packets):
            packet = unit.packets[unit.done]
            raw = hj212.encode_packet(packet)
            for attempt in range(self.retries + 1):
                if attempt:
                    self._counts["retries"] += 1
                await self._write(writer, raw)
                self._counts["sent"] += 1
                if not packet.wants_reply:
                    break
                if await self._await_reply(packet.qn or ""):
                    self._counts["acked"] += 1
                    break
            else:
                self._counts["link_timeouts"] += 1
                # a new connection gets a split unit whole: the platform may not
                # join parts across connections (duplicates share QN and PNO)
                unit.done = 0
                raise _LinkDown(f"no reply to {unit.what} after {self.retries + 1} tries")
            unit.done += 1

    async def _await_reply(self, qn: str) -> bool:
        fut: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._waiters[qn] = fut
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
            # cancellation that races with the reply, and the task never ends
            async with asyncio.timeout(self.reply_timeout):
                await fut
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(qn, None)
        return True
