"""Fixtures for the sink tests: a scriptable fake InfluxDB and a shared real influxd."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sinkhelpers import FakeInflux

from gateway.localservices import Influxd


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes minutes by nature; still in the default run")


@pytest.fixture
def fake_influx() -> Iterator[FakeInflux]:
    fake = FakeInflux()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        fake.thread.join()


@pytest.fixture(scope="module")
def shared_influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    """One influxd per test module (start-up costs ~1 s); tests use their own database."""
    db = Influxd(tmp_path_factory.mktemp("influxd")).start()
    try:
        yield db
    finally:
        db.stop()
