"""Notifications: rule transitions posted to webhooks, without ever blocking the engine.

Two kinds of target, configured under ``notifiers:`` in ``rules.yaml``
(:class:`rules.core.config.WebhookNotifier`, :class:`rules.core.config.RobotNotifier`):

- ``webhook``: a generic JSON POST ``{"rule", "site", "severity", "text", "ts"}``
  (``ts`` in ms) with the configured extra headers;
- ``robot``: a WeCom / DingTalk group robot, ``{"msgtype": "text", "text":
  {"content": "<keyword> <text>"}}``. These answer HTTP 200 even when they
  refuse a message and say so in the body (``{"errcode": 45009, "errmsg":
  ...}``); a non-zero ``errcode`` counts as a failure.

How it stays out of the engine's way: :meth:`Notifier.submit` is synchronous
and O(1). It applies the per-target rate limit (``min_interval``; suppressed
messages are counted, not queued) and puts the message on that target's
bounded queue; a full queue drops the message and counts it. One worker task
per target drains its queue and POSTs in a thread (``urllib``), with the
target's ``timeout``; timeouts, connection errors, HTTP 5xx and 429 are
retried with exponential backoff and jitter (``retries`` times), other HTTP
errors are not. A slow or dead target therefore delays only its own queue.

The request bodies (:func:`build_request`) and the rate limiter
(:class:`RateLimit`) are pure and clock-injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rules.core.config import RobotNotifier, WebhookNotifier

log = logging.getLogger(__name__)

NotifierSpec = WebhookNotifier | RobotNotifier

QUEUE_SIZE = 32  # per target; at most one message per min_interval gets through anyway
RETRIES = 3
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
USER_AGENT = "dustgate-rules"


@dataclass(frozen=True, slots=True)
class Message:
    """One notification, as the engine's :class:`rules.core.engine.Notify` action says it."""

    notifier: str
    rule: str
    site: str
    text: str
    severity: str
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Request:
    url: str
    headers: dict[str, str]
    body: bytes


def build_request(spec: NotifierSpec, msg: Message) -> Request:
    """The HTTP request for ``msg`` to ``spec``. Pure."""
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    if isinstance(spec, RobotNotifier):
        content = f"[{msg.severity}] {msg.site}: {msg.text}"
        if spec.keyword:
            content = f"{spec.keyword} {content}"
        payload: dict[str, object] = {"msgtype": "text", "text": {"content": content}}
    else:
        headers.update(spec.headers)
        payload = {
            "rule": msg.rule,
            "site": msg.site,
            "severity": msg.severity,
            "text": msg.text,
            "ts": msg.ts_ms,
        }
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return Request(spec.url, headers, body)


