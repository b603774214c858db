"""The engine's door for telemetry, without a broker: the strict wire contract and the
plausibility limits as the service applies them (refused and counted by reason, stored
flagged, never a traceback). The issue's regression cases, each failing on the old code."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_service import T0, make_service

from rules.service import health
from rules.sink.lineprotocol import parse_line

TOPIC = "dustgate/v1/site-01/gate/telemetry"


def doc(n: int, **changes: object) -> bytes:
    d: dict[str, object] = {"ts": int(T0 * 1000) + n, "seq": n, "values": {"pm10": 88.0}}
    d.update(changes)
    return json.dumps(d).encode()


def test_wrong_types_and_sizes_are_refused_at_decoding_and_counted_by_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc, sink = make_service(tmp_path)
    bad = [
        doc(1, values={"pm10": True}),  # was stored as 1, status ok
        doc(2, values={"pm10": "777.5"}),  # was stored as 777.5
        doc(3, seq=10**30),  # was a LineProtocolError traceback per reading in the sink
        doc(4, model="ab\\"),  # was dead-lettered by InfluxDB 1.x: "invalid tag format"
        b'{"ts": 1780000000005, "seq": 5, "values": {"pm10": NaN}}',
        b"\xff not json",
    ]
    with caplog.at_level(logging.INFO):
        for i, raw in enumerate(bad):
            assert svc.on_message(TOPIC, raw, T0 + i) == []
        svc.on_message(TOPIC, doc(9, model="SDS011 v1.2"), T0 + 9)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    c = svc.counters
    assert c["decode_errors"] == 6
    assert (c["refused_type"], c["refused_range"], c["refused_string"]) == (2, 1, 1)
    assert (c["refused_non_finite"], c["refused_json"]) == (1, 1)
    assert sink.seqs() == [9]  # only the good reading is stored
    stats = parse_line(health.stats_line(svc, T0 + 10)).fields
    assert stats["refused_type"] == 2 and stats["refused_string"] == 1
    assert stats["decode_errors"] == 6


def test_implausible_values_are_stored_flagged_counted_and_left_out(tmp_path: Path) -> None:
    svc, sink = make_service(tmp_path, above=150)
    pubs = svc.on_message(TOPIC, doc(1, values={"pm10": 1e300, "rh": 55.0}), T0)
    pubs += svc.on_message(TOPIC, doc(2, values={"pm10": -5.0}), T0 + 1)
    pubs += svc.on_tick(T0 + 2)
    assert not [x for x in pubs if x.kind == "command"]  # 1e300 > 150 sprayed before
    first, second = sink.points("telemetry")
    assert first.fields["pm10"] == 1e300 and first.tags["pm10_flag"] == "over_range"
    assert "rh_flag" not in first.tags and first.tags["status"] == "ok"
    assert second.tags["pm10_flag"] == "fault"
    assert (svc.counters["stored_over_range"], svc.counters["stored_fault"]) == (1, 1)
    ec = svc.engine.counters
    assert (ec["over_limit"], ec["below_limit"]) == (1, 1)
    stats = parse_line(health.stats_line(svc, T0 + 3)).fields
    assert stats["engine_over_limit"] == 1 and stats["stored_over_range"] == 1
    # a gateway's own flag wins over ours
    svc.on_message(TOPIC, doc(3, values={"pm10": 1e9}, flags={"pm10": "calibrating"}), T0 + 3)
    assert sink.points("telemetry")[-1].tags["pm10_flag"] == "calibrating"
