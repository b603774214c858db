"""Override request model, topics and the CLI's argument handling (no broker).

The round trip through a real broker and engine is in test_service_mqtt.py.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import protocol as p
from rules.service.override import (
    MAX_FOR_S,
    OverrideRequest,
    _mqtt_settings,
    _parser,
    decode_request,
    encode_request,
    main,
    override_subscription,
    override_topic,
    parse_override_topic,
    request_properties,
)

IDS = st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True)


@given(IDS, IDS)
def test_topic_round_trip(site: str, actuator: str) -> None:
    topic = override_topic(site, actuator)
    assert parse_override_topic(topic) == (site, actuator)
    # the engine's subscription matches it, and the wire contract knows it
    assert override_subscription(site) == f"dustgate/v1/{site}/+/override"
    assert p.parse_topic(topic) == p.Topic("override", site, actuator)


@pytest.mark.parametrize(
    "topic",
    [
        "dustgate/v1/site-01/cannon-1/cmd",
        "dustgate/v1/site-01/override",
        "dustgate/v1/Site/cannon-1/override",
        "dustgate/v2/site-01/cannon-1/override",
        "dustgate/v1/site-01/a/b/override",
    ],
)
def test_not_override_topics(topic: str) -> None:
    with pytest.raises(p.ProtocolError):
        parse_override_topic(topic)


def test_request_round_trip_and_rules() -> None:
    req = OverrideRequest(id="ovr-1", mode="on", for_s=1800, who="alice", ts=1_780_000_000_000)
    assert decode_request(encode_request(req)) == req
    assert OverrideRequest(id="a", mode="auto", who="bob", ts=1).for_s is None
    with pytest.raises(ValueError, match="for_s"):
        OverrideRequest(id="a", mode="off", who="bob", ts=1)
    with pytest.raises(ValueError):
        OverrideRequest(id="a", mode="on", for_s=MAX_FOR_S + 1, who="bob", ts=1)
    with pytest.raises(ValueError):
        OverrideRequest(id="a", mode="on", for_s=-5, who="bob", ts=1)
    assert request_properties().MessageExpiryInterval == 60


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{}",
        b'{"id": "a", "mode": "on", "who": "x", "ts": 1}',
        b'{"id": "a", "mode": "spray", "for_s": 5, "who": "x", "ts": 1}',
        b'{"id": "a", "mode": "on", "for_s": NaN, "who": "x", "ts": 1}',
        b'{"id": "a", "mode": "on", "for_s": 5, "who": "x", "ts": 1, "extra": 1}',
        b"\xff" * 10,
    ],
)
def test_bad_requests_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        decode_request(payload)


@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(p.ProtocolError):
        decode_request(data)


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["site-01", "on"],  # no actuator
        ["site-01/Cannon", "on"],  # bad id
        ["site-01/cannon-1", "spray"],
        ["site-01/cannon-1", "on", "--for", "soon"],
        ["site-01/cannon-1", "on", "--for", "25h"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "SITE/ACTUATOR" in capsys.readouterr().err


def test_cli_takes_mqtt_settings_from_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("mqtt: {host: 10.0.0.5, port: 8883, username: ops}\n")
    args = _parser().parse_args(["site-01/cannon-1", "on", "--config", str(rules)])
    s = _mqtt_settings(args)
    assert (s.host, s.port, s.username) == ("10.0.0.5", 8883, "ops")
    args = _parser().parse_args(
        ["site-01/cannon-1", "on", "--config", str(rules), "--port", "1884"]
    )
    assert _mqtt_settings(args).port == 1884


def test_cli_reports_a_broken_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("mqtt: {port: seventy}\n")
    assert main(["site-01/cannon-1", "on", "--config", str(rules)]) == 2
    assert f"{rules}:1:" in capsys.readouterr().err


def test_cli_unreachable_broker_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    # port 9 (discard) on loopback: nothing listens
    assert main(["site-01/cannon-1", "off", "--port", "9", "--timeout", "2"]) == 3
    assert "127.0.0.1:9" in capsys.readouterr().err
