"""Local Mosquitto and InfluxDB 1.x for tests and the demo.

Each service binds a free loopback port, keeps its state in a directory we
own, is waited on until it really answers (an MQTT CONNACK, an HTTP 204 from
``/ping``), and is stopped with its whole process group. The children get
PR_SET_PDEATHSIG so that even a SIGKILLed test runner leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A local service could not be found, started or reached."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux only: ask the kernel to SIGKILL the child when we die.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_PACKAGES = {"influxd": "influxdb"}  # binary -> Debian package, where they differ


def find_binary(name: str) -> str:
    for cand in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise ServiceError(
        f"{name} not found: install Debian's package "
        f"({_PACKAGES.get(name, name)}), e.g. `make deps`"
    )


def stop_groups(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """Stop processes started with ``start_new_session``, their children too: SIGTERM
    to every group still running, then wait for each; a group that outlives
    ``timeout`` gets SIGKILL."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass
class _Proc:
    name: str
    argv: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_groups([self.proc], timeout)
        self.proc = None

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash or power loss would."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _wait(check: object, what: str, proc: _Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running:
            raise ServiceError(f"{what} exited during start-up:\n{proc.log_tail()}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    proc.stop()
    raise ServiceError(f"{what} did not answer within {timeout:.0f}s:\n{proc.log_tail()}")


def mqtt_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a broker answers an MQTT 3.1.1 CONNECT with CONNACK (rc 0 or 5)."""
    connect = bytes([16, 20, 0, 4, *list(b"MQTT"), 4, 2, 0, 10, 0, 8, *list(b"dg-probe")])
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(connect)
            reply = s.recv(4)
            if len(reply) == 4 and reply[0] == 0x20:
                s.sendall(b"\xe0\x00")  # DISCONNECT
                return True
    except OSError:
        return False
    return False


class _Service:
    """Stop / kill / running, shared by both services (each owns one process)."""

    _proc: _Proc | None

    def stop(self) -> None:
        if self._proc:
            self._proc.stop()

    def kill(self) -> None:
        if self._proc:
            self._proc.kill()

    @property
    def running(self) -> bool:
        return bool(self._proc and self._proc.running)

    def pid(self) -> int:
        """The server's process id (benchmarks read its CPU time from /proc)."""
        if self._proc is None or self._proc.proc is None:
            raise ServiceError("not running")
        return self._proc.proc.pid


@dataclass
class Mosquitto(_Service):
    """A mosquitto broker on loopback. ``extra_conf`` is appended verbatim."""

    workdir: Path
    port: int = 0
    extra_conf: str = ""
    listener_conf: str | None = None
    _proc: _Proc | None = None

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def _write_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        listener = self.listener_conf or f"listener {self.port} {LOOPBACK}\nallow_anonymous true\n"
        conf.write_text(
            "# written by dustgate.localservices\n"
            f"{listener}"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            # Run as whoever started us (root in CI would otherwise drop to
            # user 'mosquitto', who cannot write our temp dir).
            f"user {_current_user()}\n"
            "log_type error\nlog_type warning\n"
            f"{self.extra_conf}"
        )
        return conf

    def start(self, timeout: float = 15.0) -> Mosquitto:
        if self.port == 0:
            self.port = free_port()
        conf = self._write_conf()
        self._proc = _Proc("mosquitto", [find_binary("mosquitto"), "-c", str(conf)], self.workdir)
        self._proc.start()
        _wait(lambda: mqtt_answers(LOOPBACK, self.port), "mosquitto", self._proc, timeout)
        return self


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@dataclass
class Influxd(_Service):
    """An InfluxDB 1.x server on loopback with all state under ``workdir``."""

    workdir: Path
    port: int = 0
    _rpc_port: int = 0
    _proc: _Proc | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _write_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        d = self.workdir
        conf = d / "influxdb.conf"
        conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "{LOOPBACK}:{self._rpc_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n'
            '  query-log-enabled = false\n  index-version = "inmem"\n'
            "[monitor]\n  store-enabled = false\n"
            "[subscriber]\n  enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
            f'[http]\n  bind-address = "{LOOPBACK}:{self.port}"\n'
            "  log-enabled = false\n  flux-enabled = false\n"
            "  auth-enabled = false\n  pprof-enabled = false\n"
        )
        return conf

    def start(self, timeout: float = 30.0) -> Influxd:
        if self.port == 0:
            self.port = free_port()
        if self._rpc_port == 0:
            self._rpc_port = free_port()
        conf = self._write_conf()
        self._proc = _Proc("influxd", [find_binary("influxd"), "-config", str(conf)], self.workdir)
        self._proc.start()
        _wait(self._ping, "influxd", self._proc, timeout)
        return self

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                return int(r.status) == 204
        except (OSError, urllib.error.URLError):
            return False

    # Small HTTP helpers for tests and the demo (the sink has its own client).
    def query(self, q: str, db: str | None = None) -> dict[str, object]:
        import json

        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        data = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def create_database(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')

    def write(self, db: str, lines: str, precision: str = "ms") -> None:
        url = f"{self.url}/write?" + urllib.parse.urlencode({"db": db, "precision": precision})
        req = urllib.request.Request(url, data=lines.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 204:
                raise ServiceError(f"write failed: HTTP {r.status}")


@dataclass
class VictoriaMetrics(_Service):
    """A VictoriaMetrics single-node server on loopback (Debian's ``victoria-metrics``).

    It takes InfluxDB line protocol on ``/write`` (v1) and ``/api/v2/write`` (v2),
    so the sink's v2 path is tested against a real server. A field ``f`` of
    measurement ``m`` becomes the series ``m_f`` with the tags as labels."""

    workdir: Path
    port: int = 0
    _proc: _Proc | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> VictoriaMetrics:
        if self.port == 0:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            find_binary("victoria-metrics"),
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            f"-storageDataPath={self.workdir}/data",
            "-retentionPeriod=100y",  # tests write timestamps from any year
            "-search.latencyOffset=0s",  # what was written is searchable at once
            "-loggerLevel=ERROR",
        ]
        self._proc = _Proc("victoria-metrics", argv, self.workdir)
        self._proc.start()
        _wait(self._health, "victoria-metrics", self._proc, timeout)
        return self

    def _health(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                return int(r.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def export(self, match: str) -> list[dict[str, object]]:
        """Every sample of the series matching ``match`` (after a flush), one dict a series."""
        import json

        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass
        data = urllib.parse.urlencode({"match[]": match}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/export", data=data, timeout=10) as r:
            return [json.loads(line) for line in r.read().splitlines() if line.strip()]


@contextlib.contextmanager
def running_services(
    mosquitto: bool = True, influxd: bool = True, workdir: Path | None = None
) -> Iterator[tuple[Mosquitto | None, Influxd | None]]:
    """Start the requested services; always stop them on exit."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dustgate-svc-")
        workdir = Path(tmp.name)
    mq = Mosquitto(workdir / "mosquitto") if mosquitto else None
    ix = Influxd(workdir / "influxdb") if influxd else None
    try:
        if mq:
            mq.start()
        if ix:
            ix.start()
        yield mq, ix
    finally:
        for svc in (mq, ix):
            if svc is not None:
                svc.stop()
        if tmp is not None:
            tmp.cleanup()
