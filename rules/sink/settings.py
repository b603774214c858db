"""Where the engine writes: InfluxDB connection settings (rules.yaml ``influx:``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gateway.configfile import Duration, Secret, StrictModel


class InfluxSettings(StrictModel):
    """API v1 (``/write``: InfluxDB 1.x, 3.x compatibility) or v2 (``/api/v2/write``)."""

    url: str = "http://127.0.0.1:8086"
    api: Literal["v1", "v2"] = "v1"
    # v1
    database: str = "dustgate"
    retention_policy: str | None = None
    username: str | None = None
    password: Secret | None = None
    create_database: bool = True  # v1 only: CREATE DATABASE on start (idempotent)
    # v2
    org: str | None = None
    bucket: str | None = None
    token: Secret | None = None
    # batching, retries, spool
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    flush_interval: Duration = 1.0
    gzip: bool = True
    gzip_level: Annotated[int, Field(ge=1, le=9)] = 1  # fast: the Pi's CPU is the scarce part
    timeout: Duration = 10.0
    retry_base_delay: Duration = 0.5  # first back-off; doubles per failure, with jitter
    max_retry_delay: Duration = 30.0
    close_timeout: Duration = 10.0  # close(): after this, whatever is unsent goes to the spool
    spool_dir: Path | None = None  # default: <state_dir>/spool
    spool_max_bytes: Annotated[int, Field(ge=1024)] = 512 * 1024 * 1024
    # segment files rotate at this size (default: spool_max_bytes / 16, 64 KiB .. 8 MiB)
    spool_segment_bytes: Annotated[int, Field(ge=256)] | None = None
    dead_letter_file: Path | None = None  # default: <state_dir>/dead-letter.jsonl

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected http://host:port or https://host:port")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _v2_needs_org(self) -> InfluxSettings:
        if self.api == "v2" and not self.org:
            raise ValueError("api: v2 needs org: (and usually bucket: and token:)")
        return self
