"""Helpers shared by the sink tests: a scriptable fake InfluxDB, polling, counting."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.localservices import LOOPBACK, Influxd


@dataclass
class Reply:
    status: int = 204
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (simulates a hung server)


@dataclass
class Request:
    at: float  # time.monotonic() when received
    path: str
    headers: dict[str, str]
    body: str  # decompressed
    status: int = 0  # what we answered


class FakeInflux:
    """An HTTP server on loopback answering from a script, then 204; records requests."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        # Optional: decide the reply from the request (after the script is used up).
        self.decide: Callable[[Request], Reply] | None = None
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                req = Request(time.monotonic(), self.path, dict(self.headers), raw.decode())
                with fake.lock:
                    fake.requests.append(req)
                    if fake.script:
                        reply = fake.script.pop(0)
                    elif fake.decide is not None:
                        reply = fake.decide(req)
                    else:
                        reply = Reply()
                    req.status = reply.status
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.body:
                    self.wfile.write(reply.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = False  # server_close() joins the request threads
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_address[1]}"

    def accepted_lines(self) -> list[str]:
        """Lines of every request answered 2xx, in arrival order."""
        return [
            ln for r in self.requests if 200 <= r.status < 300 for ln in r.body.splitlines() if ln
        ]


def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll a condition with a deadline (integration tests only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def count_points(
    ix: Influxd, db: str, measurement: str = "telemetry", field_name: str = "seq"
) -> int:
    res = ix.query(f'SELECT count("{field_name}") FROM "{measurement}"', db=db)
    series = res["results"][0].get("series")  # type: ignore[index]
    if not series:
        return 0
    return int(series[0]["values"][0][1])
