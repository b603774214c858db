"""Shared fixtures: real mosquitto and influxd on loopback, stopped after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from webhooks import Hook, serve_hook

from gateway.localservices import Influxd, Mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Influxd]:
    db = Influxd(tmp_path / "influxdb").start()
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A scripted webhook receiver on loopback (see tests/webhooks.py)."""
    with serve_hook() as h:
        yield h
