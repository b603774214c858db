"""Manual override over MQTT: ``dustgate override SITE/ACTUATOR on|off|auto --for 30m``.

Wire contract (in the table of ``gateway/protocol.py``):

=================================  ========  ======================================
topic                              retained  payload
=================================  ========  ======================================
``{site}/{actuator}/override``     no, QoS1  :class:`OverrideRequest`
``{site}/events``                  no        the answer: an ``Event`` of kind
                                             ``override`` (applied) or
                                             ``override_refused``, with
                                             ``data.request`` = the request id
=================================  ========  ======================================

``OverrideRequest``: ``{"id", "mode": "on"|"off"|"auto", "for_s", "who", "ts",
"reason"}``. ``for_s`` is required for ``on``/``off`` (at most 24 h: an
override never lasts forever) and ignored for ``auto``. The request is
published with an MQTT 5 message expiry of :data:`REQUEST_EXPIRY_S`, so an
engine that was down does not apply a stale request when it comes back; the
engine also refuses requests whose ``ts`` is more than :data:`MAX_AGE_S` old.

The rule engine (``rules.service``) applies a request with
``Engine.set_override``: ``on`` leases the actuator (renewed every
``override_lease_s / 3``) whatever the rules say, ``off`` switches it off and
keeps the rules from starting it, ``auto`` hands it back to the rules. The
override ends by itself after ``for_s``; the engine then publishes another
``override`` event (``data.mode = "auto"``).

The CLI publishes one request, waits for the engine's answer on
``{site}/events`` and prints it. Exit status: 0 applied, 1 refused, 2 usage
or config error, 3 no answer within ``--timeout`` (is ``dustgate rules``
running for that site?).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Literal

import aiomqtt
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from gateway import protocol as p
from gateway.configfile import ConfigError, MqttSettings, parse_duration
from gateway.mqttclient import expiry, make_client, request_reply

log = logging.getLogger(__name__)

OVERRIDE_SEGMENT = "override"
REQUEST_EXPIRY_S = 60
MAX_AGE_S = 300.0
MAX_FOR_S = 86400.0
EVENT_APPLIED = "override"
EVENT_REFUSED = "override_refused"

Mode = Literal["on", "off", "auto"]


# The request and its topic are part of the wire contract (gateway.protocol).
OverrideRequest = p.OverrideRequest
override_topic = p.override_topic


def override_subscription(site: str = "+") -> str:
    return p.subscription("override", site)


def parse_override_topic(topic: str) -> tuple[str, str]:
    """``(site, actuator)`` of an override topic; ProtocolError for anything else."""
    t = p.parse_topic(topic)
    if t.kind != "override" or t.name is None:
        raise p.ProtocolError(f"topic {topic!r} is not an override topic")
    return t.site, t.name


def decode_request(data: bytes | bytearray | str) -> OverrideRequest:
    """Decode untrusted bytes; raise :class:`gateway.protocol.ProtocolError` only."""
    return p.decode(p.OverrideRequest, data)


def encode_request(req: OverrideRequest) -> bytes:
    return p.encode(req)


def request_properties() -> Properties:
    return expiry(REQUEST_EXPIRY_S)


def default_who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "operator"
    return f"{user}@{socket.gethostname()}"[:64]


# ----------------------------------------------------------------- the CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dustgate override",
        description=(
            "Override the rules for one actuator: 'on' sprays and 'off' blocks spraying "
            "whatever the rules say, until --for runs out; 'auto' hands back to the rules. "
            "Needs a running `dustgate rules` serving the site."
        ),
    )
    ap.add_argument("target", metavar="SITE/ACTUATOR", help="e.g. site-01/cannon-1")
    ap.add_argument("mode", choices=["on", "off", "auto"])
    ap.add_argument(
        "--for",
        dest="for_",
        default="30m",
        metavar="DURATION",
        help="how long, e.g. 30m, 2h (default 30m, max 24h; ignored for auto)",
    )
    ap.add_argument("--who", default=None, help="your name for the record (default user@host)")
    ap.add_argument("--reason", default="", help="free text recorded with the event")
    ap.add_argument("--config", type=Path, help="rules.yaml: take the MQTT settings from it")
    ap.add_argument("--host", default=None, help="MQTT broker (instead of --config)")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--username", default=None)
    ap.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the engine (10)"
    )
    return ap


def _mqtt_settings(args: argparse.Namespace) -> MqttSettings:
    if args.config is not None:
        from rules.core.config import load_rules_file

        settings = load_rules_file(args.config).mqtt
    else:
        settings = MqttSettings()
    update: dict[str, object] = {}
    if args.host is not None:
        update["host"] = args.host
    if args.port is not None:
        update["port"] = args.port
    if args.username is not None:
        update["username"] = args.username
        pw = os.environ.get("DUSTGATE_MQTT_PASSWORD")
        if pw is not None:
            update["password"] = pw
    if update:
        settings = MqttSettings.model_validate({**settings.model_dump(), **update})
    return settings


def describe_answer(event: p.Event) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.ts / 1000))
    return f"{when} {event.kind}: {event.text}"


async def request_override(
    settings: MqttSettings,
    site: str,
    actuator: str,
    req: OverrideRequest,
    timeout: float,
) -> p.Event | None:
    """Publish ``req`` and wait for the engine's answer event (None: no answer)."""
    client = make_client(settings, f"dustgate-override-{secrets.token_hex(4)}")
    async with client:
        return await request_reply(
            client,
            override_topic(site, actuator),
            encode_request(req),
            p.events_topic(site),
            p.Event,
            lambda event: bool(event.data) and event.data.get("request") == req.id,  # type: ignore[union-attr]
            timeout,
            expiry_s=REQUEST_EXPIRY_S,
        )


def main(argv: list[str]) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    site, sep, actuator = args.target.partition("/")
    try:
        if not sep:
            raise p.ProtocolError("expected SITE/ACTUATOR, e.g. site-01/cannon-1")
        p.check_id(site, "site")
        p.check_id(actuator, "actuator")
    except p.ProtocolError as exc:
        ap.error(str(exc))
    for_s: float | None = None
    if args.mode != "auto":
        try:
            for_s = float(parse_duration(args.for_))
        except ValueError as exc:
            ap.error(f"--for: {exc}")
        if not 0 < for_s <= MAX_FOR_S:
            ap.error("--for must be more than 0 and at most 24h")
    try:
        settings = _mqtt_settings(args)
    except ConfigError as exc:
        print(f"dustgate override: {args.config} has errors:\n{exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"dustgate override: bad MQTT options: {exc}", file=sys.stderr)
        return 2
    req = OverrideRequest(
        id=f"ovr-{secrets.token_hex(6)}",
        mode=args.mode,
        for_s=for_s,
        who=(args.who or default_who())[:64],
        ts=p.now_ms(time.time()),
        reason=args.reason[:200],
    )
    try:
        event = asyncio.run(request_override(settings, site, actuator, req, args.timeout))
    except aiomqtt.MqttError as exc:
        print(
            f"dustgate override: MQTT broker {settings.host}:{settings.port}: {exc}",
            file=sys.stderr,
        )
        return 3
    if event is None:
        print(
            f"dustgate override: no answer from a rule engine within {args.timeout:g}s "
            f"(is `dustgate rules` running and serving site {site}?)",
            file=sys.stderr,
        )
        return 3
    print(describe_answer(event))
    if event.data:
        print(json.dumps(event.data, sort_keys=True))
    return 0 if event.kind == EVENT_APPLIED else 1
