"""A scripted webhook receiver on 127.0.0.1 (http.server in a thread), for notifier tests.

``hook`` (a fixture in tests/conftest.py) yields a :class:`Hook`; tests set
``script`` (answers in order, then 200), ``delay``, ``gate`` or ``raw`` (bytes
written instead of an HTTP answer: an endpoint answering garbage).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Hook:
    """A scripted webhook: answers ``script`` in order (then 200), records bodies."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    script: list[tuple[int, bytes]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # answered (in order) before the script
    delay: float = 0.0
    gate: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def serve_hook() -> Iterator[Hook]:
    state = Hook()
    state.gate.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.gate.wait(10)
            if state.delay:
                time.sleep(state.delay)
            with state.lock:
                state.received.append(json.loads(body))
                state.headers.append(dict(self.headers))
                state.paths.append(self.path)
                raw = state.raw.pop(0) if state.raw else None
                status, answer = (200, b'{"ok":1}')
                if raw is None and state.script:
                    status, answer = state.script.pop(0)
            try:
                if raw is not None:
                    self.wfile.write(raw)
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except OSError:  # the client gave up (timeout tests)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = False  # server_close() joins the request threads
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        state.gate.set()
        server.shutdown()
        server.server_close()
        thread.join()
