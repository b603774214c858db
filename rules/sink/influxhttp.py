"""A minimal, blocking InfluxDB write client (stdlib ``http.client``).

Used only from the sink's writer thread.  Not influxdb-client: we need the
status, headers and body of every answer to decide per line what to do
(retry, bisect, dead-letter), and our own retry/backoff.

API v1 (InfluxDB 1.x, 3.x compatibility)::

    POST {url}/write?db=DB[&rp=RP]&precision=ms      Authorization: Basic (if username)

API v2 (InfluxDB 2.x, 1.8+, 3.x)::

    POST {url}/api/v2/write?org=ORG&bucket=BUCKET&precision=ms
    Authorization: Token TOKEN

Bodies are gzip-compressed (``Content-Encoding: gzip``) when enabled.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import http.client
import time
import urllib.parse
from dataclasses import dataclass

from .settings import InfluxSettings

RETRYABLE_STATUS = frozenset({401, 403, 404, 408, 425, 429})
"""Besides 5xx and no answer at all: auth/config problems are retried (and
logged) rather than dropped, so an operator can fix them without data loss."""


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int | None  # None: no HTTP answer (refused, reset, timeout)
    body: bytes = b""
    retry_after: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status in RETRYABLE_STATUS

    def describe(self) -> str:
        if self.status is None:
            return self.error
        return f"HTTP {self.status}: {self.body[:300].decode('utf-8', 'replace')}"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def write_path(settings: InfluxSettings, base_path: str = "") -> str:
    """Path and query of the write endpoint for the configured API."""
    if settings.api == "v2":
        params = {
            "org": settings.org or "",
            "bucket": settings.bucket or settings.database,
            "precision": "ms",
        }
        return f"{base_path}/api/v2/write?{urllib.parse.urlencode(params)}"
    params = {"db": settings.database}
    if settings.retention_policy:
        params["rp"] = settings.retention_policy
    params["precision"] = "ms"
    return f"{base_path}/write?{urllib.parse.urlencode(params)}"


def auth_headers(settings: InfluxSettings) -> dict[str, str]:
    if settings.api == "v2":
        if settings.token is not None:
            return {"Authorization": f"Token {settings.token.get_secret_value()}"}
        return {}
    if settings.username:
        pw = settings.password.get_secret_value() if settings.password else ""
        cred = base64.b64encode(f"{settings.username}:{pw}".encode()).decode()
        return {"Authorization": f"Basic {cred}"}
    return {}


class InfluxHttp:
    def __init__(self, settings: InfluxSettings):
        self.settings = settings
        parts = urllib.parse.urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"influx url must be http(s)://host[:port], got {settings.url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        base = parts.path.rstrip("/")
        self.write_path = write_path(settings, base)
        self._query_path = f"{base}/query"
        self._headers = {"Content-Type": "text/plain; charset=utf-8", **auth_headers(settings)}
        if settings.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.settings.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, path: str, body: bytes, headers: dict[str, str]) -> HttpResult:
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept-alive connection the server closed meanwhile: one fresh try.
                if attempt == 0 and isinstance(
                    exc, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError
                ):
                    continue
                return HttpResult(None, error=f"{type(exc).__name__}: {exc}")
            if resp.will_close:
                self.close()
            return HttpResult(
                resp.status, data, parse_retry_after(resp.getheader("Retry-After"), time.time())
            )
        raise AssertionError("unreachable")

    def write(self, lines: list[str]) -> HttpResult:
        body = ("\n".join(lines) + "\n").encode()
        if self.settings.gzip:
            body = gzip.compress(body, compresslevel=self.settings.gzip_level)
        return self._request(self.write_path, body, self._headers)

    def create_database(self) -> HttpResult:
        """v1: ``CREATE DATABASE`` (idempotent)."""
        name = self.settings.database.replace("\\", "\\\\").replace('"', '\\"')
        body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'}).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            **auth_headers(self.settings),
        }
        return self._request(self._query_path, body, headers)
