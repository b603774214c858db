"""The dustgate wire contract (MQTT 5, JSON payloads). Both sides import this.

Topics live under ``dustgate/v1/{site}/``:

==============================  ========  =======================================
topic                           retained  payload
==============================  ========  =======================================
``{site}/{device}/telemetry``   no, QoS1  :class:`Telemetry`
``{site}/gateway/{gw}/status``  yes       :class:`GatewayStatus` (LWT: offline)
``{site}/{actuator}/cmd``       no, QoS1  :class:`Command`
``{site}/{actuator}/state``     yes       :class:`ActuatorState`
``{site}/{actuator}/ack``       no        :class:`Ack`
``{site}/events``               no        :class:`Event`
``{site}/{actuator}/override``  no, QoS1  :class:`OverrideRequest` (operator -> engine;
                                          answered by an ``override`` or
                                          ``override_refused`` event)
==============================  ========  =======================================

``ts`` is always milliseconds since the epoch; for telemetry it is the time
the sensor was read, so replayed backlog lands where it belongs. ``seq``
counts readings per device and survives restarts, so consumers can spot gaps
and duplicates (a duplicate carries the same ``ts`` and ``seq``).

Decoding untrusted bytes returns a model or raises :class:`ProtocolError`,
never anything else. The contract is strict, so that nothing is stored that
InfluxDB or a rule would read differently from what was sent:

- numbers are JSON numbers: a bool or a string is refused (``"pm10": true``
  was stored as 1, ``"777.5"`` as 777.5), and so are ``NaN``/``Infinity``
  tokens and numbers beyond the float range (JSON has no such values);
- integers fit the fields they are stored in: ``seq`` is uint63 (an InfluxDB
  integer field), counters at most 2**53 - 1, ``ts`` milliseconds before 2286;
- every string that becomes an InfluxDB tag (``model``) is printable text
  without a backslash (InfluxDB 1.x refuses a tag value ending in one and
  doubles the others), 1-64 characters; every string that becomes a string
  field (an event's ``text``, a state's ``reason``, ...) has no control
  characters (InfluxDB 1.x keeps an escaped newline as ``\\n``). Our own
  payloads built in Python have control characters in texts replaced by
  spaces; a decoded one is refused.

:class:`ProtocolError` carries a ``reason`` (one of :data:`REFUSAL_REASONS`),
so that consumers count refusals per reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

ROOT = "dustgate/v1"
ID_PATTERN = r"^[a-z0-9_-]{1,64}$"
_ID = re.compile(ID_PATTERN)
MAX_PAYLOAD = 64 * 1024
GATEWAY_SEGMENT = "gateway"
EVENTS_SEGMENT = "events"

METRICS = (
    "pm1", "pm25", "pm10", "tsp", "noise", "wind_speed", "wind_dir",
    "temp", "rh", "pressure", "rain", "water_level",
)  # fmt: skip
"""Known metric names. Others are allowed (``[a-z0-9_]+``) for site extras."""


REFUSAL_REASONS = ("size", "json", "type", "non_finite", "range", "string", "schema", "topic")
"""Why a payload was refused: too large, not JSON, a value of the wrong JSON type
(a bool or string for a number, ...), a non-finite number, a number outside its
field, a string that cannot be stored as it is, the wrong fields (missing,
unknown, or a value not among the allowed ones), a topic not ours."""


class ProtocolError(ValueError):
    """Bytes or a topic that do not follow the wire contract; ``reason`` says why
    (one of :data:`REFUSAL_REASONS`)."""

    def __init__(self, message: str, reason: str = "schema") -> None:
        super().__init__(message)
        self.reason = reason


class Status(StrEnum):
    """Data quality, after the HJ 212 data flags."""

    OK = "ok"
    FAULT = "fault"
    COMM_ERROR = "comm_error"
    OVER_RANGE = "over_range"
    CALIBRATING = "calibrating"
    MAINTENANCE = "maintenance"
    STOPPED = "stopped"  # the device or the site is not operating (an operator says so)

    @property
    def hj212_flag(self) -> str:
        return _HJ212_FLAGS[self]

    @property
    def severity(self) -> int:
        """How bad, to pick one cause among several (``ok`` 0 .. ``comm_error`` 4)."""
        return _SEVERITY[self]


_HJ212_FLAGS = {
    Status.OK: "N",
    Status.FAULT: "D",
    Status.COMM_ERROR: "B",
    Status.OVER_RANGE: "T",
    Status.CALIBRATING: "C",
    Status.MAINTENANCE: "M",
    Status.STOPPED: "F",
}
"""HJ 212 data flags. ``S`` (manually entered data) has no source in dustgate."""

_SEVERITY = {
    Status.OK: 0,
    Status.OVER_RANGE: 1,
    Status.CALIBRATING: 2,
    Status.MAINTENANCE: 2,
    Status.STOPPED: 2,
    Status.FAULT: 3,
    Status.COMM_ERROR: 4,
}

INT63_MAX = 2**63 - 1
COUNT_MAX = 2**53 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_CONTROL_TABLE = {c: " " for c in (*range(0x20), *range(0x7F, 0xA0))}


def tag_text_problem(value: str) -> str | None:
    """Why ``value`` cannot be an InfluxDB tag value as it is (None: it can)."""
    if "\\" in value:
        return "a backslash cannot be stored in an InfluxDB tag"
    if _CONTROL.search(value):
        return "control characters cannot be stored in an InfluxDB tag"
    return None


def _tag_text(value: str) -> str:
    why = tag_text_problem(value)
    if why is not None:
        raise PydanticCustomError("text_refused", why)
    return value


def _field_text(value: str, info: ValidationInfo) -> str:
    if not _CONTROL.search(value):
        return value
    if info.mode == "python":  # our own text: a newline becomes a space
        return value.translate(_CONTROL_TABLE)
    raise PydanticCustomError(
        "text_refused", "control characters cannot be stored in an InfluxDB string field"
    )


Id = Annotated[str, Field(pattern=ID_PATTERN)]
METRIC_PATTERN = r"^[a-z0-9_]{1,32}$"
MetricName = Annotated[str, Field(pattern=METRIC_PATTERN)]
TimestampMs = Annotated[int, Field(ge=0, lt=10**13, strict=True)]
Number = Annotated[float, Field(strict=True)]
"""A JSON number (an integer or a float; finite: the payload models refuse inf/NaN)."""
Seq = Annotated[int, Field(ge=0, le=INT63_MAX, strict=True)]
Count = Annotated[int, Field(ge=0, le=COUNT_MAX, strict=True)]
Flag = Annotated[bool, Field(strict=True)]
CalScale = Annotated[float, Field(gt=0, strict=True)]
TagText = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_tag_text)]
"""Text stored as an InfluxDB tag value."""


def _finite_data(value: dict[str, Any]) -> dict[str, Any]:
    """Free-form JSON (an event's ``data``) holds no NaN or infinity either."""
    stack: list[Any] = [value]
    while stack:
        x = stack.pop()
        if isinstance(x, float):
            if not math.isfinite(x):
                raise PydanticCustomError("finite_number", "Input should be a finite number")
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list | tuple):
            stack.extend(x)
    return value


