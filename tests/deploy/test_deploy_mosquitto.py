"""The shipped broker config, ACL and user script, on a real mosquitto.

The broker runs ``deploy/mosquitto/mosquitto.conf`` itself, with only the
file paths and the port rewritten to a temp dir and a free loopback port; the
password file is made by ``deploy/mosquitto/make-users.sh`` and the ACL is
``deploy/mosquitto/acl`` verbatim.

Mosquitto drops a denied publish silently and filters denied deliveries, so
"cannot" is checked by ordering, not by waiting: the denied message is sent
first, then an allowed control message on the same path; a subscriber with
full rights that receives the control without the denied message before it
proves the broker dropped it (a broker delivers one publisher's QoS 1 messages
to one subscription in order, and acknowledges a publish only after queueing
it to every subscriber).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from gateway.localservices import (
    LOOPBACK,
    Mosquitto,
    ServiceError,
    find_binary,
    free_port,
    mqtt_answers,
)

REPO = Path(__file__).resolve().parents[2]
MOSQ_DIR = REPO / "deploy" / "mosquitto"
TIMEOUT = 10.0  # generous deadline for a reply that normally takes milliseconds

SITE_A, SITE_B = "site-a", "site-b"
PASSWORDS = {
    SITE_A: "pw-a",
    SITE_B: "pw-b",
    "dustgate-rules": "pw-rules",
    "dustgate-console": "pw-console",
}

pytestmark = pytest.mark.integration


def _require(binary: str) -> None:
    try:
        find_binary(binary)
    except ServiceError as e:
        pytest.skip(str(e))


def deploy_conf_for_test(tmp: Path, port: int) -> str:
    """The shipped mosquitto.conf with paths and the loopback port rewritten."""
    text = (MOSQ_DIR / "mosquitto.conf").read_text()
    swaps = {
        "password_file /etc/mosquitto/dustgate/passwd": f"password_file {tmp}/passwd",
        "acl_file /etc/mosquitto/dustgate/acl": f"acl_file {tmp}/acl",
        "listener 1883 127.0.0.1": f"listener {port} {LOOPBACK}",
        "/etc/mosquitto/dustgate/certs/": f"{tmp}/certs/",
    }
    for old, new in swaps.items():
        assert old in text, f"deploy mosquitto.conf no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def make_users(passwd: Path, *entries: str, rules_password: str | None = None) -> str:
    env = dict(os.environ)
    env.pop("DUSTGATE_RULES_PASSWORD", None)
    if rules_password is not None:
        env["DUSTGATE_RULES_PASSWORD"] = rules_password
    proc = subprocess.run(
        ["bash", str(MOSQ_DIR / "make-users.sh"), str(passwd), *entries],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def broker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require("mosquitto")
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not found (Debian package: mosquitto)")
    tmp = tmp_path_factory.mktemp("broker")
    shutil.copy(MOSQ_DIR / "acl", tmp / "acl")
    make_users(
        tmp / "passwd",
        f"{SITE_A}:{PASSWORDS[SITE_A]}",
        f"{SITE_B}:{PASSWORDS[SITE_B]}",
        rules_password=PASSWORDS["dustgate-rules"],
    )
    # the console's user is made by hand, as deploy/mosquitto/acl says
    subprocess.run(
        ["mosquitto_passwd", "-b", str(tmp / "passwd"), "dustgate-console", "pw-console"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return tmp


@pytest.fixture(scope="module")
def broker(broker_dir: Path) -> Iterator[Mosquitto]:
    port = free_port()
    mq = Mosquitto(
        broker_dir / "run", port=port, listener_conf=deploy_conf_for_test(broker_dir, port)
    )
    try:
        mq.start()
        yield mq
    finally:
        mq.stop()


@dataclass
class Peer:
    """A paho MQTT 5 client with blocking helpers that wait with a deadline."""

    port: int
    username: str | None
    password: str | None = None
    tls: dict[str, str] | None = None
    client: mqtt.Client = field(init=False)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    connack: ReasonCode | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    _pubacks: dict[int, ReasonCode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-{self.username}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        if self.tls is not None:
            self.client.tls_set(
                ca_certs=self.tls.get("ca_certs"),
                certfile=self.tls.get("certfile"),
                keyfile=self.tls.get("keyfile"),
            )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # paho callbacks (network thread)
    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        with self._cond:
            self._subacks[mid] = rcs
            self._cond.notify_all()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self._pubacks[mid] = rc
            self._cond.notify_all()

    def _wait(self, predicate: object, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, TIMEOUT):  # type: ignore[arg-type]
                raise AssertionError(f"{self.username}: no {what} within {TIMEOUT}s")

    # blocking API (test thread)
    def connect(self) -> ReasonCode:
        self.client.connect(LOOPBACK, self.port, keepalive=30)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")
        assert self.connack is not None
        if self.connack.is_failure:
            self.close()  # or paho would keep retrying in the background
        return self.connack

    def subscribe(self, topic: str) -> list[ReasonCode]:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None, f"subscribe to {topic} was not sent"
        self._wait(lambda: mid in self._subacks, f"SUBACK for {topic}")
        return self._subacks[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self._pubacks, f"PUBACK for {topic}")
        return self._pubacks[info.mid]

    def received_until(self, payload: bytes) -> list[tuple[str, bytes]]:
        """Wait for ``payload``; return every message received up to and including it."""
        self._wait(lambda: any(p == payload for _, p in self.messages), f"message {payload!r}")
        with self._cond:
            end = next(i for i, (_, p) in enumerate(self.messages) if p == payload)
            return list(self.messages[: end + 1])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(broker: Mosquitto) -> Iterator[dict[str, Peer]]:
    """Connected clients: both gateways and the rule engine."""
    made: dict[str, Peer] = {}
    try:
        for user, password in PASSWORDS.items():
            peer = Peer(broker.port, user, password)
            made[user] = peer
            assert peer.connect() == 0, f"{user} could not log in: {peer.connack}"
        yield made
    finally:
        for peer in made.values():
            peer.close()


def token(label: str) -> bytes:
    return f"{label}-{uuid.uuid4().hex}".encode()


def topic(site: str, rest: str) -> str:
    return f"dustgate/v1/{site}/{rest}"


# --------------------------------------------------------------------------- login


def test_anonymous_login_is_refused(broker: Mosquitto) -> None:
    anon = Peer(broker.port, username=None)
    assert anon.connect() == "Not authorized"


def test_wrong_password_is_refused(broker: Mosquitto) -> None:
    intruder = Peer(broker.port, SITE_A, "not-the-password")
    rc = intruder.connect()
    assert rc.is_failure
    assert rc in ("Not authorized", "Bad user name or password")


# --------------------------------------------------------------------------- gateway


def test_gateway_publishes_its_own_site_topics(peers: dict[str, Peer]) -> None:
    engine, gw = peers["dustgate-rules"], peers[SITE_A]
    engine.subscribe("dustgate/v1/#")
    sent = [
        (topic(SITE_A, "pm-gate/telemetry"), token("telemetry"), False),
        (topic(SITE_A, "gateway/gw1/status"), token("status"), True),
        (topic(SITE_A, "cannon-1/state"), token("state"), True),
        (topic(SITE_A, "cannon-1/ack"), token("ack"), False),
        (topic(SITE_A, "events"), token("event"), False),
    ]
    for t, payload, retain in sent:
        assert gw.publish(t, payload, retain=retain) == 0, t
    got = engine.received_until(sent[-1][1])
    for t, payload, _ in sent:
        assert (t, payload) in got, f"{t} not delivered"


def test_gateway_cannot_publish_another_sites_telemetry(peers: dict[str, Peer]) -> None:
    engine, gw = peers["dustgate-rules"], peers[SITE_A]
    engine.subscribe("dustgate/v1/#")
    forged, control = token("forged"), token("control")
    rc = gw.publish(topic(SITE_B, "pm-gate/telemetry"), forged)
    assert gw.publish(topic(SITE_A, "pm-gate/telemetry"), control) == 0
    got = engine.received_until(control)
    assert all(p != forged for _, p in got)
    assert rc == "Not authorized"  # MQTT 5 tells the publisher


@pytest.mark.parametrize("site", [SITE_A, SITE_B])
def test_gateway_cannot_publish_commands(peers: dict[str, Peer], site: str) -> None:
    engine, gw = peers["dustgate-rules"], peers[SITE_A]
    engine.subscribe("dustgate/v1/#")
    forged, control = token("forged-cmd"), token("control")
    gw.publish(topic(site, "cannon-1/cmd"), forged)
    gw.publish(topic(SITE_A, "cannon-1/ack"), control)
    got = engine.received_until(control)
    assert all(p != forged for _, p in got)


def test_gateway_receives_only_its_own_sites_commands(peers: dict[str, Peer]) -> None:
    engine, gw_a, gw_b = peers["dustgate-rules"], peers[SITE_A], peers[SITE_B]
    # A gateway asking for everything still gets only what the ACL lets it read.
    gw_a.subscribe("dustgate/v1/#")
    gw_a.subscribe(topic(SITE_B, "+/cmd"))
    gw_b.subscribe(topic(SITE_B, "+/cmd"))
    cmd_b, own_a, cmd_a = token("cmd-b"), token("own-telemetry"), token("cmd-a")
    assert engine.publish(topic(SITE_B, "cannon-1/cmd"), cmd_b) == 0
    assert gw_b.publish(topic(SITE_B, "pm-gate/telemetry"), token("b-telemetry")) == 0
    assert engine.publish(topic(SITE_A, "events"), token("a-event")) == 0
    assert gw_a.publish(topic(SITE_A, "pm-gate/telemetry"), own_a) == 0
    assert engine.publish(topic(SITE_A, "cannon-1/cmd"), cmd_a) == 0
    # Nothing but its own command reached gateway A ...
    assert gw_a.received_until(cmd_a) == [(topic(SITE_A, "cannon-1/cmd"), cmd_a)]
    # ... and B's command did reach B, so it was really sent.
    assert (topic(SITE_B, "cannon-1/cmd"), cmd_b) in gw_b.received_until(cmd_b)


def test_engine_commands_reach_the_gateway(peers: dict[str, Peer]) -> None:
    engine, gw = peers["dustgate-rules"], peers[SITE_A]
    gw.subscribe(topic(SITE_A, "+/cmd"))
    cmd = b'{"id": "c1", "action": "on", "lease_s": 60, "reason": "test", "source": "rule"}'
    assert engine.publish(topic(SITE_A, "fog-cannon-2/cmd"), cmd) == 0
    assert gw.received_until(cmd)[-1] == (topic(SITE_A, "fog-cannon-2/cmd"), cmd)


def test_engine_cannot_forge_gateway_data(peers: dict[str, Peer]) -> None:
    engine = peers["dustgate-rules"]
    engine.subscribe("dustgate/v1/#")
    forged, control = token("forged-state"), token("control")
    engine.publish(topic(SITE_A, "pm-gate/telemetry"), forged)
    engine.publish(topic(SITE_A, "cannon-1/state"), forged)
    assert engine.publish(topic(SITE_A, "events"), control) == 0
    got = engine.received_until(control)
    assert all(p != forged for _, p in got)


def test_only_the_engine_keeps_presence(peers: dict[str, Peer]) -> None:
    """Partitioned engines keep a retained presence on dustgate/engines/<id>; a
    gateway or the console cannot forge one (an engine would wait for it)."""
    engine, gw, console = peers["dustgate-rules"], peers[SITE_A], peers["dustgate-console"]
    engine.subscribe("dustgate/engines/+")
    forged, real = token("forged-presence"), token("presence")
    assert gw.publish("dustgate/engines/dustgate-rules-x-p0", forged, retain=True) != 0
    assert console.publish("dustgate/engines/dustgate-rules-x-p0", forged, retain=True) != 0
    assert engine.publish("dustgate/engines/dustgate-rules-x-p1", real, retain=True) == 0
    got = engine.received_until(real)
    assert all(p != forged for _, p in got)


# --------------------------------------------------------------------------- console


def test_console_reads_the_district_but_not_commands(peers: dict[str, Peer]) -> None:
    engine, gw, console = peers["dustgate-rules"], peers[SITE_A], peers["dustgate-console"]
    console.subscribe("dustgate/v1/#")  # asks for everything, gets what the ACL lets it read
    cmd = token("cmd")
    assert engine.publish(topic(SITE_A, "cannon-1/cmd"), cmd) == 0
    sent = [
        (topic(SITE_A, "pm-gate/telemetry"), token("telemetry"), False),
        (topic(SITE_A, "gateway/gw1/status"), token("status"), True),
        (topic(SITE_A, "cannon-1/state"), token("state"), True),
        (topic(SITE_A, "cannon-1/ack"), token("ack"), False),
        (topic(SITE_A, "events"), token("event"), False),
    ]
    for t, payload, retain in sent:
        assert gw.publish(t, payload, retain=retain) == 0, t
    got = console.received_until(sent[-1][1])
    for t, payload, _ in sent:
        if not t.endswith("/ack"):
            assert (t, payload) in got, f"{t} not delivered to the console"
    assert all(p != cmd for _, p in got), "the console must not read commands"
    assert all(not t.endswith("/ack") for t, _ in got), "acks are not the console's"


def test_console_may_publish_override_requests_only(peers: dict[str, Peer]) -> None:
    engine, console = peers["dustgate-rules"], peers["dustgate-console"]
    engine.subscribe("dustgate/v1/#")
    forged = token("forged")
    for rest in (
        "cannon-1/cmd",
        "cannon-1/state",
        "pm-gate/telemetry",
        "events",
        "gateway/g/status",
    ):
        assert console.publish(topic(SITE_A, rest), forged) == "Not authorized", rest
    request = token("override")
    assert console.publish(topic(SITE_A, "cannon-1/override"), request) == 0
    got = engine.received_until(request)
    assert got[-1] == (topic(SITE_A, "cannon-1/override"), request)
    assert all(p != forged for _, p in got)


def _mqtt_str(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def die_with_will(port: int, user: str, password: str, will_topic: str, will: bytes) -> int:
    """Connect (MQTT 3.1.1) with a retained QoS 1 Last Will, then vanish without DISCONNECT.

    Returns the CONNACK code. The write side is shut and we read until the
    broker closes its side: by then the broker has handled the lost
    connection, so the will (if allowed) is already queued to subscribers.
    """
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, pass, retain, QoS 1, will, clean
    variable = _mqtt_str(b"MQTT") + bytes([0x04, flags]) + (30).to_bytes(2, "big")
    payload = b"".join(
        _mqtt_str(x)
        for x in (
            f"will-{uuid.uuid4().hex[:8]}".encode(),
            will_topic.encode(),
            will,
            user.encode(),
            password.encode(),
        )
    )
    body = variable + payload
    with socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as sock:
        sock.sendall(bytes([0x10]) + _remaining_length(len(body)) + body)
        connack = sock.recv(4)
        assert connack[:2] == b"\x20\x02", connack
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1024):
            pass
    return connack[3]


def test_last_will_only_on_the_gateways_own_status_topic(peers: dict[str, Peer]) -> None:
    engine, port = peers["dustgate-rules"], peers["dustgate-rules"].port
    engine.subscribe("dustgate/v1/#")
    forged, offline = token("forged-offline"), token("offline")
    # Connecting with a will on another site's topic is accepted, the will is dropped.
    assert (
        die_with_will(port, SITE_A, PASSWORDS[SITE_A], topic(SITE_B, "gateway/gw1/status"), forged)
        == 0
    )
    assert (
        die_with_will(port, SITE_A, PASSWORDS[SITE_A], topic(SITE_A, "gateway/gw1/status"), offline)
        == 0
    )
    got = engine.received_until(offline)
    assert got[-1] == (topic(SITE_A, "gateway/gw1/status"), offline)
    assert all(p != forged for _, p in got)


# --------------------------------------------------------------------------- make-users.sh


def test_make_users_keeps_existing_passwords_and_generates_new_ones(tmp_path: Path) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not found (Debian package: mosquitto)")
    passwd = tmp_path / "passwd"
    first = make_users(passwd, "north-yard:secret", rules_password="engine-pw")
    assert first == ""  # every password was given, nothing generated to print
    before = dict(line.split(":", 1) for line in passwd.read_text().splitlines())
    assert set(before) == {"north-yard", "dustgate-rules"}
    assert all(h.startswith("$7$") for h in before.values())  # hashed, never plain

    second = make_users(passwd, "north-yard", "south-gate")
    generated = dict(line.split(":", 1) for line in second.splitlines())
    assert set(generated) == {"south-gate"}
    assert re.fullmatch(r"[A-Za-z0-9]{20,}", generated["south-gate"])
    after = dict(line.split(":", 1) for line in passwd.read_text().splitlines())
    assert after["north-yard"] == before["north-yard"]
    assert after["dustgate-rules"] == before["dustgate-rules"]
    assert oct(passwd.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "bad",
    ["dustgate-rules", "dustgate-console", "dustgate-operator", "Site-A", "a/b", "a+", "#", ""],
)
def test_make_users_refuses_bad_site_ids(tmp_path: Path, bad: str) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not found (Debian package: mosquitto)")
    proc = subprocess.run(
        ["bash", str(MOSQ_DIR / "make-users.sh"), str(tmp_path / "passwd"), bad],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert not (tmp_path / "passwd").exists()  # validated before anything is written


def acl_users(text: str) -> list[str]:
    """The service accounts of an ACL: every ``user NAME`` line, as mosquitto reads it."""
    out = []
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0] == "user":
            out.append(words[1].strip())
    return out


def run_make_users(passwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DUSTGATE_RULES_PASSWORD"}
    return subprocess.run(
        ["bash", str(MOSQ_DIR / "make-users.sh"), *args[:-1], str(passwd), args[-1]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_every_user_of_the_acl_is_refused_as_a_site_id(tmp_path: Path) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not found (Debian package: mosquitto)")
    users = acl_users((MOSQ_DIR / "acl").read_text())
    assert {"dustgate-rules", "dustgate-operator", "dustgate-console"} <= set(users)
    for user in users:
        proc = run_make_users(tmp_path / "passwd", user)
        assert proc.returncode == 1, (user, proc.stderr)
        assert f"'user {user}'" in proc.stderr
        assert not (tmp_path / "passwd").exists()


def test_a_service_user_added_to_the_acl_is_reserved_at_once(tmp_path: Path) -> None:
    """No hand-kept list: a `user` line added to the broker's ACL (beside the
    password file) or to an ACL given with --acl reserves that name."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not found (Debian package: mosquitto)")
    broker = tmp_path / "broker"
    broker.mkdir()
    shipped = (MOSQ_DIR / "acl").read_text()
    (broker / "acl").write_text(shipped + "\nuser   dustgate-auditor  \ntopic read dustgate/v1/#\n")
    assert "dustgate-auditor" in acl_users((broker / "acl").read_text())
    proc = run_make_users(broker / "passwd", "dustgate-auditor")
    assert proc.returncode == 1 and "'user dustgate-auditor'" in proc.stderr, proc.stderr
    other = tmp_path / "other.acl"
    other.write_text("user north-archive\ntopic read dustgate/v1/#\n")
    proc = run_make_users(tmp_path / "passwd", "--acl", str(other), "north-archive")
    assert proc.returncode == 1 and "'user north-archive'" in proc.stderr, proc.stderr
    assert not (tmp_path / "passwd").exists() and not (broker / "passwd").exists()
    proc = run_make_users(broker / "passwd", "north-yard:pw")  # a site is still welcome
    assert proc.returncode == 0, proc.stderr
    assert [ln.split(":")[0] for ln in (broker / "passwd").read_text().splitlines()] == [
        "north-yard",
        "dustgate-rules",
    ]


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(broker_dir: Path) -> Path:
    """Test CA, broker and client certificate (client CN = site A) by make-test-ca.sh."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    certs = broker_dir / "certs"
    subprocess.run(
        ["bash", str(MOSQ_DIR / "make-test-ca.sh"), str(certs), SITE_A],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return certs


@pytest.fixture(scope="module")
def tls_broker(broker_dir: Path, certs: Path) -> Iterator[tuple[Mosquitto, int, int, Path]]:
    """Deploy config plus the commented TLS example enabled, and a cert-login listener."""
    port, tls_port, cert_port = free_port(), free_port(), free_port()
    conf = deploy_conf_for_test(broker_dir, port)
    example = "\n".join(
        line[1:] for line in conf.splitlines() if line.startswith("#") and line[1:2] not in " #"
    )
    assert "listener 8883" in example, "TLS example missing from deploy mosquitto.conf"
    conf += "\n" + example.replace("listener 8883", f"listener {tls_port} {LOOPBACK}") + "\n"
    # The alternative the conf describes: log in by client certificate, CN = site id.
    conf += (
        f"listener {cert_port} {LOOPBACK}\n"
        f"cafile {certs}/ca.crt\ncertfile {certs}/server.crt\nkeyfile {certs}/server.key\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    mq = Mosquitto(broker_dir / "run-tls", port=port, listener_conf=conf)
    try:
        mq.start()
        yield mq, tls_port, cert_port, certs
    finally:
        mq.stop()


def test_tls_listener_with_password_login(
    tls_broker: tuple[Mosquitto, int, int, Path],
) -> None:
    mq, tls_port, _, certs = tls_broker
    engine = Peer(mq.port, "dustgate-rules", PASSWORDS["dustgate-rules"])
    gw = Peer(tls_port, SITE_B, PASSWORDS[SITE_B], tls={"ca_certs": str(certs / "ca.crt")})
    try:
        assert engine.connect() == 0
        assert gw.connect() == 0  # server cert verified against the test CA and 127.0.0.1
        engine.subscribe("dustgate/v1/#")
        reading = token("over-tls")
        assert gw.publish(topic(SITE_B, "pm-gate/telemetry"), reading) == 0
        assert engine.received_until(reading)[-1] == (topic(SITE_B, "pm-gate/telemetry"), reading)
    finally:
        engine.close()
        gw.close()


def test_tls_client_certificate_login_is_scoped_to_the_cn_site(
    tls_broker: tuple[Mosquitto, int, int, Path],
) -> None:
    mq, _, cert_port, certs = tls_broker
    tls = {
        "ca_certs": str(certs / "ca.crt"),
        "certfile": str(certs / "client.crt"),
        "keyfile": str(certs / "client.key"),
    }
    engine = Peer(mq.port, "dustgate-rules", PASSWORDS["dustgate-rules"])
    gw = Peer(cert_port, username=None, tls=tls)  # identity comes from the certificate
    try:
        assert engine.connect() == 0
        assert gw.connect() == 0
        engine.subscribe("dustgate/v1/#")
        forged, control = token("forged"), token("control")
        assert gw.publish(topic(SITE_B, "pm-gate/telemetry"), forged) == "Not authorized"
        assert gw.publish(topic(SITE_A, "pm-gate/telemetry"), control) == 0
        got = engine.received_until(control)
        assert all(p != forged for _, p in got)
    finally:
        engine.close()
        gw.close()


# --------------------------------------------------------------------------- central


@pytest.fixture(scope="module")
def central_broker(broker_dir: Path, certs: Path) -> Iterator[tuple[Mosquitto, int]]:
    """deploy/central/mosquitto/mosquitto.conf with container paths and ports rewritten."""
    text = (REPO / "deploy" / "central" / "mosquitto" / "mosquitto.conf").read_text()
    port, tls_port = free_port(), free_port()
    swaps = {
        "/mosquitto/config/passwd": f"{broker_dir}/passwd",
        "/mosquitto/config/acl": f"{broker_dir}/acl",
        "/mosquitto/config/certs/": f"{certs}/",
        # Mosquitto() appends its own persistence_location; a second one is an error.
        "persistence_location /mosquitto/data/\n": "",
        # In the container these bind all interfaces; here loopback only.
        "listener 1883\n": f"listener {port} {LOOPBACK}\n",
        "listener 8883\n": f"listener {tls_port} {LOOPBACK}\n",
    }
    for old, new in swaps.items():
        assert old in text, f"central mosquitto.conf no longer contains {old!r}"
        text = text.replace(old, new)
    mq = Mosquitto(broker_dir / "run-central", port=port, listener_conf=text)
    try:
        mq.start()
        yield mq, tls_port
    finally:
        mq.stop()


def test_central_broker_config(central_broker: tuple[Mosquitto, int], certs: Path) -> None:
    mq, tls_port = central_broker
    tls = {"ca_certs": str(certs / "ca.crt")}
    assert Peer(tls_port, username=None, tls=tls).connect() == "Not authorized"
    engine = Peer(mq.port, "dustgate-rules", PASSWORDS["dustgate-rules"])
    gw = Peer(tls_port, SITE_A, PASSWORDS[SITE_A], tls=tls)
    try:
        assert engine.connect() == 0
        assert gw.connect() == 0
        engine.subscribe("dustgate/v1/#")
        gw.subscribe(topic(SITE_A, "+/cmd"))
        forged, reading = token("forged"), token("reading")
        gw.publish(topic(SITE_B, "pm-gate/telemetry"), forged)
        assert gw.publish(topic(SITE_A, "pm-gate/telemetry"), reading) == 0
        assert all(p != forged for _, p in engine.received_until(reading))
        cmd = token("cmd")
        assert engine.publish(topic(SITE_A, "cannon-1/cmd"), cmd) == 0
        assert gw.received_until(cmd)[-1] == (topic(SITE_A, "cannon-1/cmd"), cmd)
    finally:
        engine.close()
        gw.close()


# --------------------------------------------------------------------------- Debian layout

# Debian 12's stock /etc/mosquitto/mosquitto.conf (package mosquitto 2.0.11),
# used when this machine has none.
DEBIAN_MAIN_CONF = """\
pid_file /run/mosquitto/mosquitto.pid
persistence true
persistence_location /var/lib/mosquitto/
log_dest file /var/log/mosquitto/mosquitto.log
include_dir /etc/mosquitto/conf.d
"""


def test_conf_works_as_a_conf_d_include_of_debians_main_config(broker_dir: Path) -> None:
    """How install.sh deploys it: /etc/mosquitto/conf.d/dustgate.conf under the stock file."""
    stock = Path("/etc/mosquitto/mosquitto.conf")
    main = stock.read_text() if stock.exists() else DEBIAN_MAIN_CONF
    root = broker_dir / "debian"
    (root / "conf.d").mkdir(parents=True)
    swaps = {
        "/run/mosquitto/": f"{root}/",
        "/var/lib/mosquitto/": f"{root}/",
        "/var/log/mosquitto/": f"{root}/",
        "/etc/mosquitto/conf.d": f"{root}/conf.d",
    }
    for old, new in swaps.items():
        assert old in main, f"Debian's main config changed: no {old}"
        main = main.replace(old, new)
    (root / "mosquitto.conf").write_text(main)
    port = free_port()
    ours = deploy_conf_for_test(broker_dir, port)
    # Stay the current user (as root, mosquitto would switch to "mosquitto").
    ours += f"\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
    (root / "conf.d" / "dustgate.conf").write_text(ours)
    proc = subprocess.Popen(
        [find_binary("mosquitto"), "-c", str(root / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not mqtt_answers(LOOPBACK, port):
            log = (root / "mosquitto.log").read_text() if (root / "mosquitto.log").exists() else ""
            assert proc.poll() is None, f"mosquitto refused the layout:\n{log}"
            assert time.monotonic() < deadline, f"mosquitto did not answer:\n{log}"
            time.sleep(0.05)
        assert Peer(port, username=None).connect() == "Not authorized"
        gw = Peer(port, SITE_A, PASSWORDS[SITE_A])
        try:
            assert gw.connect() == 0
        finally:
            gw.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
