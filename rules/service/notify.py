"""Notifications: rule transitions posted to webhooks, without ever blocking the engine.

Two kinds of target, configured under ``notifiers:`` in ``rules.yaml``
(:class:`rules.core.config.WebhookNotifier`, :class:`rules.core.config.RobotNotifier`):

- ``webhook``: a generic JSON POST ``{"rule", "site", "severity", "text", "ts"}``
  (``ts`` in ms) with the configured extra headers;
- ``robot``: a WeCom / DingTalk group robot, ``{"msgtype": "text", "text":
  {"content": "<keyword> <text>"}}``. These answer HTTP 200 even when they
  refuse a message and say so in the body (``{"errcode": 45009, "errmsg":
  ...}``); a non-zero ``errcode`` counts as a failure, retried when it says
  "too fast" (DingTalk 130101, WeCom 45009). DingTalk robots with signing
  (``secret``) get ``timestamp`` and ``sign`` on the URL of every attempt:
  ``sign = urlencode(base64(HMAC-SHA256(key=secret, msg=timestamp + "\\n" + secret)))``,
  ``timestamp`` in ms (DingTalk refuses one more than an hour off). @mentions:
  DingTalk ``at: {atMobiles, isAtAll}`` with ``@<mobile>`` in the text (else
  the mention is not shown), WeCom ``text.mentioned_mobile_list`` (``@all``
  for everyone).

Rate limits are not kept here: the engine applies each notifier's
``min_interval`` per (site, rule) and folds what it holds back into the next
message (:mod:`rules.core.notifylimit`), so everything submitted is meant to
be sent.

How it stays out of the engine's way: :meth:`Notifier.submit` is synchronous
and O(1): it puts the message on that target's bounded queue (a full queue,
:data:`QUEUE_SIZE` messages waiting for one target, drops it, counted and
logged). One worker task per target drains its queue and POSTs in a thread
(``urllib``), with the target's ``timeout``; timeouts, connection errors,
HTTP 5xx and 429 and the robots' "too fast" are retried with exponential
backoff and jitter (:data:`RETRIES` times, each counted: ``retried``), other
HTTP errors are not (``failed``). A slow or dead target therefore delays
only its own queue.

The surface other parts use (the incidents dispatcher too): :class:`Message`,
:func:`build_request`, :func:`post`, :func:`judge_response`, :class:`Outcome`
(pure apart from :func:`post`), and :class:`Notifier`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rules.core.config import RobotNotifier, WebhookNotifier

log = logging.getLogger(__name__)

NotifierSpec = WebhookNotifier | RobotNotifier

# per target: the engine lets one message per (site, rule) and min_interval through, so
# this holds an alarm of every rule of a few hundred sites at once
QUEUE_SIZE = 1024
# doubling from 1 s up to 30 s, jittered into [d/2, d]: about 1.5 minutes of tries, so a
# robot or a link that is away for a minute does not cost an alarm
RETRIES = 8
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
USER_AGENT = "dustgate-rules"
# robots' "sending too fast" answers (HTTP 200): DingTalk 130101, WeCom 45009
ROBOT_TOO_FAST = frozenset({130101, 45009})


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


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's robot signature (加签) of ``timestamp_ms``, URL-encoded. Pure."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


def build_request(spec: NotifierSpec, msg: Message, now_ms: int | None = None) -> Request:
    """The HTTP request for ``msg`` to ``spec``. Pure but for a DingTalk robot's
    signature, which needs the time it is sent at: ``now_ms`` (default: the wall clock)."""
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    url = spec.url
    if isinstance(spec, RobotNotifier):
        content = f"[{msg.severity}] {msg.site}: {msg.text}"
        if spec.keyword:
            content = f"{spec.keyword} {content}"
        text: dict[str, object] = {"content": content}
        payload: dict[str, object] = {"msgtype": "text", "text": text}
        if spec.vendor == "dingtalk":
            if spec.at_mobiles:
                text["content"] = content + "".join(f" @{m}" for m in spec.at_mobiles)
            if spec.at_mobiles or spec.at_all:
                payload["at"] = {"atMobiles": list(spec.at_mobiles), "isAtAll": spec.at_all}
            if spec.secret is not None:
                ts = int(time.time() * 1000) if now_ms is None else now_ms
                sign = dingtalk_sign(spec.secret.get_secret_value(), ts)
                url = f"{url}{'&' if '?' in url else '?'}timestamp={ts}&sign={sign}"
        elif spec.vendor == "wecom" and (spec.at_mobiles or spec.at_all):
            text["mentioned_mobile_list"] = [*spec.at_mobiles, *(["@all"] if spec.at_all else [])]
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
    return Request(url, headers, body)


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
            why = f"robot errcode {code}: {answer.get('errmsg', '')}"[:300]
            return Outcome(False, retry=code in ROBOT_TOO_FAST, why=why)
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
        self.queue: asyncio.Queue[Message] = asyncio.Queue(queue_size)
        self.task: asyncio.Task[None] | None = None


class Notifier:
    """Per-target bounded queues and workers; see the module docstring.

    ``counters``: ``submitted``, ``sent``, ``failed`` (gave up), ``retried``
    (attempts that will be repeated), ``http_errors``, ``dropped_full``
    (queue full), ``unknown_target``. ``wall`` is the clock DingTalk
    signatures are made with (every attempt is signed anew).
    """

    def __init__(
        self,
        specs: Mapping[str, NotifierSpec],
        *,
        queue_size: int = QUEUE_SIZE,
        retries: int = RETRIES,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_max: float = BACKOFF_MAX_S,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        sender: Callable[[Request, float], tuple[int, bytes]] = post,
    ) -> None:
        self.counters: Counter[str] = Counter()
        self._queue_size = queue_size
        self._retries = retries
        self._backoff = (backoff_base, backoff_max)
        self._wall = wall
        self._rand = rand
        self._send = sender
        self._targets: dict[str, _Target] = {}
        self._started = False
        self.update(specs)

    def update(self, specs: Mapping[str, NotifierSpec]) -> None:
        """Adopt a reloaded ``notifiers:`` section; unchanged targets keep their queue."""
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
        """Queue ``msg`` unless the queue is full. Never blocks."""
        t = self._targets.get(msg.notifier)
        if t is None:
            self.counters["unknown_target"] += 1
            log.warning("notify: no notifier named %r (message dropped)", msg.notifier)
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
        base, cap = self._backoff
        for attempt in range(self._retries + 1):
            req = build_request(t.spec, msg, int(self._wall() * 1000))
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
