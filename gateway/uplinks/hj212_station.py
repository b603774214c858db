"""What a site says to an HJ 212 platform and how it answers: pure, clock passed in.

:class:`Station` takes readings and the time and returns packets; it never
touches a socket or a file (:mod:`gateway.uplinks.hj212_link` does). It keeps

- the freshest value and data flag of every mapped metric, for real-time
  uploads (CN 2011);
- minute (2051), hourly (2061) and daily (2031) statistics per factor, closed
  into :class:`Record` s ``grace`` seconds after their period ends;
- what the platform may change at run time (:class:`Runtime`): password
  (1072), real-time interval (1062), minute interval (1064), real-time on/off
  (2011/2012), reply timeout and retries (1000).

Platform requests (:meth:`Station.handle_request`) get the standard answers: a
9011 ``QnRtn`` (1 ready; 3 bad PW, 4 bad MN, 5 bad ST, 7 bad QN, 8 unknown CN,
9 bad CRC), then the data, then a 9012 ``ExeRtn`` (1 done, 3 bad parameters).
The clock is never set from the platform (1012): NTP owns it. The skew the
platform's time shows is logged and kept in :attr:`Station.platform_skew`, so
a Pi without a real-time clock that booted offline is noticed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from gateway.logthrottle import ThrottledLog
from gateway.protocol import Telemetry
from gateway.uplinks import hj212
from gateway.uplinks.hj212 import Hj212Error, Packet, Sample
from gateway.uplinks.hj212_periods import PeriodAggregator
from gateway.uplinks.hj212_settings import MINUTE_INTERVALS, Hj212Settings

log = logging.getLogger(__name__)

FUTURE_TOLERANCE = 300.0
"""Readings stamped further ahead of our clock are ignored (a device with a bad clock)."""

_PW_TEXT = hj212.FACTOR_CODE  # printable, no separators; passwords are short


@dataclass(frozen=True, slots=True)
class Record:
    """One minute/hour/day record for the platform, as kept in the backlog."""

    cn: str
    data_time: str  # YYYYMMDDhhmmss, platform local time, start of the period
    cp: str  # the CP text, DataTime group first


@dataclass(slots=True)
class Runtime:
    """What the platform may change while we run (kept on disk by the link)."""

    pw: str
    rtd_interval: float
    minute_interval: float
    realtime_on: bool
    reply_timeout: float
    retries: int

    @classmethod
    def from_settings(cls, s: Hj212Settings) -> Runtime:
        return cls(
            pw=s.pw.get_secret_value(),
            rtd_interval=s.realtime_interval,
            minute_interval=s.minute_interval,
            realtime_on=s.realtime,
            reply_timeout=s.reply_timeout,
            retries=s.retries,
        )

    def merged(self, saved: dict[str, Any], saved_base: dict[str, Any]) -> Runtime:
        """This runtime (from site.yaml) with what the platform set earlier.

        ``saved_base`` is what site.yaml said when ``saved`` was written: a value
        the operator has since changed in site.yaml wins over the platform's.
        """
        mine = asdict(self)
        out = dict(mine)
        for key, value in saved.items():
            if key in mine and saved_base.get(key) == mine[key]:
                out[key] = value
        return Runtime(**out)


@dataclass(slots=True)
class _Aggregate:
    cn: str
    agg: PeriodAggregator
    since: float = -math.inf  # readings from here on (a changed minute interval)
    until: float = math.inf  # up to here (exclusive)


COUNTERS = (
    "requests",  # platform requests answered
    "refused",  # requests answered with QnRtn != 1
    "late_readings",  # for a period already closed
    "future_readings",  # stamped more than FUTURE_TOLERANCE ahead of our clock: ignored
    "unencodable",  # records that cannot be put into packets (logged)
)


class Station:
    """One site as one platform sees it: readings in, packets and records out."""

    def __init__(self, settings: Hj212Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or Runtime.from_settings(settings)
        self.runtime_changed = False  # set when a request changed :attr:`runtime`
        self.platform_skew: float | None = None  # platform time minus ours (CN 1012)
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._log = ThrottledLog(log)  # lines the platform's requests cause, on our clock
        self._offset = settings.utc_offset_h * 3600
        self._factors = settings.factor_map()
        self._devices = set(settings.devices) if settings.devices is not None else None
        self._latest: dict[str, tuple[float, float, str]] = {}
        self._aggs: list[_Aggregate] = []
        for enabled, cn, period in (
            (settings.minute, hj212.CN_MINUTE, self.runtime.minute_interval),
            (settings.hourly, hj212.CN_HOURLY, 3600.0),
            (settings.daily, hj212.CN_DAILY, 86400.0),
        ):
            if enabled:
                self._aggs.append(_Aggregate(cn, self._aggregator(period)))
        self._next_rtd: float | None = None
        self._last_qn_ms = 0

    def _aggregator(self, period: float) -> PeriodAggregator:
        return PeriodAggregator(period, self._offset, grace_s=self.settings.grace)

    # ------------------------------------------------------------ readings

    def on_reading(self, device_id: str, reading: Telemetry, now: float) -> None:
        """Take one reading (cheap, never raises on data)."""
        if self._devices is not None and device_id not in self._devices:
            return
        ts = reading.ts / 1000
        if ts > now + FUTURE_TOLERANCE:
            # a device with a wrong clock would open periods that never close
            self.counts["future_readings"] += 1
            return
        for metric, value in reading.values.items():
            if metric not in self._factors:
                continue
            flag = reading.metric_status(metric).hj212_flag
            prev = self._latest.get(metric)
            if prev is None or ts >= prev[0]:
                self._latest[metric] = (ts, value, flag)
            for a in self._aggs:
                if a.since <= ts < a.until and not a.agg.add(ts, metric, value, flag):
                    self.counts["late_readings"] += 1

    # ------------------------------------------------------------ what to send

    def _template(self, cn: str, now: float, *, reply: bool, st: str | None = None) -> Packet:
        ms = max(math.floor(now * 1000), self._last_qn_ms + 1)  # QN is unique per request
        self._last_qn_ms = ms
        return Packet(
            cn=cn,
            qn=hj212.qn_text(ms, self._offset),
            st=st or self.settings.st,
            pw=self.runtime.pw,
            mn=self.settings.mn,
            flag=hj212.make_flag(self.settings.flag_version, reply=reply),
        )

    def _codes(self, values: dict[str, Any]) -> list[tuple[str, str]]:
        return [(m, code) for m, code in self._factors.items() if m in values]

    def realtime_due(self, now: float) -> bool:
        """Whether a real-time upload is due now (an interval boundary passed, and on)."""
        interval = self.runtime.rtd_interval
        if self._next_rtd is None:
            self._next_rtd = (math.floor(now / interval) + 1) * interval
        if now < self._next_rtd:
            return False
        self._next_rtd = (math.floor(now / interval) + 1) * interval
        return self.runtime.realtime_on

    def realtime_packets(self, now: float) -> list[Packet] | None:
        """A CN 2011 upload of the freshest values, or None when nothing is fresh."""
        stale = self.settings.stale_after
        max_age = stale if stale is not None else max(3 * self.runtime.rtd_interval, 180.0)
        fresh = {m: v for m, v in self._latest.items() if now - v[0] <= max_age}
        samples = {code: Sample(fresh[m][1], fresh[m][2]) for m, code in self._codes(fresh)}
        if not samples:
            return None
        groups = hj212.realtime_groups(
            hj212.data_time(now, self._offset), samples, self.settings.decimals
        )
        reply = self.settings.realtime_reply
        template = self._template(
            hj212.CN_REALTIME, now, reply=self.settings.reply if reply is None else reply
        )
        return hj212.split_upload(template, groups)

    def close_periods(self, now: float) -> list[Record]:
        """Records of the periods that have finished (oldest first per kind)."""
        out: list[Record] = []
        for a in self._aggs:
            for start, stats in a.agg.close(now):
                by_code = {code: stats[m] for m, code in self._codes(stats)}
                if not by_code:
                    continue
                when = hj212.data_time(start, self._offset)
                groups = hj212.aggregate_groups(when, by_code, self.settings.decimals)
                out.append(Record(a.cn, when, hj212.join_cp(groups)))
        # a minute aggregator replaced by a new interval leaves once it is drained
        self._aggs = [a for a in self._aggs if not (now >= a.until + a.agg.grace_s + 1)]
        return out

    def record_packets(self, record: Record, now: float, qn: str | None = None) -> list[Packet]:
        """The packets that carry ``record`` (split when long): under ``qn`` when it
        was sent before, else a fresh QN."""
        template = self._template(record.cn, now, reply=self.settings.reply)
        if qn is not None:
            template = replace(template, qn=qn)
        return hj212.split_upload(template, hj212.cp_groups(record.cp))

    def heartbeat_packet(self, now: float) -> Packet | None:
        hb = self.settings.heartbeat
        if hb is None:
            return None
        return self._template(hb.cn, now, reply=False, st=hb.st)

    def time_request(self, now: float) -> Packet:
        """CN 1013: ask the platform for its time (it answers with a 1012)."""
        return self._template(hj212.CN_TIME_CALIBRATION, now, reply=False)

    # ------------------------------------------------------------ state on disk

    def snapshot(self) -> dict[str, Any]:
        """Open periods as plain data, so a restart does not lose an hour's statistics."""
        return {a.cn: a.agg.snapshot() for a in self._aggs if math.isinf(a.until)}

    def restore(self, snap: dict[str, Any]) -> None:
        for a in self._aggs:
            if a.cn in snap and math.isinf(a.until):
                a.agg.restore(snap[a.cn])

    # ------------------------------------------------------------ platform requests

    def _set(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.runtime, key, value)
        self.runtime_changed = True

    def refuse_crc(self, req: Packet) -> list[Packet]:
        """The answer to a request whose CRC was wrong (QnRtn 9), if it can be addressed."""
        if req.qn is None or req.cn in hj212.REPLY_CNS:
            return []
        self.counts["requests"] += 1
        self.counts["refused"] += 1
        return [self._answer(req, hj212.CN_QN_REPLY, f"QnRtn={hj212.QN_BAD_CRC}")]

    def _answer(self, req: Packet, cn: str, cp: str, st: str = hj212.ST_SYSTEM) -> Packet:
        flag = hj212.make_flag(self.settings.flag_version, reply=False)
        return hj212.reply_to(
            req, cn, cp, st=st, pw=self.runtime.pw, mn=self.settings.mn, flag=flag
        )

    def handle_request(self, req: Packet, now: float) -> list[Packet]:
        """Answer a platform request (and apply it); the packets to send back.

        A request whose Flag has no A bit (no reply wanted) gets no 9011 "ready"
        and no 9013: only the data it asked for and the 9012 result. A refusal
        is always sent: a command dropped in silence helps nobody.
        """
        replies = self._handle(req, now)
        if req.flag is None or req.wants_reply:
            return replies
        return [
            r
            for r in replies
            if not (r.cn == hj212.CN_NOTICE_REPLY or (r.cn == hj212.CN_QN_REPLY and r.cp == _READY))
        ]

    def _handle(self, req: Packet, now: float) -> list[Packet]:
        ours = self.settings.st

        def answer(cn: str, cp: str, st: str = hj212.ST_SYSTEM) -> Packet:
            return self._answer(req, cn, cp, st)

        def qn_rtn(code: int) -> Packet:
            if code != hj212.QN_READY:
                self.counts["refused"] += 1
            return answer(hj212.CN_QN_REPLY, f"QnRtn={code}")

        def exe_rtn(code: int) -> Packet:
            return answer(hj212.CN_EXE_REPLY, f"ExeRtn={code}")

        def done(*data: Packet) -> list[Packet]:
            return [qn_rtn(hj212.QN_READY), *data, exe_rtn(hj212.EXE_OK)]

        def bad_parameters() -> list[Packet]:
            return [qn_rtn(hj212.QN_READY), exe_rtn(hj212.EXE_CONDITION)]

        self.counts["requests"] += 1
        if req.mn is not None and req.mn != self.settings.mn:
            return [qn_rtn(hj212.QN_BAD_MN)]
        if req.pw is not None and req.pw != self.runtime.pw:
            return [qn_rtn(hj212.QN_BAD_PW)]
        if req.st is not None and req.st not in (ours, hj212.ST_SYSTEM):
            return [qn_rtn(hj212.QN_BAD_ST)]
        if req.qn is not None and not (len(req.qn) == 17 and req.qn.isdigit()):
            return [qn_rtn(hj212.QN_BAD_QN)]
        try:
            fields = req.cp_fields()
        except Hj212Error:
            fields = {}
        cn = req.cn
        if cn == hj212.CN_GET_TIME:
            pol = f"PolId={fields['PolId']};" if "PolId" in fields else ""
            now_text = hj212.data_time(now, self._offset)
            return done(answer(cn, f"{pol}SystemTime={now_text}", ours))
        if cn == hj212.CN_SET_TIME:
            try:
                skew = hj212.parse_data_time(fields.get("SystemTime", ""), self._offset) - now
            except Hj212Error:
                return bad_parameters()
            self.platform_skew = skew
            level = logging.WARNING if abs(skew) > 60 else logging.INFO
            self._log.log(
                level,
                "set-time",
                "hj212 %s: platform time is %+.1f s from ours; not applied (NTP owns the clock)",
                self.settings.key,
                skew,
                now=now,
            )
            return done()
        if cn == hj212.CN_GET_RTD_INTERVAL:
            return done(answer(cn, f"RtdInterval={round(self.runtime.rtd_interval)}", ours))
        if cn == hj212.CN_SET_RTD_INTERVAL:
            seconds = hj212.parse_uint(fields.get("RtdInterval", ""))
            if seconds is None or not 30 <= seconds <= 3600:
                return bad_parameters()
            self._set(rtd_interval=float(seconds))
            self._next_rtd = None
            return done()
        if cn == hj212.CN_GET_MIN_INTERVAL:
            minutes = round(self.runtime.minute_interval / 60)
            return done(answer(cn, f"MinInterval={minutes}", ours))
        if cn == hj212.CN_SET_MIN_INTERVAL:
            wanted = hj212.parse_uint(fields.get("MinInterval", ""))
            if wanted is None or wanted not in MINUTE_INTERVALS:
                return bad_parameters()
            self._change_minute_interval(wanted * 60.0, now)
            return done()
        if cn == hj212.CN_NEW_PASSWORD:
            new = fields.get("NewPW", "")
            if not _PW_TEXT.match(new):
                return bad_parameters()
            # the answers to this request still carry the old password
            replies = done()
            self._set(pw=new)
            self._log.warning(
                "new-password",
                "hj212 %s: the platform set a new password",
                self.settings.key,
                now=now,
            )
            return replies
        if cn == hj212.CN_TIMEOUT_RETRIES:
            over = hj212.parse_uint(fields.get("OverTime", ""))
            count = hj212.parse_uint(fields.get("ReCount", ""))
            if over is None or count is None or not (over > 0 and count <= 10):
                return bad_parameters()
            self._set(reply_timeout=float(over), retries=count)
            return done()
        if cn == hj212.CN_REALTIME:
            self._set(realtime_on=True)
            self._next_rtd = None
            return [qn_rtn(hj212.QN_READY)]
        if cn == hj212.CN_STOP_REALTIME:
            self._set(realtime_on=False)
            return [answer(hj212.CN_NOTICE_REPLY, "")]
        return [qn_rtn(hj212.QN_BAD_CN)]

    def _change_minute_interval(self, period: float, now: float) -> None:
        """Switch minute records to ``period`` where both intervals have a boundary.

        The running period finishes under the old interval and no record covers
        a part of a period, so the switch waits for the first time that is a
        boundary of both (at the latest the next full hour).
        """
        if period == self.runtime.minute_interval:
            return
        current = next(
            (a for a in self._aggs if a.cn == hj212.CN_MINUTE and math.isinf(a.until)), None
        )
        self._set(minute_interval=period)
        if current is None:
            return
        both = math.lcm(round(current.agg.period_s), round(period))
        local = now + self._offset
        switch = (math.floor(local / both) + 1) * both - self._offset
        current.until = switch
        self._aggs.append(_Aggregate(hj212.CN_MINUTE, self._aggregator(period), since=switch))
        self._log.info(
            "minute-interval",
            "hj212 %s: minute records every %d min from %s",
            self.settings.key,
            round(period / 60),
            hj212.data_time(switch, self._offset),
            now=now,
        )


_READY = f"QnRtn={hj212.QN_READY}"
