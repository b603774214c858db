"""InfluxSettings as read from rules.yaml ``influx:``: errors name the file, line, field."""

from __future__ import annotations

import pytest

from gateway.configfile import ConfigError, load
from rules.sink.settings import InfluxSettings


def test_defaults_and_durations():
    s = load(InfluxSettings, "rules.yaml", text="flush_interval: 500ms\nmax_retry_delay: 1m\n")
    assert (s.flush_interval, s.max_retry_delay, s.api, s.database) == (0.5, 60.0, "v1", "dustgate")


@pytest.mark.parametrize(
    "text,where",
    [
        ("url: influx:8086\n", "rules.yaml:1:6: url:"),
        ("api: v2\nbucket: b\n", "rules.yaml:1:1:"),
        ("batch_size: 0\n", "rules.yaml:1:13: batch_size:"),
        ("spool_max_bytes: 10\n", "rules.yaml:1:18: spool_max_bytes:"),
        ("gzip_levle: 3\n", "rules.yaml:1:1: gzip_levle: unknown key"),
    ],
)
def test_bad_settings_are_reported_where_they_are(text: str, where: str):
    with pytest.raises(ConfigError) as err:
        load(InfluxSettings, "rules.yaml", text=text)
    assert str(err.value).startswith(where), str(err.value)