# Text stored as an InfluxDB string field (or sent along with one), by length.
_FieldText = AfterValidator(_field_text)
Name64 = Annotated[str, Field(min_length=1, max_length=64), _FieldText]
Text64 = Annotated[str, Field(max_length=64), _FieldText]
Text200 = Annotated[str, Field(max_length=200), _FieldText]
Text1000 = Annotated[str, Field(max_length=1000), _FieldText]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Telemetry(_Payload):
    ts: TimestampMs
    seq: Seq
    values: dict[MetricName, Number] = Field(max_length=64)
    status: Status = Status.OK
    # Per-metric quality where it differs from ``status`` (e.g. one metric
    # over its valid range while the others are fine).
    flags: dict[MetricName, Status] | None = None
    model: TagText | None = None
    # The device's configured read interval: what one reading stands for, so
    # the central side can tell readings expected from readings received.
    interval_s: Annotated[float, Field(gt=0, le=366 * 86400, strict=True)] | None = None
    # The calibration in force for a calibrated metric, [scale, offset]: the
    # value is raw * scale + offset, so the device's raw value is recoverable
    # (raw_value). Only calibrated metrics of ``values`` appear.
    cal: dict[MetricName, tuple[CalScale, Number]] | None = None

    def metric_status(self, metric: str) -> Status:
        if self.flags and metric in self.flags:
            return self.flags[metric]
        return self.status

    def raw_value(self, metric: str) -> float:
        """What the device reported for ``metric``, before calibration."""
        value = self.values[metric]
        if self.cal and metric in self.cal:
            scale, offset = self.cal[metric]
            return (value - offset) / scale
        return value


