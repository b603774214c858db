"""Wire-contract messages -> InfluxDB points (the storage schema of DESIGN.md).

==============  ==========================================  ========================================
measurement     tags                                       fields
==============  ==========================================  ========================================
``telemetry``   site, device, model (if known)             one float per metric (``pm10`` ...),
                                                           ``status`` (str), ``seq`` (int),
                                                           ``<metric>_flag`` (str) where a metric's
                                                           quality differs from ``status``
``actuator``    site, actuator, source                     ``on`` (int 0/1), ``cmd_id`` (str),
                                                           ``reason`` (str), ``lease_until`` (ms),
                                                           ``readback_ok`` (int 0/1)
``rule_event``  site, kind, severity, rule, actuator,      ``text`` (str): Grafana annotations
                device (those present)
``gateway``     site, gateway                              ``online``, ``backlog``, ``evicted``,
                                                           ``poll_errors``, ``devices``,
                                                           ``devices_offline``,
                                                           ``refused_commands`` (int), ``uptime``
                                                           (float s)
``gateway``     engine                                     the rule engine's own rates:
                                                           ``messages_per_s`` (float),
                                                           ``decode_errors``, ``dropped`` and the
                                                           sink's counters (int)
==============  ==========================================  ========================================

Timestamps are milliseconds: for telemetry the sensor read time ``ts`` (so
replayed backlog lands where it belongs), for actuator state its ``since``,
for events and gateway status their ``ts``.  A duplicate message therefore
becomes the same point and overwrites itself in InfluxDB, which is what we
want for MQTT at-least-once delivery.

Field types never vary (InfluxDB rejects a field whose type changes): metric
values are always written as floats even if a sensor sent an integer, counters
always as integers.  A metric whose name collides with a reserved field
(``status``, ``seq``, or ending in ``_flag``) is written as ``<name>_value``.
Grafana dashboards and ``dustgate report`` depend on these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.protocol import ActuatorState, Event, GatewayStatus, Telemetry

from .lineprotocol import FieldValue, encode_line

TELEMETRY = "telemetry"
ACTUATOR = "actuator"
RULE_EVENT = "rule_event"
GATEWAY = "gateway"

_RESERVED_TELEMETRY_FIELDS = frozenset({"status", "seq"})
OFFLINE_STATES = frozenset({"offline", "backoff"})


def metric_field(metric: str) -> str:
    """The field name a metric is stored under (itself unless it collides)."""
    if metric in _RESERVED_TELEMETRY_FIELDS or metric.endswith("_flag"):
        return f"{metric}_value"
    return metric


def telemetry_line(
    site: str, device: str, msg: Telemetry, *, with_flags: bool = True
) -> str | None:
    """One reading; ``None`` only if it carries nothing storable (cannot happen with seq)."""
    tags = {"site": site, "device": device}
    if msg.model:
        tags["model"] = msg.model
    fields: dict[str, FieldValue] = {metric_field(k): float(v) for k, v in msg.values.items()}
    fields["status"] = str(msg.status)
    fields["seq"] = int(msg.seq)
    if with_flags and msg.flags:
        for metric, flag in msg.flags.items():
            if flag != msg.status:
                fields[f"{metric}_flag"] = str(flag)
    return encode_line(TELEMETRY, tags, fields, msg.ts)


def actuator_line(site: str, actuator: str, state: ActuatorState) -> str:
    fields: dict[str, FieldValue] = {
        "on": 1 if state.state == "on" else 0,
        "readback_ok": 1 if state.readback_ok else 0,
        "reason": state.reason,
        "cmd_id": state.cmd_id or "",
    }
    if state.lease_until is not None:
        fields["lease_until"] = int(state.lease_until)
    tags = {"site": site, "actuator": actuator, "source": state.source}
    line = encode_line(ACTUATOR, tags, fields, state.since)
    assert line is not None  # "on" is always storable
    return line


def event_line(site: str, event: Event) -> str:
    tags = {
        "site": site,
        "kind": event.kind,
        "severity": event.severity,
        "rule": event.rule or "",
        "actuator": event.actuator or "",
        "device": event.device or "",
    }
    line = encode_line(RULE_EVENT, tags, {"text": event.text}, event.ts)
    assert line is not None
    return line


def gateway_line(site: str, gateway: str, status: GatewayStatus) -> str:
    offline = sum(1 for h in status.devices.values() if h.state in OFFLINE_STATES)
    fields: dict[str, FieldValue] = {
        "online": 1 if status.state == "online" else 0,
        "backlog": int(status.backlog),
        "evicted": int(status.evicted),
        "poll_errors": int(status.poll_errors),
        "refused_commands": int(status.refused_commands),
        "devices": len(status.devices),
        "devices_offline": offline,
        "uptime": float(status.uptime_s),
        # environmental-platform (HJ 212) links: down ones, records waiting for them
        "uplinks": len(status.uplinks),
        "uplinks_down": sum(1 for u in status.uplinks.values() if not u.connected),
        "uplink_backlog": sum(u.backlog for u in status.uplinks.values()),
    }
    line = encode_line(GATEWAY, {"site": site, "gateway": gateway}, fields, status.ts)
    assert line is not None
    return line


@dataclass(frozen=True, slots=True)
class EngineStats:
    """The rule engine's own health, sampled every few seconds by the service."""

    ts_ms: int
    messages_per_s: float
    decode_errors: int = 0
    dropped: int = 0


def engine_line(
    engine: str, stats: EngineStats, sink_counters: Mapping[str, int] | None = None
) -> str:
    """Engine rates, plus the sink's counters (``InfluxSink.counters.as_dict()``)."""
    fields: dict[str, FieldValue] = {
        "messages_per_s": float(stats.messages_per_s),
        "decode_errors": int(stats.decode_errors),
        "dropped": int(stats.dropped),
    }
    for key, value in (sink_counters or {}).items():
        fields[f"sink_{key}"] = int(value)
    line = encode_line(GATEWAY, {"engine": engine}, fields, stats.ts_ms)
    assert line is not None
    return line
