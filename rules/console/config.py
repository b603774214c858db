"""``console.yaml``: what ``dustgate console`` serves and where it reads and writes.

::

    console: {listen: 127.0.0.1, port: 8480}     # the marker `dustgate check` knows it by
    mqtt: {host: 127.0.0.1, port: 1883, username: dustgate-console,
           password: {env: DUSTGATE_CONSOLE_MQTT_PASSWORD}}
    influx: {url: http://127.0.0.1:8086, database: dustgate}
    rules_file: /etc/dustgate/rules.yaml         # the engine's file (thresholds are edited here)
    store: /var/lib/dustgate/console.db          # users, sessions, audit log, rules versions
    sites: [site-01, site-02]                    # optional: board order (default: as seen)

Relative paths are relative to this file's folder. The session key lives in the
store (generated on first start), never in this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from gateway.configfile import ConfigError, Duration, MqttSettings, Secret, StrictModel, load
from rules.core.model import Id
from rules.incidents.settings import IncidentsSettings


class ConsoleSettings(StrictModel):
    """How the web server runs (``console:``)."""

    listen: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8480
    # TLS directly (else put a reverse proxy in front: deploy/central/README.md)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # cookies get the Secure flag (set it behind a TLS reverse proxy too)
    secure_cookies: bool = False
    session_idle: Duration = 8 * 3600.0
    session_max: Duration = 7 * 86400.0
    max_body_bytes: Annotated[int, Field(ge=1024, le=10 * 1024 * 1024)] = 256 * 1024
    # a site is stale when nothing came from it for this long
    stale_after: Duration = 120.0
    title: Annotated[str, Field(max_length=100)] = "dustgate district console"

    @field_validator("listen")
    @classmethod
    def _loopback_or_any(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expected an address to listen on, e.g. 127.0.0.1")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> ConsoleSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @property
    def cookies_secure(self) -> bool:
        """Secure cookies when configured, and always when the console serves TLS itself."""
        return self.secure_cookies or self.tls_cert_file is not None


class ConsoleInflux(StrictModel):
    """Where the history is read (InfluxDB 1.x API, InfluxQL)."""

    url: Annotated[str, Field(pattern=r"^https?://")] = "http://127.0.0.1:8086"
    database: str = "dustgate"
    username: str | None = None
    password: Secret | None = None
    timeout: Duration = 20.0


class ConsoleFile(StrictModel):
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    influx: ConsoleInflux | None = None
    rules_file: Path
    store: Path = Path("./console.db")
    sites: list[Id] | None = None
    # contacts, notifiers, per-cause times (rules/incidents/settings.py); the incidents
    # live in `store:` (its `db:` is for `dustgate incidents` alone)
    incidents: IncidentsSettings | None = None


def load_console_file(
    path: Path | str, text: str | None = None, context: dict[str, Any] | None = None
) -> ConsoleFile:
    """Read and validate ``console.yaml``; raise ConfigError with file:line:col issues."""
    cf = load(ConsoleFile, path, text=text, context=context)
    base = Path(path).parent
    if not cf.rules_file.is_absolute():
        cf.rules_file = base / cf.rules_file
    if not cf.store.is_absolute():
        cf.store = base / cf.store
    c = cf.console
    if c.tls_cert_file is not None and not c.tls_cert_file.is_absolute():
        c.tls_cert_file = base / c.tls_cert_file
    if c.tls_key_file is not None and not c.tls_key_file.is_absolute():
        c.tls_key_file = base / c.tls_key_file
    return cf


__all__ = ["ConfigError", "ConsoleFile", "load_console_file"]
