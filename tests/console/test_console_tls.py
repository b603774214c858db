"""`dustgate console` serving HTTPS itself (tls_cert_file/tls_key_file), as documented in
deploy/central/README.md: the page answers over TLS only, and its cookies are Secure."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from consolehelpers import write_console

from gateway.localservices import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_console_serves_tls_with_secure_cookies(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    certs = tmp_path / "certs"
    subprocess.run(
        ["bash", str(ROOT / "deploy" / "mosquitto" / "make-test-ca.sh"), str(certs)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    cfg = write_console(tmp_path)
    cfg.write_text(
        cfg.read_text().replace(
            "console: {listen: 127.0.0.1, port: 8480}",
            f"console: {{listen: 127.0.0.1, port: {port}, tls_cert_file: certs/server.crt, "
            "tls_key_file: certs/server.key}",
        )
        + "mqtt: {host: 127.0.0.1, port: 1}\n"  # no broker: the console lives on without it
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "console", "--config", str(cfg)],
        stdout=(tmp_path / "console.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(url + "/login", verify=ctx, timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, (tmp_path / "console.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "console.log").read_text()
                time.sleep(0.2)
        assert r.status_code == 200
        assert "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def test_an_unreadable_certificate_is_said_not_a_traceback(tmp_path: Path) -> None:
    cfg = write_console(tmp_path)
    cfg.write_text(
        cfg.read_text().replace(
            "console: {listen: 127.0.0.1, port: 8480}",
            "console: {listen: 127.0.0.1, port: 8480, tls_cert_file: no.crt, tls_key_file: no.key}",
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "console", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"console.tls_cert_file: cannot read {tmp_path / 'no.crt'}" in proc.stderr
    assert "Traceback" not in proc.stderr
