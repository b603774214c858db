"""The sink's InfluxDB v2 write path (``api: v2``, ``/api/v2/write``) against a real
server: Debian's VictoriaMetrics, which speaks that endpoint (InfluxDB 2.x is not
packaged for Debian; its 1.6 influxd predates the v2 compatibility endpoint)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.localservices import ServiceError, VictoriaMetrics, find_binary
from gateway.protocol import ActuatorState, Telemetry
from rules.sink.points import actuator_line, telemetry_line
from rules.sink.settings import InfluxSettings
from rules.sink.writer import InfluxSink

pytestmark = pytest.mark.integration

T0 = 1_796_000_000_000  # ms, 2026-11


@pytest.fixture(scope="module")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    try:
        find_binary("victoria-metrics")
    except ServiceError:
        pytest.skip("Debian's victoria-metrics is not installed (not packaged for this release)")
    vm = VictoriaMetrics(tmp_path_factory.mktemp("victoria")).start()
    try:
        yield vm
    finally:
        vm.stop()


def v2_settings(vm: VictoriaMetrics, **extra: object) -> InfluxSettings:
    return InfluxSettings.model_validate(
        {
            "url": vm.url,
            "api": "v2",
            "org": "district",
            "bucket": "dustgate",
            "token": "not-checked-by-victoria",
            "flush_interval": 0.05,
            "batch_size": 250,
            **extra,
        }
    )


@pytest.mark.parametrize("gzip", [True, False])
async def test_v2_writes_every_point_exactly_once(
    victoria: VictoriaMetrics, tmp_path: Path, gzip: bool
) -> None:
    site = f"v2-{'gz' if gzip else 'plain'}"
    n = 1000
    lines = []
    for seq in range(n):
        msg = Telemetry(ts=T0 + seq * 1000, seq=seq, values={"pm10": 40.0 + seq % 50, "pm25": 9.5})
        line = telemetry_line(site, "gate", msg)
        assert line is not None
        lines.append(line)
    state = ActuatorState(state="on", since=T0, source="rule", cmd_id="c1", lease_until=T0 + 60_000)
    act = actuator_line(site, "cannon-1", state)
    async with InfluxSink(v2_settings(victoria, gzip=gzip), tmp_path) as sink:
        sink.add_many(lines)
        sink.add(act)
        assert await sink.flush(30)
        c = sink.counters
    assert (c.written, c.dead_lettered, c.retried) == (n + 1, 0, 0)

    pm10 = victoria.export(f'telemetry_pm10{{site="{site}",device="gate"}}')
    assert len(pm10) == 1
    assert pm10[0]["timestamps"] == [T0 + seq * 1000 for seq in range(n)]
    assert pm10[0]["values"] == [40.0 + seq % 50 for seq in range(n)]
    seqs = victoria.export(f'telemetry_seq{{site="{site}"}}')
    assert seqs[0]["values"] == list(range(n))
    on = victoria.export(f'actuator_on{{site="{site}",actuator="cannon-1"}}')
    assert on[0]["values"] == [1] and on[0]["timestamps"] == [T0]
