"""A real influxd loaded once through the sink, for a test module's queries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gateway.localservices import Influxd


@contextlib.contextmanager
def loaded_influxd(
    tmp_path_factory: pytest.TempPathFactory, load: Callable[[str, Path], Awaitable[None]]
) -> Iterator[Influxd]:
    """Start influxd, run ``load(url, sink_state_dir)``, yield it, stop it."""
    ix = Influxd(tmp_path_factory.mktemp("influxd")).start()
    try:
        asyncio.run(load(ix.url, tmp_path_factory.mktemp("sinkstate")))
        yield ix
    finally:
        ix.stop()
