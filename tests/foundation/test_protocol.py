"""The wire contract: round trips, topics, and untrusted input."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import protocol as p

ids = st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True)
metric = st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
ts = st.integers(min_value=0, max_value=10**13 - 1)
text = st.text(max_size=50)
# what can be an InfluxDB tag value as it is: printable, no backslash
tag_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\"),
    min_size=1,
    max_size=20,
)

telemetry = st.builds(
    p.Telemetry,
    ts=ts,
    seq=st.integers(min_value=0, max_value=2**53),
    values=st.dictionaries(metric, finite, max_size=12),
    status=st.sampled_from(list(p.Status)),
    flags=st.none() | st.dictionaries(metric, st.sampled_from(list(p.Status)), max_size=3),
    model=st.none() | tag_text,
)
health = st.builds(
    p.DeviceHealth,
    state=st.sampled_from(["online", "offline", "backoff", "starting"]),
    last_ok_ts=st.none() | ts,
    errors=st.integers(0, 10**6),
    consecutive_failures=st.integers(0, 1000),
    last_error=st.none() | st.text(max_size=100),
)
status = st.builds(
    p.GatewayStatus,
    state=st.sampled_from(["online", "offline"]),
    ts=ts,
    version=text,
    uptime_s=st.floats(0, 1e9),
    backlog=st.integers(0, 10**9),
    devices=st.dictionaries(ids, health, max_size=4),
)
command = st.builds(
    p.Command,
    id=st.text(min_size=1, max_size=64),
    action=st.just("on"),
    lease_s=st.floats(min_value=0.001, max_value=86400),
    reason=st.text(max_size=100),
    source=st.sampled_from(["rule", "manual", "override"]),
    ts=st.none() | ts,
    rule=st.none() | ids,
) | st.builds(p.Command, id=st.text(min_size=1, max_size=64), action=st.just("off"))
state = st.builds(
    p.ActuatorState,
    state=st.sampled_from(["on", "off"]),
    since=ts,
    source=st.sampled_from(["rule", "manual", "override", "failsafe", "local", "startup"]),
    cmd_id=st.none() | text,
    lease_until=st.none() | ts,
    readback_ok=st.booleans(),
    reason=text,
)
ack = st.builds(p.Ack, cmd_id=st.text(max_size=64), accepted=st.booleans(), reason=text, ts=ts)
event = st.builds(
    p.Event,
    ts=ts,
    kind=st.from_regex(r"[a-z_]{1,20}", fullmatch=True),
    text=st.text(max_size=200),
    severity=st.sampled_from(["info", "warning", "critical"]),
    rule=st.none() | ids,
    data=st.none() | st.dictionaries(st.text(max_size=10), st.integers() | text, max_size=3),
)
override = st.builds(
    p.OverrideRequest,
    id=st.text(min_size=1, max_size=64),
    mode=st.sampled_from(["on", "off"]),
    for_s=st.floats(min_value=0.001, max_value=86400),
    who=st.text(min_size=1, max_size=64),
    ts=ts,
    reason=text,
) | st.builds(p.OverrideRequest, id=st.just("r"), mode=st.just("auto"), who=st.just("me"), ts=ts)
any_payload = telemetry | status | command | state | ack | event | override


@given(any_payload)
def test_every_payload_round_trips(payload: p._Payload) -> None:
    assert p.decode(type(payload), p.encode(payload)) == payload


@given(st.binary(max_size=512), st.sampled_from(p.PAYLOAD_TYPES))
def test_arbitrary_bytes_give_a_model_or_protocol_error(data: bytes, model: type) -> None:
    try:
        result = p.decode(model, data)
    except p.ProtocolError:
        return
    assert isinstance(result, model)


def _containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20),
    _containers,
    max_leaves=20,
)


@given(json_values, st.sampled_from(p.PAYLOAD_TYPES))
@settings(max_examples=300)
def test_arbitrary_json_gives_a_model_or_protocol_error(value: object, model: type) -> None:
    try:
        result = p.decode(model, json.dumps(value).encode())
    except p.ProtocolError:
        return
    assert isinstance(result, model)


@given(telemetry, st.dictionaries(st.sampled_from(["ts", "seq", "values", "status"]), json_values))
def test_mutated_telemetry_is_model_or_error(t: p.Telemetry, patch: dict[str, object]) -> None:
    doc = json.loads(p.encode(t))
    doc.update(patch)
    with contextlib.suppress(p.ProtocolError):
        p.decode(p.Telemetry, json.dumps(doc).encode())


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_refused(bad: str) -> None:
    raw = b'{"ts": 1, "seq": 1, "values": {"pm10": ' + bad.encode() + b"}}"
    with pytest.raises(p.ProtocolError):
        p.decode(p.Telemetry, raw)


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.decode(p.Command, b" " * (p.MAX_PAYLOAD + 1))


def test_on_command_needs_a_lease() -> None:
    with pytest.raises(p.ProtocolError, match="lease_s"):
        p.decode(p.Command, b'{"id": "c1", "action": "on"}')


def test_known_telemetry_document() -> None:
    t = p.decode(
        p.Telemetry, b'{"ts": 1700000000123, "seq": 7, "values": {"pm10": 88.1}, "status": "ok"}'
    )
    assert (t.ts, t.seq, t.values["pm10"], t.status) == (1700000000123, 7, 88.1, p.Status.OK)
    assert t.status.hj212_flag == "N"
    assert p.Status.COMM_ERROR.hj212_flag == "B"


def test_topics_build_and_parse() -> None:
    assert p.telemetry_topic("site-01", "gate") == "dustgate/v1/site-01/gate/telemetry"
    assert p.parse_topic("dustgate/v1/site-01/gate/telemetry") == p.Topic(
        "telemetry", "site-01", "gate"
    )
    assert p.parse_topic(p.status_topic("s", "gw1")) == p.Topic("status", "s", "gw1")
    assert p.parse_topic(p.cmd_topic("s", "cannon-1")) == p.Topic("cmd", "s", "cannon-1")
    assert p.parse_topic(p.state_topic("s", "c")).kind == "state"
    assert p.parse_topic(p.ack_topic("s", "c")).kind == "ack"
    assert p.parse_topic(p.events_topic("s")) == p.Topic("events", "s")
    assert p.parse_topic(p.override_topic("s", "c")) == p.Topic("override", "s", "c")
    assert p.subscription("override") == "dustgate/v1/+/+/override"
    assert p.subscription("telemetry") == "dustgate/v1/+/+/telemetry"
    assert p.subscription("cmd", "s") == "dustgate/v1/s/+/cmd"


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/s/d/telemetry",
        "dustgate/v2/s/d/telemetry",
        "dustgate/v1/S/d/telemetry",
        "dustgate/v1/s/d/unknown",
        "dustgate/v1/s/d/e/telemetry",
        "dustgate/v1/s",
        "dustgate/v1/s/gateway/gw",
    ],
)
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(p.ProtocolError):
        p.parse_topic(topic)


@given(st.text(max_size=80))
def test_parse_topic_never_raises_anything_else(topic: str) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.parse_topic(topic)


def test_bad_ids_refused_by_builders() -> None:
    with pytest.raises(p.ProtocolError):
        p.telemetry_topic("Site 1", "d")
    with pytest.raises(p.ProtocolError):
        p.cmd_topic("s", "a/b")


def test_metric_status_falls_back_to_device_status() -> None:
    t = p.Telemetry(
        ts=1,
        seq=1,
        values={"pm10": 1.0, "noise": 2.0},
        status=p.Status.OK,
        flags={"noise": p.Status.OVER_RANGE},
    )
    assert t.metric_status("pm10") is p.Status.OK
    assert t.metric_status("noise") is p.Status.OVER_RANGE
    assert not math.isnan(t.values["pm10"])


# ------------------------------------------------------------ the strict contract


def _telemetry_doc(**changes: object) -> bytes:
    doc: dict[str, object] = {"ts": 1700000000000, "seq": 1, "values": {"pm10": 88.0}}
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # the cases: coerced, then stored as good readings
        (_telemetry_doc(values={"pm10": True}), "type"),
        (_telemetry_doc(values={"pm10": "777.5"}), "type"),
        # beyond int64: a traceback per reading in the sink
        (_telemetry_doc(seq=10**30), "range"),
        (_telemetry_doc(seq=2**63), "range"),
        (_telemetry_doc(seq=1.0), "type"),
        (_telemetry_doc(seq=True), "type"),
        (_telemetry_doc(ts="1700000000000"), "type"),
        # InfluxDB 1.x refuses the line ("invalid tag format"): dead-lettered
        (_telemetry_doc(model="ab\\"), "string"),
        (_telemetry_doc(model="a\\b"), "string"),
        (_telemetry_doc(model="a\nb"), "string"),
        (_telemetry_doc(model=""), "string"),
        (b'{"ts": 1, "seq": 1, "values": {"pm10": NaN}}', "non_finite"),
        (b'{"ts": 1, "seq": 1, "values": {"pm10": -Infinity}}', "non_finite"),
        (b'{"ts": 1, "seq": 1, "values": {"pm10": 1e400}}', "non_finite"),
        (b'{"ts": 1, "seq": 1, "values": {"pm10": 1' + b"0" * 400 + b"}}", "non_finite"),
        (b'{"ts": 1, "seq": 1, "values": {"pm10": 1}, "x": 1}', "schema"),
        (b'{"ts": 1, "seq": 1, "values": {"pm10": 1}', "json"),
        (b" " * (p.MAX_PAYLOAD + 1), "size"),
    ],
)
def test_refusals_name_their_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(p.Telemetry, raw)
    assert info.value.reason == reason
    assert reason in p.REFUSAL_REASONS


def test_the_largest_values_that_fit_are_taken() -> None:
    t = p.decode(p.Telemetry, _telemetry_doc(seq=2**63 - 1, values={"pm10": 1.7e308, "rh": 5}))
    assert (t.seq, t.values) == (2**63 - 1, {"pm10": 1.7e308, "rh": 5.0})
    assert isinstance(t.values["rh"], float)
    assert p.decode(p.Telemetry, _telemetry_doc(model='SDS011 v1.2, "a=b" é')).model


@pytest.mark.parametrize(
    ("model", "raw"),
    [
        (p.Event, b'{"ts": 1, "kind": "x", "text": "two\\nlines"}'),
        (p.ActuatorState, b'{"state": "on", "since": 1, "source": "rule", "reason": "a\\rb"}'),
        (p.Ack, b'{"cmd_id": "c", "accepted": 1, "ts": 1}'),
        (p.Command, b'{"id": "c", "action": "on", "lease_s": "60"}'),
        (p.GatewayStatus, b'{"state": "online", "ts": 1, "backlog": 9007199254740992}'),
        (p.OverrideRequest, b'{"id": "r", "mode": "on", "for_s": true, "who": "a", "ts": 1}'),
    ],
)
def test_every_payload_is_strict(model: type[p.Payload], raw: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(model, raw)


def test_our_own_texts_have_control_characters_replaced() -> None:
    """Built in Python (our events), a newline becomes a space; decoded, it is refused."""
    ev = p.Event(ts=1, kind="reload_error", text="2 errors:\nline 3\tbad")
    assert ev.text == "2 errors: line 3 bad"
    assert p.decode(p.Event, p.encode(ev)) == ev


wrong_numbers = st.one_of(
    st.booleans(),
    st.text(max_size=8),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.just("NaN"),
)


@settings(max_examples=200)
@given(telemetry, st.sampled_from(["ts", "seq", "value"]), wrong_numbers)
def test_a_number_of_any_other_json_type_is_refused(
    t: p.Telemetry, where: str, wrong: object
) -> None:
    doc = json.loads(p.encode(t))
    if where == "value":
        doc["values"] = {**doc["values"], "pm10": wrong}
    else:
        doc[where] = wrong
    with pytest.raises(p.ProtocolError) as info:
        p.decode(p.Telemetry, json.dumps(doc).encode())
    assert info.value.reason == "type"


def test_a_site_yaml_model_is_checked_like_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent sends the configured model as is: one the engine would refuse (every
    reading of that device) is a configuration error at its line."""
    from pathlib import Path

    from gateway.config import load_site_config
    from gateway.configfile import ConfigError

    monkeypatch.setenv("DUSTGATE_MQTT_PASSWORD", "x")
    monkeypatch.setenv("DUSTGATE_HJ212_PASSWORD", "x")
    path = Path(__file__).resolve().parents[2] / "examples" / "site.yaml"
    lines = path.read_text().splitlines()
    devices = lines.index("devices:")
    at = next(
        i for i, line in enumerate(lines) if i > devices and line.lstrip().startswith("- id:")
    )
    indent = lines[at].index("-") + 2
    lines.insert(at + 1, " " * indent + 'model: "ab\\\\"')
    with pytest.raises(ConfigError) as info:
        load_site_config(path, text="\n".join(lines))
    assert f"site.yaml:{at + 2}:" in str(info.value)
    assert "backslash" in str(info.value)


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b'[1, {"x": -Infinity}]'])
def test_an_event_s_free_form_data_holds_no_non_finite_number(token: bytes) -> None:
    raw = b'{"ts": 1, "kind": "x", "text": "t", "data": {"v": ' + token + b"}}"
    with pytest.raises(p.ProtocolError) as info:
        p.decode(p.Event, raw)
    assert info.value.reason == "non_finite"
    ok = p.decode(p.Event, b'{"ts": 1, "kind": "x", "text": "t", "data": {"v": [1.5, {"w": 2}]}}')
    assert ok.data == {"v": [1.5, {"w": 2}]}