class RateLimit:
    """At most one message per ``min_interval`` seconds per target. Pure (clock injected)."""

    __slots__ = ("_last", "min_interval")

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.min_interval:
            return False
        self._last = now
        return True


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one HTTP attempt gave: ``ok``, or why not and whether to try again."""

    ok: bool
    retry: bool = False
    why: str = ""


def judge_response(spec: NotifierSpec, status: int, body: bytes) -> Outcome:
    """Classify an HTTP answer. Pure."""
    if status == 429 or status >= 500:
        return Outcome(False, retry=True, why=f"HTTP {status}")
    if not 200 <= status < 300:
        return Outcome(False, why=f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
    if isinstance(spec, RobotNotifier):
        try:
            answer = json.loads(body or b"{}")
        except ValueError:
            return Outcome(True)  # not the robot's usual JSON: the HTTP status said ok
        code = answer.get("errcode", 0) if isinstance(answer, dict) else 0
        if code not in (0, None):
            return Outcome(False, why=f"robot errcode {code}: {answer.get('errmsg', '')}"[:300])
    return Outcome(True)


def post(req: Request, timeout: float) -> tuple[int, bytes]:
    """Blocking POST (run in a thread). Returns (status, body); raises OSError on no answer."""
    r = urllib.request.Request(req.url, data=req.body, headers=req.headers, method="POST")
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return int(resp.status), resp.read(4096)
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(OSError):
            return int(exc.code), exc.read(4096)
        return int(exc.code), b""


class _Target:
    def __init__(self, name: str, spec: NotifierSpec, queue_size: int) -> None:
        self.name = name
        self.spec = spec
        self.limit = RateLimit(spec.min_interval)
        self.queue: asyncio.Queue[Message] = asyncio.Queue(queue_size)
        self.task: asyncio.Task[None] | None = None


class Notifier:
    """Per-target bounded queues and workers; see the module docstring.

    ``counters``: ``submitted``, ``sent``, ``failed`` (gave up), ``retried``
    (attempts that will be repeated), ``suppressed`` (rate limit),
    ``dropped_full`` (queue full), ``unknown_target``.
    """

    def __init__(
        self,
        specs: Mapping[str, NotifierSpec],
        *,
        queue_size: int = QUEUE_SIZE,
        retries: int = RETRIES,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_max: float = BACKOFF_MAX_S,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        sender: Callable[[Request, float], tuple[int, bytes]] = post,
    ) -> None:
        self.counters: Counter[str] = Counter()
        self._queue_size = queue_size
        self._retries = retries
        self._backoff = (backoff_base, backoff_max)
        self._clock = clock
        self._rand = rand
        self._send = sender
        self._targets: dict[str, _Target] = {}
        self._started = False
        self.update(specs)

    def update(self, specs: Mapping[str, NotifierSpec]) -> None:
        """Adopt a reloaded ``notifiers:`` section; unchanged targets keep queue and limit."""
        for name in list(self._targets):
            if name not in specs or specs[name] != self._targets[name].spec:
                old = self._targets.pop(name)
                if old.task is not None:
                    old.task.cancel()
        for name, spec in specs.items():
            if name not in self._targets:
                t = self._targets[name] = _Target(name, spec, self._queue_size)
                if self._started:
                    t.task = asyncio.create_task(self._worker(t), name=f"notify-{name}")

    async def start(self) -> None:
        self._started = True
        for t in self._targets.values():
            if t.task is None:
                t.task = asyncio.create_task(self._worker(t), name=f"notify-{t.name}")

    def submit(self, msg: Message) -> bool:
        """Queue ``msg`` unless rate-limited or the queue is full. Never blocks."""
        t = self._targets.get(msg.notifier)
        if t is None:
            self.counters["unknown_target"] += 1
            log.warning("notify: no notifier named %r (message dropped)", msg.notifier)
            return False
        if not t.limit.allow(self._clock()):
            self.counters["suppressed"] += 1
            log.debug("notify %s: suppressed by min_interval %gs", t.name, t.limit.min_interval)
            return False
        try:
            t.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.counters["dropped_full"] += 1
            log.warning("notify %s: queue full (%d), message dropped", t.name, t.queue.maxsize)
            return False
        self.counters["submitted"] += 1
        return True

    def pending(self) -> int:
        return sum(t.queue.qsize() for t in self._targets.values())

    async def drain(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until every queued message was handled."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for t in list(self._targets.values()):
                    await t.queue.join()
                return True
        return False

    async def close(self, timeout: float = 5.0) -> None:
        """Give queued messages ``timeout`` seconds, then stop the workers."""
        if self._started and self.pending():
            await self.drain(timeout)
        for t in self._targets.values():
            if t.task is not None:
                t.task.cancel()
        tasks = [t.task for t in self._targets.values() if t.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in self._targets.values():
            t.task = None
        self._started = False

    async def _worker(self, t: _Target) -> None:
        while True:
            msg = await t.queue.get()
            try:
                await self._deliver(t, msg)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not kill the worker
                self.counters["failed"] += 1
                log.exception("notify %s: unexpected error", t.name)
            finally:
                t.queue.task_done()

    async def _deliver(self, t: _Target, msg: Message) -> None:
        req = build_request(t.spec, msg)
        base, cap = self._backoff
        for attempt in range(self._retries + 1):
            try:
                status, body = await asyncio.to_thread(self._send, req, t.spec.timeout)
                outcome = judge_response(t.spec, status, body)
                if not 200 <= status < 300:
                    self.counters["http_errors"] += 1
            except (OSError, ValueError) as exc:  # timeout, refused, DNS, bad URL
                outcome = Outcome(False, retry=True, why=str(exc) or type(exc).__name__)
            if outcome.ok:
                self.counters["sent"] += 1
                log.info("notify %s: sent (%s, rule %s)", t.name, msg.severity, msg.rule)
                return
            if not outcome.retry or attempt == self._retries:
                self.counters["failed"] += 1
                log.warning(
                    "notify %s: failed after %d attempt(s): %s", t.name, attempt + 1, outcome.why
                )
                return
            self.counters["retried"] += 1
            delay = min(cap, base * 2**attempt)
            delay = delay / 2 + self._rand() * delay / 2
            log.info("notify %s: %s, retry in %.1fs", t.name, outcome.why, delay)
            await asyncio.sleep(delay)