class DeviceHealth(_Payload):
    state: Literal["online", "offline", "backoff", "starting"]
    last_ok_ts: TimestampMs | None = None
    errors: Count = 0
    consecutive_failures: Count = 0
    last_error: Annotated[str, Field(max_length=200)] | None = None
    poll_interval_s: Number | None = None


class UplinkHealth(_Payload):
    """One upward platform connection (HJ 212) as the gateway sees it."""

    connected: Flag
    backlog: Count = 0  # records waiting for the platform
    evicted: Count = 0  # records dropped from a full backlog
    records_sent: Count = 0
    link_timeouts: Count = 0
    platform_skew_s: Number | None = None  # platform clock minus ours, when it told us


class GatewayStatus(_Payload):
    state: Literal["online", "offline"]
    ts: TimestampMs
    version: str = ""
    uptime_s: Annotated[float, Field(ge=0, strict=True)] = 0.0
    backlog: Count = 0
    evicted: Count = 0
    poll_errors: Count = 0
    refused_commands: Count = 0
    devices: dict[Id, DeviceHealth] = Field(default_factory=dict)
    # at most 64 links: their backlogs' sum stays an int64 (the gateway point's field)
    uplinks: dict[Annotated[str, Field(max_length=300)], UplinkHealth] = Field(
        default_factory=dict, max_length=64
    )


class Command(_Payload):
    id: Name64
    action: Literal["on", "off"]
    lease_s: Annotated[float, Field(gt=0, le=86400, strict=True)] | None = None
    reason: Text200 = ""
    source: Literal["rule", "manual", "override"] = "rule"
    ts: TimestampMs | None = None
    rule: Id | None = None

    @model_validator(mode="after")
    def _on_needs_lease(self) -> Command:
        if self.action == "on" and self.lease_s is None:
            raise ValueError("an 'on' command must carry lease_s")
        return self


class ActuatorState(_Payload):
    state: Literal["on", "off"]
    since: TimestampMs
    source: Literal["rule", "manual", "override", "failsafe", "local", "startup"]
    cmd_id: Text64 | None = None
    lease_until: TimestampMs | None = None
    readback_ok: Flag = True
    reason: Text200 = ""


class Ack(_Payload):
    cmd_id: Text64
    accepted: Flag
    reason: Text200 = ""
    ts: TimestampMs


class Event(_Payload):
    ts: TimestampMs
    kind: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
    text: Text1000
    severity: Literal["info", "warning", "critical"] = "info"
    rule: Id | None = None
    actuator: Id | None = None
    device: Id | None = None
    data: Annotated[dict[str, Any], AfterValidator(_finite_data)] | None = None


class OverrideRequest(_Payload):
    """An operator takes an actuator out of the rules' hands for a while.

    ``on`` leases it regardless of the rules, ``off`` keeps the rules from
    starting it, ``auto`` hands it back. ``for_s`` is required for on/off: an
    override never lasts forever (24 h at most).
    """

    id: Name64
    mode: Literal["on", "off", "auto"]
    for_s: Annotated[float, Field(gt=0, le=86400, strict=True)] | None = None
    who: Name64
    ts: TimestampMs
    reason: Text200 = ""

    @model_validator(mode="after")
    def _duration(self) -> OverrideRequest:
        if self.mode != "auto" and self.for_s is None:
            raise ValueError(f"an override {self.mode!r} must carry for_s (how long)")
        return self


Payload = _Payload  # the base of every wire payload (for typing callers)

PAYLOAD_TYPES: tuple[type[_Payload], ...] = (
    Telemetry,
    GatewayStatus,
    Command,
    ActuatorState,
    Ack,
    Event,
    OverrideRequest,
)

M = TypeVar("M", bound=_Payload)


def encode(payload: _Payload) -> bytes:
    """Compact JSON bytes, omitting unset optionals."""
    return payload.model_dump_json(exclude_none=True).encode()


def decode(model: type[M], data: bytes | bytearray | str) -> M:
    """Decode untrusted bytes into ``model``; raise :class:`ProtocolError` only."""
    if len(data) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(data)} bytes exceeds {MAX_PAYLOAD}", "size")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors()
        reason = refusal_reason(errors[0]["type"]) if errors else "schema"
        raise ProtocolError(_summarise(model, exc), reason) from None
    except (ValueError, TypeError, RecursionError, UnicodeError) as exc:
        raise ProtocolError(f"{model.__name__}: {exc}", "json") from None


