"""Notifications: request bodies, rate limit, retries, bounded queue -- against a
real HTTP server on 127.0.0.1 (http.server in a thread)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from webhooks import Hook

from rules.core.config import RobotNotifier, WebhookNotifier
from rules.service.notify import Message, Notifier, build_request, judge_response


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


SECRET = "SECabc123"  # the shape of a DingTalk robot secret


def signature(timestamp_ms: int, secret: str) -> str:
    """DingTalk's documented check, written out independently: HMAC-SHA256 with the secret
    as key over "timestamp\\nsecret", base64 (the receiver gets it URL-decoded)."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


@given(st.integers(1_600_000_000_000, 2_000_000_000_000), st.from_regex(r"SEC[0-9a-f]{8,64}"))
def test_dingtalk_signature_verifies(ts: int, secret: str) -> None:
    spec = robot("https://oapi.dingtalk.com/robot/send?access_token=t", secret=secret)
    req = build_request(spec, msg(), now_ms=ts)
    query = parse_qs(urlsplit(req.url).query)
    assert query["access_token"] == ["t"]
    assert query["timestamp"] == [str(ts)]
    assert query["sign"] == [signature(ts, secret)]


def test_robot_vendor_secret_and_mentions_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DG_ROBOT_SECRET", SECRET)
    spec = robot("https://oapi.dingtalk.com/robot/send?access_token=t",
                 secret={"env": "DG_ROBOT_SECRET"})  # fmt: skip
    assert spec.vendor == "dingtalk" and spec.secret is not None
    assert spec.secret.get_secret_value() == SECRET and SECRET not in repr(spec)
    assert robot("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k").vendor == "wecom"
    assert robot("http://127.0.0.1:1/r").vendor is None
    for bad, why in [
        ({"url": "http://127.0.0.1:1/r", "secret": SECRET}, "need vendor"),
        ({"url": "http://127.0.0.1:1/r", "at_all": True}, "need vendor"),
        ({"url": "http://127.0.0.1:1/r", "vendor": "wecom", "secret": SECRET}, "DingTalk"),
        ({"url": "http://127.0.0.1:1/r", "vendor": "dingtalk", "secret": {"env": "NOPE_X"}},
         "NOPE_X is not set"),
        ({"url": "http://127.0.0.1:1/r", "vendor": "dingtalk", "at_mobiles": ["call me"]},
         "at_mobiles"),
    ]:  # fmt: skip
        with pytest.raises(ValidationError, match=why):
            robot(**bad)


def test_mentions_dingtalk_and_wecom() -> None:
    ding = robot("http://x/r", vendor="dingtalk", at_mobiles=["13800000000"], at_all=False)
    body = json.loads(build_request(ding, msg(text="PM10 超标")).body)
    assert body["at"] == {"atMobiles": ["13800000000"], "isAtAll": False}
    assert body["text"]["content"].endswith("PM10 超标 @13800000000")  # else not highlighted
    everyone = json.loads(build_request(robot("http://x/r", vendor="dingtalk", at_all=True),
                                        msg()).body)  # fmt: skip
    assert everyone["at"] == {"atMobiles": [], "isAtAll": True}
    wecom = robot("http://x/r", vendor="wecom", at_mobiles=["13800000000"], at_all=True)
    body = json.loads(build_request(wecom, msg()).body)
    assert body["text"]["mentioned_mobile_list"] == ["13800000000", "@all"]
    assert "at" not in body
    plain = json.loads(build_request(robot("http://x/r"), msg()).body)
    assert set(plain) == {"msgtype", "text"} and set(plain["text"]) == {"content"}


def test_judge_response() -> None:
    w, r = webhook("http://x"), robot("http://x")
    assert judge_response(w, 200, b"").ok
    assert judge_response(w, 204, b"").ok
    assert judge_response(w, 503, b"").retry
    assert judge_response(w, 429, b"").retry
    bad = judge_response(w, 400, b"bad payload")
    assert not bad.ok and not bad.retry and "400" in bad.why
    assert judge_response(r, 200, b'{"errcode":0,"errmsg":"ok"}').ok
    refused = judge_response(r, 200, b'{"errcode":310000,"errmsg":"sign not match"}')
    assert not refused.ok and not refused.retry and "310000" in refused.why
    for too_fast in (b'{"errcode":45009,"errmsg":"api freq out of limit"}',
                     b'{"errcode":130101,"errmsg":"send too fast"}'):  # fmt: skip
        slow_down = judge_response(r, 200, too_fast)
        assert not slow_down.ok and slow_down.retry


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


async def test_the_notifier_itself_never_suppresses(hook: Hook) -> None:
    """Rate limits are the engine's, per (site, rule); whatever is submitted is sent."""
    n = Notifier({"ops": webhook(hook.url, min_interval=3600)})
    await n.start()
    try:
        assert all(n.submit(msg(text=f"message {i}")) for i in range(3))
        await wait_for(lambda: n.counters["sent"] == 3)
    finally:
        await n.close()
    assert [b["text"] for b in hook.received] == ["message 0", "message 1", "message 2"]


async def test_signed_robot_signs_every_attempt_anew(hook: Hook) -> None:
    hook.script = [(200, b'{"errcode":130101,"errmsg":"send too fast"}')]
    clock = iter([1_780_000_000.0, 1_780_000_002.5])
    spec = robot(hook.url, vendor="dingtalk", secret=SECRET, at_all=True)
    n = Notifier({"r": spec}, backoff_base=0.01, wall=lambda: next(clock))
    await n.start()
    try:
        n.submit(msg("r"))
        await wait_for(lambda: n.counters["sent"] == 1)
    finally:
        await n.close()
    assert n.counters["retried"] == 1  # "too fast" is retried, and counted
    stamps = [parse_qs(urlsplit(path).query) for path in hook.paths]
    assert [q["timestamp"] for q in stamps] == [["1780000000000"], ["1780000002500"]]
    for q in stamps:
        assert q["sign"] == [signature(int(q["timestamp"][0]), SECRET)]
    assert hook.received[-1]["at"] == {"atMobiles": [], "isAtAll": True}


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


async def test_a_target_away_for_a_while_still_gets_the_alarm(hook: Hook) -> None:
    """Six failures in a row (a robot away for about a minute at the real backoff) and
    the message still arrives with the default number of tries; each try is counted."""
    hook.script = [(503, b"down")] * 3 + [(200, b'{"errcode":130101,"errmsg":"too fast"}')] * 3
    n = Notifier({"r": robot(hook.url, min_interval=0)}, backoff_base=0.001, backoff_max=0.01)
    await n.start()
    try:
        n.submit(msg("r"))
        await wait_for(lambda: n.counters["sent"] + n.counters["failed"] == 1)
    finally:
        await n.close()
    assert (n.counters["sent"], n.counters["retried"], n.counters["failed"]) == (1, 6, 0)
    assert len(hook.received) == 7
