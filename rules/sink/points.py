"""Wire-contract messages -> InfluxDB points (the storage schema of DESIGN.md).

==============  ==========================================  ========================================
measurement     tags                                       fields
==============  ==========================================  ========================================
``telemetry``   site, device, model (if known),            one float per metric (``pm10`` ...),
                ``status`` (the reading's), ``quality``    ``seq`` (int), ``interval_s`` (float:
                (``ok`` or the worst cause), and           the device's read interval, where known),
                ``<metric>_flag`` where a metric's         ``<metric>_raw`` (float) for a calibrated
                quality differs from ``status``            metric: what the device reported
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

What counts as valid is decided by tags, because InfluxQL can filter on an
absent tag (``"pm10_flag"::tag = ''``) but never on an absent field: a
reading is valid when ``quality`` is ``ok`` (its status is ``ok`` and no
metric is flagged); one metric of it is valid when ``status`` is ``ok`` and
its ``<metric>_flag`` is empty.  Queries write ``::tag`` because points
stored before this schema have fields of the same names.  ``interval_s``
is what a reading stands for: the sum of it over valid readings, divided by
the time range, is the data completeness (see ``rules.history.report``).

Field types never vary (InfluxDB rejects a field whose type changes): metric
values are always written as floats even if a sensor sent an integer, counters
always as integers.  A metric whose name collides with a field or tag of
ours (``status``, ``seq``, ``interval_s``, ``site``, ``device``, ``model``,
``quality``, ``time``, or ending in ``_flag`` or ``_raw``) is written as
``<name>_value``.  A calibrated metric (telemetry ``cal``) also stores its raw
value, ``(value - offset) / scale``, so a later co-location fit can start
from what the sensor itself said.
Grafana dashboards and ``dustgate report`` depend on these names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.protocol import ActuatorState, Event, GatewayStatus, Status, Telemetry

from .lineprotocol import FieldValue, encode_line

TELEMETRY = "telemetry"
ACTUATOR = "actuator"
RULE_EVENT = "rule_event"
GATEWAY = "gateway"

# fields of ours, and the tag keys (a field of a tag's name makes InfluxQL ambiguous)
_RESERVED_TELEMETRY_FIELDS = frozenset(
    {"status", "seq", "interval_s", "site", "device", "model", "quality", "time"}
)
OFFLINE_STATES = frozenset({"offline", "backoff"})


def metric_field(metric: str) -> str:
    """The field name a metric is stored under (itself unless it collides)."""
    if metric in _RESERVED_TELEMETRY_FIELDS or metric.endswith(("_flag", "_raw")):
        return f"{metric}_value"
    return metric


# InfluxQL conditions selecting valid data in this schema (``::tag``: see above)
VALID_READING = "\"quality\"::tag = 'ok'"


def valid_metric(metric: str) -> str:
    """The InfluxQL condition selecting the valid values of one metric."""
    return f"\"status\"::tag = 'ok' AND \"{metric}_flag\"::tag = ''"


def reading_quality(status: Status, flags: Mapping[str, Status] | None) -> Status:
    """``ok`` if the reading and every metric of it are ``ok``, else the worst cause."""
    worst = status
    if flags:
        for flag in flags.values():
            if flag.severity > worst.severity:
                worst = flag
    return worst


def telemetry_line(
    site: str, device: str, msg: Telemetry, *, interval_s: float | None = None
) -> str | None:
    """One reading; ``None`` only if it carries nothing storable (cannot happen with seq).

    ``interval_s``: the device's read interval where the message does not carry
    it (a gateway from before it did), else nothing is stored for it.
    """
    status = msg.status
    tags = {"site": site, "device": device, "status": status.value}
    if msg.model:
        tags["model"] = msg.model
    fields: dict[str, FieldValue] = {metric_field(k): float(v) for k, v in msg.values.items()}
    if msg.cal:
        for metric, (scale, offset) in msg.cal.items():
            value = msg.values.get(metric)
            if value is not None and math.isfinite(raw := (value - offset) / scale):
                fields[f"{metric_field(metric)}_raw"] = raw
    fields["seq"] = int(msg.seq)
    interval = msg.interval_s if msg.interval_s is not None else interval_s
    if interval is not None:
        fields["interval_s"] = float(interval)
    flags = msg.flags
    if flags:
        for metric, flag in flags.items():
            if flag != status:
                tags[f"{metric}_flag"] = flag.value
        tags["quality"] = reading_quality(status, flags).value
    else:
        tags["quality"] = status.value
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