_REASONS = {
    "json_invalid": "json",
    "json_type": "json",
    "finite_number": "non_finite",
    "text_refused": "string",
    "string_too_long": "string",
    "string_too_short": "string",
    "string_pattern_mismatch": "string",
    "greater_than": "range",
    "greater_than_equal": "range",
    "less_than": "range",
    "less_than_equal": "range",
    "too_long": "range",
}


def refusal_reason(error_type: str) -> str:
    """The :data:`REFUSAL_REASONS` entry for one of pydantic's error types."""
    reason = _REASONS.get(error_type)
    if reason is not None:
        return reason
    if error_type.endswith("_type") or error_type.endswith("_parsing"):
        return "type"  # a bool or a string where a number belongs, ...
    return "schema"


def _summarise(model: type[BaseModel], exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(payload)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return f"{model.__name__}: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


# ---------------------------------------------------------------- topics

TopicKind = Literal["telemetry", "status", "cmd", "state", "ack", "events", "override"]


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic. ``name`` is the device, actuator or gateway id."""

    kind: TopicKind
    site: str
    name: str | None = None


def check_id(value: str, what: str = "id") -> str:
    if not _ID.match(value):
        raise ProtocolError(f"{what} {value!r} must match [a-z0-9_-]{{1,64}}", "topic")
    return value


def telemetry_topic(site: str, device: str) -> str:
    return f"{ROOT}/{check_id(site, 'site')}/{check_id(device, 'device')}/telemetry"


def status_topic(site: str, gateway: str) -> str:
    return (
        f"{ROOT}/{check_id(site, 'site')}/{GATEWAY_SEGMENT}/{check_id(gateway, 'gateway')}/status"
    )


def cmd_topic(site: str, actuator: str) -> str:
    return f"{ROOT}/{check_id(site, 'site')}/{check_id(actuator, 'actuator')}/cmd"


def state_topic(site: str, actuator: str) -> str:
    return f"{ROOT}/{check_id(site, 'site')}/{check_id(actuator, 'actuator')}/state"


def ack_topic(site: str, actuator: str) -> str:
    return f"{ROOT}/{check_id(site, 'site')}/{check_id(actuator, 'actuator')}/ack"


def override_topic(site: str, actuator: str) -> str:
    return f"{ROOT}/{check_id(site, 'site')}/{check_id(actuator, 'actuator')}/override"


def events_topic(site: str) -> str:
    return f"{ROOT}/{check_id(site, 'site')}/{EVENTS_SEGMENT}"


def subscription(kind: TopicKind, site: str = "+") -> str:
    """An MQTT filter for one kind of topic, for one site or (``+``) all."""
    s = site if site == "+" else check_id(site, "site")
    return {
        "telemetry": f"{ROOT}/{s}/+/telemetry",
        "status": f"{ROOT}/{s}/{GATEWAY_SEGMENT}/+/status",
        "cmd": f"{ROOT}/{s}/+/cmd",
        "state": f"{ROOT}/{s}/+/state",
        "ack": f"{ROOT}/{s}/+/ack",
        "events": f"{ROOT}/{s}/{EVENTS_SEGMENT}",
        "override": f"{ROOT}/{s}/+/override",
    }[kind]


def parse_topic(topic: str) -> Topic:
    """Parse a topic string; raise :class:`ProtocolError` if it is not ours."""
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise ProtocolError(f"topic {topic!r} is not under {ROOT}/", "topic")
    site = check_id(parts[2], "site")
    rest = parts[3:]
    if rest == [EVENTS_SEGMENT]:
        return Topic("events", site)
    if len(rest) == 3 and rest[0] == GATEWAY_SEGMENT and rest[2] == "status":
        return Topic("status", site, check_id(rest[1], "gateway"))
    if len(rest) == 2 and rest[1] in ("telemetry", "cmd", "state", "ack", "override"):
        kind: TopicKind = rest[1]  # type: ignore[assignment]
        return Topic(kind, site, check_id(rest[0], "device" if kind == "telemetry" else "actuator"))
    raise ProtocolError(f"topic {topic!r} is not one of the dustgate topics", "topic")


def now_ms(clock: float) -> int:
    """Seconds (wall clock) to the wire's integer milliseconds."""
    return round(clock * 1000)
