"""Notifications: request bodies, rate limit, retries, bounded queue -- against a
real HTTP server on 127.0.0.1 (http.server in a thread)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from webhooks import Hook

from rules.core.config import RobotNotifier, WebhookNotifier
from rules.service.notify import Message, Notifier, RateLimit, build_request, judge_response


def msg(notifier: str = "ops", text: str = "pm10-gate: on, mean(pm10) = 180.0") -> Message:
    return Message(notifier, "pm10-gate", "site-01", text, "warning", 1_780_000_000_000)


def webhook(url: str, **kw: Any) -> WebhookNotifier:
    return WebhookNotifier.model_validate({"type": "webhook", "url": url, **kw})


def robot(url: str, **kw: Any) -> RobotNotifier:
    return RobotNotifier.model_validate({"type": "robot", "url": url, **kw})


async def wait_for(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ pure parts


def test_webhook_body_and_headers() -> None:
    spec = webhook("http://x/h", headers={"Authorization": "Bearer t"})
    req = build_request(spec, msg())
    assert json.loads(req.body) == {
        "rule": "pm10-gate",
        "site": "site-01",
        "severity": "warning",
        "text": "pm10-gate: on, mean(pm10) = 180.0",
        "ts": 1_780_000_000_000,
    }
    assert req.headers["Authorization"] == "Bearer t"
    assert req.headers["Content-Type"].startswith("application/json")


def test_robot_body_has_keyword_and_text_in_utf8() -> None:
    req = build_request(robot("http://x/r", keyword="扬尘"), msg(text="PM10 超标"))
    body = json.loads(req.body.decode("utf-8"))
    assert body["msgtype"] == "text"
    content = body["text"]["content"]
    assert content.startswith("扬尘 ")
    assert "PM10 超标" in content and "site-01" in content


def test_rate_limit_allows_one_per_interval() -> None:
    rl = RateLimit(60.0)
    assert rl.allow(1000.0)
    assert not rl.allow(1059.9)
    assert rl.allow(1060.0)
    assert not rl.allow(1070.0)


@given(st.lists(st.floats(0, 1000, allow_nan=False), max_size=50), st.floats(0.1, 100))
def test_rate_limit_property(times: list[float], interval: float) -> None:
    rl = RateLimit(interval)
    allowed = [t for t in sorted(times) if rl.allow(t)]
    assert all(b - a >= interval for a, b in itertools.pairwise(allowed))
    if times:
        assert allowed[0] == min(times)


def test_judge_response() -> None:
    w, r = webhook("http://x"), robot("http://x")
    assert judge_response(w, 200, b"").ok
    assert judge_response(w, 204, b"").ok
    assert judge_response(w, 503, b"").retry
    assert judge_response(w, 429, b"").retry
    bad = judge_response(w, 400, b"bad payload")
    assert not bad.ok and not bad.retry and "400" in bad.why
    assert judge_response(r, 200, b'{"errcode":0,"errmsg":"ok"}').ok
    refused = judge_response(r, 200, b'{"errcode":45009,"errmsg":"api freq out of limit"}')
    assert not refused.ok and "45009" in refused.why


# --------------------------------------------------------- against a real server


async def test_webhook_and_robot_delivered(hook: Hook) -> None:
    n = Notifier(
        {"ops": webhook(hook.url, headers={"X-Token": "abc"}), "site-office": robot(hook.url)}
    )
    await n.start()
    try:
        assert n.submit(msg("ops"))
        assert n.submit(msg("site-office"))
        await wait_for(lambda: n.counters["sent"] == 2)
    finally:
        await n.close()
    kinds = sorted("msgtype" in body for body in hook.received)
    assert kinds == [False, True]
    generic = next(b for b in hook.received if "msgtype" not in b)
    assert generic["rule"] == "pm10-gate"
    assert any(h.get("X-Token") == "abc" for h in hook.headers)


async def test_rate_limit_suppresses_and_counts(hook: Hook) -> None:
    n = Notifier({"ops": webhook(hook.url, min_interval=60)})
    await n.start()
    try:
        results = [n.submit(msg(text=f"message {i}")) for i in range(3)]
        await wait_for(lambda: n.counters["sent"] == 1)
        assert await n.drain(5)
    finally:
        await n.close()
    assert results == [True, False, False]
    assert n.counters["suppressed"] == 2
    assert [b["text"] for b in hook.received] == ["message 0"]


async def test_server_error_is_retried_then_delivered(hook: Hook) -> None:
    hook.script = [(500, b"oops"), (503, b"busy")]
    n = Notifier({"ops": webhook(hook.url, min_interval=0)}, backoff_base=0.01, retries=3)
    await n.start()
    try:
        n.submit(msg())
        await wait_for(lambda: n.counters["sent"] == 1)
    finally:
        await n.close()
    assert n.counters["retried"] == 2
    assert n.counters["http_errors"] == 2
    assert len(hook.received) == 3


async def test_client_error_is_not_retried(hook: Hook) -> None:
    hook.script = [(400, b"bad request")]
    n = Notifier({"ops": webhook(hook.url, min_interval=0)}, backoff_base=0.01)
    await n.start()
    try:
        n.submit(msg())
        await wait_for(lambda: n.counters["failed"] == 1)
    finally:
        await n.close()
    assert n.counters["retried"] == 0 and n.counters["sent"] == 0
    assert len(hook.received) == 1


async def test_robot_errcode_counts_as_failure(hook: Hook) -> None:
    hook.script = [(200, b'{"errcode":310000,"errmsg":"keywords not in content"}')]
    n = Notifier({"r": robot(hook.url, min_interval=0)}, backoff_base=0.01)
    await n.start()
    try:
        n.submit(msg("r"))
        await wait_for(lambda: n.counters["failed"] == 1)
    finally:
        await n.close()
    assert n.counters["sent"] == 0


async def test_timeout_retried_then_given_up(hook: Hook) -> None:
    hook.delay = 0.6
    n = Notifier(
        {"ops": webhook(hook.url, timeout=0.1, min_interval=0)}, backoff_base=0.01, retries=1
    )
    await n.start()
    try:
        n.submit(msg())
        await wait_for(lambda: n.counters["failed"] == 1)
    finally:
        await n.close()
    assert n.counters["retried"] == 1 and n.counters["sent"] == 0


async def test_connection_refused_counts_as_failure() -> None:
    n = Notifier(
        {"ops": webhook("http://127.0.0.1:9/nothing", timeout=0.5, min_interval=0)},
        backoff_base=0.01,
        retries=1,
    )
    await n.start()
    try:
        n.submit(msg())
        await wait_for(lambda: n.counters["failed"] == 1)
    finally:
        await n.close()


async def test_full_queue_drops_and_never_blocks(hook: Hook) -> None:
    hook.gate.clear()  # the server holds the first request
    n = Notifier({"ops": webhook(hook.url, min_interval=0)}, queue_size=1)
    await n.start()
    try:
        assert n.submit(msg(text="first"))
        await wait_for(lambda: n.pending() == 0)  # the worker took it and is stuck
        t0 = time.monotonic()
        results = [n.submit(msg(text=f"more {i}")) for i in range(5)]
        assert time.monotonic() - t0 < 1.0  # submit is synchronous and O(1)
        assert results == [True, False, False, False, False]
        assert n.counters["dropped_full"] == 4
        hook.gate.set()
        await wait_for(lambda: n.counters["sent"] == 2)
    finally:
        hook.gate.set()
        await n.close()
    assert [b["text"] for b in hook.received] == ["first", "more 0"]


async def test_unknown_target_and_update(hook: Hook) -> None:
    n = Notifier({})
    await n.start()
    try:
        assert not n.submit(msg("ops"))
        assert n.counters["unknown_target"] == 1
        n.update({"ops": webhook(hook.url, min_interval=0)})
        assert n.submit(msg("ops"))
        await wait_for(lambda: n.counters["sent"] == 1)
    finally:
        await n.close()
