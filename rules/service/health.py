"""The rule service's health: its counters as points and log lines.

Every ``stats_interval`` (10 s) a ``gateway`` point tagged
``engine=<name>``: ``messages_per_s``, cumulative ``messages``,
``decode_errors``, ``dropped``, ``commands_sent``, ``events_sent``,
``publish_failures``, ``notify_*`` and the sink's counters as ``sink_*``
(:func:`stats_line`); a summary log line every minute (:func:`summary`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from gateway import protocol as p
from rules.core.engine import Engine
from rules.service.notify import Notifier
from rules.service.outbound import LineSink
from rules.sink.lineprotocol import FieldValue, encode_line
from rules.sink.points import GATEWAY

SUMMARY_EVERY_S = 60.0


@dataclass
class Rate:
    """Messages per second between two health points."""

    last_t: float
    last_n: int = 0
    rate: float = 0.0


class Observed(Protocol):
    """What the health figures are read from (:class:`rules.service.service.RulesService`)."""

    counters: Counter[str]
    engine_name: str
    notifier: Notifier
    sink: LineSink | None
    rate: Rate

    def settle(self) -> Engine: ...


def stats_line(svc: Observed, now: float) -> str:
    """The ``gateway`` point of the engine (updates the message rate)."""
    mono = time.monotonic()
    r = svc.rate
    n = svc.counters["messages"]
    dt = mono - r.last_t
    if dt > 0:
        r.rate = (n - r.last_n) / dt
    r.last_t, r.last_n = mono, n
    ec = svc.settle().counters
    fields: dict[str, FieldValue] = {
        "messages_per_s": float(r.rate),
        "messages": int(n),
        "readings": int(ec["readings"]),
        "decode_errors": int(svc.counters["decode_errors"]),
        "dropped": int(dropped(svc)),
        "commands_sent": int(svc.counters["commands_sent"]),
        "events_sent": int(svc.counters["events_sent"]),
        "publish_failures": int(svc.counters["publish_failures"]),
        "publish_dropped_offline": int(svc.counters["publish_dropped_offline"]),
        "reloads": int(svc.counters["reloads"]),
        "reload_errors": int(svc.counters["reload_errors"]),
    }
    # why readings and messages were refused or left out (gateway.protocol, rules.core.limits)
    for k, v in svc.counters.items():
        if k.startswith(("refused_", "stored_")):
            fields[k] = int(v)
    for k in ("non_finite", "below_limit", "over_limit"):
        fields[f"engine_{k}"] = int(ec[k])
    for k in ("sent", "failed", "retried", "dropped_full"):
        fields[f"notify_{k}"] = int(svc.notifier.counters[k])
    # held back by the per-(site, rule) limit and folded into a later message: not lost
    fields["notify_suppressed"] = int(ec["notify_suppressed"])
    fields["notify_flushed"] = int(ec["notify_flushed"])
    counters = getattr(getattr(svc.sink, "counters", None), "as_dict", None)
    if callable(counters):
        for k, v in counters().items():
            fields[f"sink_{k}"] = int(v)
    line = encode_line(GATEWAY, {"engine": svc.engine_name}, fields, p.now_ms(now))
    assert line is not None
    return line


def dropped(svc: Observed) -> int:
    """Readings dropped by the service or the engine (not stored in the windows)."""
    ec = svc.settle().counters
    return (
        svc.counters["other_site"]
        + svc.counters["future_ts"]
        + ec["duplicate"]
        + ec["out_of_order"]
        + ec["other_site"]
    )


def summary(svc: Observed) -> str:
    """The one-line summary logged every minute and on stop."""
    ec = svc.settle().counters
    c = svc.counters
    return (
        f"{svc.rate.rate:.1f} msg/s, {c['messages']} messages, "
        f"{ec['readings']} readings, {c['decode_errors']} decode errors, "
        f"{dropped(svc)} dropped (dup {ec['duplicate']}, out of order "
        f"{ec['out_of_order']}, other site {c['other_site']}, future "
        f"{c['future_ts']}), {ec['below_limit'] + ec['over_limit']} "
        f"implausible, {ec['non_finite']} non-finite, "
        f"{ec['unknown_device']} from devices no rule reads, "
        f"{c['commands_sent']} commands, {c['events_sent']} events"
    )
