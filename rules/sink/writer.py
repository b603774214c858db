"""The InfluxDB sink: batches, retries, spools to disk, dead-letters bad lines.

Usage (from the rule engine service)::

    sink = InfluxSink(settings.influx, state_dir)
    await sink.start()
    sink.add(points.telemetry_line(site, device, msg))   # never blocks, never raises I/O
    ...
    await sink.close()                                    # flushes; unsent data -> spool

How it works.  ``add`` appends to an in-memory deque.  One writer thread
(blocking ``http.client``; the event loop never waits on the database) cuts
batches of ``batch_size`` lines, or whatever is there every
``flush_interval``, and:

* spool empty, database answering: POST the batch (gzip, ``precision=ms``);
* no answer / 5xx / 429 / auth or "database not found": the batch is
  appended to the spool on disk and a retry is scheduled with exponential
  backoff and jitter (``retry_base_delay`` doubling up to
  ``max_retry_delay``; a ``Retry-After`` header wins);
* while the spool holds anything, new batches are appended behind it, so the
  database receives points in the order they were added; the spool is
  replayed oldest first, ``batch_size`` lines per POST, as soon as the
  database answers again.  The spool survives a restart (see
  :mod:`rules.sink.spool`), is bounded by ``spool_max_bytes`` (oldest segments
  dropped and counted) and replay is at-least-once: a batch may be sent twice
  after a crash, which is harmless because each point carries its own
  timestamp and overwrites itself;
* HTTP 400/422: InfluxDB refused some lines (type conflict, parse error,
  outside the retention policy).  :mod:`rules.sink.rejects` reads the message to
  find them; if it cannot, the batch is bisected until the refused lines are
  isolated.  Refused lines go to the dead-letter file (one JSON object per
  line: ``time``, ``line``, ``error``), everything else is stored, nothing
  stalls.  (If a retryable failure interrupts a bisection, the undecided
  lines are appended to the tail of the spool: out of order, which InfluxDB
  does not mind since points carry their timestamps.)

At most ``flush_interval`` of points live only in memory; a crash loses
those.  Everything else is in InfluxDB or in the spool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from .influxhttp import HttpResult, InfluxHttp
from .rejects import analyse, error_message
from .settings import InfluxSettings
from .spool import Spool, SpoolError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 3600.0


def backoff_delay(attempt: int, base: float, cap: float, rand: float) -> float:
    """Exponential backoff with "equal jitter": in [d/2, d], d = min(cap, base*2^(n-1))."""
    d = min(cap, base * (2 ** max(0, min(attempt - 1, 30))))
    return d / 2 + rand * d / 2


@dataclass
class SinkCounters:
    """Lines, not batches.  Monotonic for the life of one sink object."""

    added: int = 0
    written: int = 0  # acknowledged by the database (live or replayed)
    retried: int = 0  # failed attempts that will be retried (HTTP requests, not lines)
    spooled: int = 0  # lines appended to the spool
    replayed: int = 0  # lines written from the spool
    dead_lettered: int = 0
    dropped_spool_full: int = 0
    dropped_buffer_full: int = 0  # only if the spool itself cannot be written (disk)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Retry:
    lines: list[str]
    retry_after: float | None
    why: str


class InfluxSink:
    """See the module docstring.  ``add``/``add_many`` may be called from any thread."""

    def __init__(
        self,
        settings: InfluxSettings,
        state_dir: Path | str,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ):
        self.settings = settings
        state = Path(state_dir)
        self.spool_dir = settings.spool_dir or state / "spool"
        self.dead_letter_file = settings.dead_letter_file or state / "dead-letter.jsonl"
        self.counters = SinkCounters()
        self._clock = clock
        self._rand = rand
        self._buf: collections.deque[str] = collections.deque()
        self._batch = settings.batch_size
        self._max_buffer = max(100_000, 20 * settings.batch_size)
        self._wake = threading.Event()
        self._force = threading.Event()  # flush(): send even a partial batch now
        self._idle = threading.Event()
        self._stopping = threading.Event()
        self._close_deadline = float("inf")
        self._spool = Spool(self.spool_dir, settings.spool_max_bytes, settings.spool_segment_bytes)
        self._http = InfluxHttp(settings)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._attempt = 0
        self._retry_at = 0.0
        self._db_ready = not (settings.api == "v1" and settings.create_database)
        self._outage_logged = False
        self.last_error = ""

    # ---------------------------------------------------------------- shell

    async def start(self) -> None:
        """Open (and recover) the spool, start the writer thread."""
        if self._thread is not None or self._closed:
            raise RuntimeError("an InfluxSink can be started once (make a new one)")
        await asyncio.to_thread(self._spool.open)
        if self._spool.has_data():
            log.info(
                "influx sink: %d bytes in the spool from before, replaying",
                self._spool.pending_bytes,
            )
        self._thread = threading.Thread(target=self._run, name="influx-sink", daemon=True)
        self._thread.start()

    async def __aenter__(self) -> InfluxSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def add(self, line: str | None) -> None:
        """Queue one line of line protocol (``None`` is ignored, for ``points.*`` results)."""
        if line is None:
            return
        if self._closed:
            raise RuntimeError("InfluxSink.add() after close(): the line would be lost")
        buf = self._buf
        buf.append(line)
        self.counters.added += 1
        if self._idle.is_set():
            self._idle.clear()
        if len(buf) >= self._batch:
            self._wake.set()

    def add_many(self, lines: Iterable[str | None]) -> None:
        if self._closed:
            raise RuntimeError("InfluxSink.add_many() after close(): the lines would be lost")
        kept = [line for line in lines if line is not None]
        self._buf.extend(kept)
        self.counters.added += len(kept)
        if self._idle.is_set():
            self._idle.clear()
        if len(self._buf) >= self._batch:
            self._wake.set()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything added so far is written (buffer and spool empty)."""
        if self._thread is None:
            return not self._buf
        self._force.set()
        self._wake.set()
        return await asyncio.to_thread(self._idle.wait, timeout)

    async def close(self) -> None:
        """Send what is buffered (spooling it if the database does not answer within
        ``close_timeout``), fsync the spool, stop the thread."""
        self._closed = True
        if self._thread is None:
            return
        self._close_deadline = self._clock() + self.settings.close_timeout
        self._stopping.set()
        self._wake.set()
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def spool_bytes(self) -> int:
        return self._spool.pending_bytes

    @property
    def spooling(self) -> bool:
        """True while data waits in the spool (database away or just back)."""
        return self._spool.has_data()

    # --------------------------------------------------------- writer thread

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with contextlib.suppress(Exception):
                self._spool.close()
            self._http.close()

    def _loop(self) -> None:
        interval = self.settings.flush_interval
        next_flush = self._clock() + interval
        while True:
            self._wake.clear()
            now = self._clock()
            stopping = self._stopping.is_set()
            give_up = stopping and now >= self._close_deadline
            if now >= next_flush:
                next_flush = now + interval
                flush_due = True
            else:
                flush_due = self._force.is_set()
            n = len(self._buf)
            try:
                if n and (n >= self._batch or flush_due or stopping):
                    chunk = self._take(self._batch)
                    if not self._buf:
                        self._force.clear()
                    if self._spool.has_data() or give_up or now < self._retry_at:
                        self._to_spool(chunk)
                    else:
                        self._send_live(chunk)
                    continue
                if self._spool.has_data() and not stopping and now >= self._retry_at:
                    self._replay_step()
                    continue
            except SpoolError as exc:
                self._spool_failed(exc)
                if give_up:  # closing, database away and disk refusing: nothing left to try
                    self.counters.dropped_buffer_full += len(self._buf)
                    log.error("influx sink: closing with %d unsaved lines lost", len(self._buf))
                    self._buf.clear()
                    return
            except Exception:  # a bug must not stop the writer: log, pause, carry on
                log.exception("influx sink: unexpected error in the writer thread")
                self._retry_at = self._clock() + self.settings.max_retry_delay
            if stopping and not self._buf:
                return
            if not self._buf and not self._spool.has_data():
                self._idle.set()
                if self._buf:  # an add() raced with us
                    self._idle.clear()
                    continue
            timeout = next_flush - now
            if self._spool.has_data() and not stopping:
                timeout = min(timeout, self._retry_at - now)
            if stopping:
                timeout = min(timeout, self._close_deadline - now)
            self._wake.wait(max(timeout, 0.001))

    def _take(self, n: int) -> list[str]:
        buf = self._buf
        if len(buf) <= n:
            out = list(buf)
            for _ in range(len(out)):
                buf.popleft()
            return out
        return [buf.popleft() for _ in range(n)]

    def _spool_failed(self, exc: SpoolError) -> None:
        log.error("influx sink: %s; keeping points in memory", exc)
        self.last_error = str(exc)
        self._retry_at = self._clock() + backoff_delay(
            max(1, self._attempt),
            self.settings.retry_base_delay,
            self.settings.max_retry_delay,
            self._rand(),
        )
        excess = len(self._buf) - self._max_buffer
        if excess > 0:
            for _ in range(excess):
                self._buf.popleft()
            self.counters.dropped_buffer_full += excess

    def _to_spool(self, lines: list[str]) -> None:
        try:
            dropped = self._spool.append(lines)
        except SpoolError:
            self._buf.extendleft(reversed(lines))  # keep them; retried after a pause
            raise
        self.counters.spooled += len(lines)
        if dropped:
            self.counters.dropped_spool_full += dropped
            log.warning(
                "influx sink: spool over %d bytes, dropped %d oldest lines",
                self.settings.spool_max_bytes,
                dropped,
            )

    def _send_live(self, chunk: list[str]) -> None:
        try:
            failure = self._deliver(chunk)
        except Exception as exc:  # never lose the batch to a bug: keep it in the spool
            self._to_spool(chunk)
            failure = _Retry([], None, f"internal error: {exc!r}")
            self._failed(failure)
            raise
        if failure is None:
            self._succeeded()
            return
        self._to_spool(failure.lines)
        self._failed(failure)

    def _replay_step(self) -> None:
        lines, cursor = self._spool.peek(self._batch)
        if not lines:  # defensive: nothing readable, skip it
            self._spool.commit(cursor)
            return
        failure = self._deliver(lines)
        if failure is None:
            self._spool.commit(cursor)
            self.counters.replayed += len(lines)
            self._succeeded()
            return
        if len(failure.lines) < len(lines):
            # progress inside a bisection: requeue only the undecided lines (at the tail)
            self._spool.commit(cursor)
            self.counters.replayed += len(lines) - len(failure.lines)
            self._to_spool(failure.lines)
        self._failed(failure)

    def _succeeded(self) -> None:
        if self._outage_logged:
            log.info("influx sink: database answers again")
            self._outage_logged = False
        self._attempt = 0
        self._retry_at = 0.0

    def _failed(self, failure: _Retry) -> None:
        self.counters.retried += 1
        self._attempt += 1
        self.last_error = failure.why
        if failure.retry_after is not None:
            delay = min(failure.retry_after, MAX_RETRY_AFTER)
        else:
            delay = backoff_delay(
                self._attempt,
                self.settings.retry_base_delay,
                self.settings.max_retry_delay,
                self._rand(),
            )
        self._retry_at = self._clock() + delay
        if not self._outage_logged:
            log.warning(
                "influx sink: write failed (%s); spooling, retry in %.1fs", failure.why, delay
            )
            self._outage_logged = True

    # ------------------------------------------------------------- delivery

    def _post(self, lines: list[str]) -> HttpResult:
        if not self._db_ready:
            res = self._http.create_database()
            if not res.ok:
                return (
                    res
                    if res.retryable
                    else HttpResult(None, error=f"CREATE DATABASE failed: {res.describe()}")
                )
            self._db_ready = True
        res = self._http.write(lines)
        if res.status == 404 and self.settings.api == "v1" and self.settings.create_database:
            self._db_ready = False  # dropped behind our back: create again next time
        return res

    def _deliver(self, lines: list[str]) -> _Retry | None:
        """Write ``lines``; dead-letter refused ones.  Returns what still needs a retry."""
        res = self._post(lines)
        if res.ok:
            self.counters.written += len(lines)
            return None
        if res.retryable:
            return _Retry(lines, res.retry_after, res.describe())
        if res.status == 413 and len(lines) > 1:
            return self._bisect(lines)
        message = error_message(res.body) or res.describe()
        if len(lines) == 1:
            self._dead_letter(lines, message)
            return None
        verdict = analyse(lines, message)
        if not verdict.understood:
            return self._bisect(lines)
        self._dead_letter([lines[i] for i in verdict.rejected], message)
        decided = set(verdict.rejected) | set(verdict.resend)
        self.counters.written += len(lines) - len(decided)
        if verdict.resend:
            return self._deliver([lines[i] for i in verdict.resend])
        return None

    def _bisect(self, lines: list[str]) -> _Retry | None:
        mid = len(lines) // 2
        first = self._deliver(lines[:mid])
        if first is not None:
            return _Retry(first.lines + lines[mid:], first.retry_after, first.why)
        return self._deliver(lines[mid:])

    def _dead_letter(self, lines: list[str], message: str) -> None:
        if not lines:
            return
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        text = "".join(
            json.dumps({"time": stamp, "line": line, "error": message}, ensure_ascii=False) + "\n"
            for line in lines
        )
        try:
            self.dead_letter_file.parent.mkdir(parents=True, exist_ok=True)
            with self.dead_letter_file.open("a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            log.error(
                "influx sink: cannot write dead letters to %s: %s", self.dead_letter_file, exc
            )
        self.counters.dead_lettered += len(lines)
        log.warning(
            "influx sink: %d line(s) refused by the database: %s", len(lines), message[:300]
        )
