"""The ``incident`` measurement in InfluxDB (Grafana annotations and the ranking).

==============  =========================  ===============================================
measurement     tags                       fields
==============  =========================  ===============================================
``incident``    site, cause, kind          ``id`` (int), ``text`` (str), ``status`` (str);
                (opened, acknowledged,     ``ack_s`` (float: opened -> acknowledged, on the
                cleared, reraised,         acknowledged point; resolving an incident nobody
                overdue, resolved)         acknowledged writes both steps), ``resolve_s``
                                           (float: opened -> resolved), ``over_s`` (float,
                                           on the step that closed a stretch of an
                                           over-the-limit cause: cleared, or resolved
                                           while it held: how long it held),
                                           ``overdue`` (int 1, on overdue)
==============  =========================  ===============================================

The time is the step's (the incident's ``updated_at``), in ms. Notes and
repeats are not written (the console shows them; Grafana needs the steps).
"""

from __future__ import annotations

from rules.incidents.machine import Changed
from rules.sink.lineprotocol import FieldValue, encode_line

INCIDENT = "incident"
WRITTEN_KINDS = frozenset({"opened", "acknowledged", "cleared", "reraised", "overdue", "resolved"})


def incident_line(ch: Changed, over_s: float | None = None) -> str | None:
    """The point of one step, or None for steps not written (notes, repeats)."""
    if ch.kind not in WRITTEN_KINDS:
        return None
    inc = ch.incident
    fields: dict[str, FieldValue] = {
        "id": int(inc.id),
        "status": inc.status,
        "text": (ch.text or inc.detail or ch.kind)[:500],
    }
    if ch.kind == "acknowledged" and inc.acked_at is not None:
        fields["ack_s"] = float(inc.acked_at - inc.opened_at)
    if ch.kind == "resolved" and inc.resolved_at is not None:
        fields["resolve_s"] = float(inc.resolved_at - inc.opened_at)
    if ch.kind in ("cleared", "resolved") and over_s is not None:
        fields["over_s"] = float(max(0.0, over_s))
    if ch.kind == "overdue":
        fields["overdue"] = 1
    tags = {"site": inc.site, "cause": inc.cause, "kind": ch.kind}
    return encode_line(INCIDENT, tags, fields, round(inc.updated_at * 1000))
