"""``dustgate actuate SITE/ACTUATOR on --for 5m | off``: switch an output by hand.

The command takes exactly the path a rule's command takes: a :class:`gateway.protocol.Command`
(source ``manual``) published with QoS 1 on ``{site}/{actuator}/cmd``; the site's agent applies
its own limits (lease, max_on, min_off, allowed hours, broker grace) and answers on ``ack``. No
bypass: what the agent refuses is refused here too, with its reason.

Broker settings come from ``--config site.yaml`` (host, port, credentials, TLS of its ``mqtt``
section) or from ``--host``/``--port``. The command expires on the broker
after ``--timeout`` (MQTT 5 message expiry), so an agent that is offline now
does not act on it when it reconnects later. Prints ``accepted`` or ``refused: REASON`` and exits 0
when the agent accepted, 1 when it refused, did not answer within ``--timeout``, or the broker
could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import aiomqtt

from gateway import protocol as p
from gateway.configfile import ConfigError, MqttSettings, parse_duration
from gateway.lease import ActuatorLimits, manual_command
from gateway.mqttclient import make_client, request_reply


def _duration(text: str) -> float:
    try:
        value = float(parse_duration(text))
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
    return value


def _target(text: str) -> tuple[str, str]:
    site, sep, act = text.partition("/")
    try:
        if not sep:
            raise p.ProtocolError("expected SITE/ACTUATOR, e.g. site-01/cannon-1")
        return p.check_id(site, "site"), p.check_id(act, "actuator")
    except p.ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dustgate actuate",
        description="Switch an actuator by hand, through the agent's own limits.",
    )
    parser.add_argument("target", type=_target, metavar="SITE/ACTUATOR")
    parser.add_argument("action", choices=("on", "off"))
    parser.add_argument(
        "--for",
        dest="lease",
        type=_duration,
        metavar="DURATION",
        help="lease of an 'on' (30s, 5m); default: the actuator's default_lease from "
        "--config, else 5m",
    )
    parser.add_argument("--reason", default="manual", help="recorded in state and events")
    parser.add_argument("--config", "-c", type=Path, help="site.yaml (broker settings, limits)")
    parser.add_argument("--host", help="broker host (overrides --config)")
    parser.add_argument("--port", type=int, help="broker port (overrides --config)")
    parser.add_argument(
        "--timeout", type=_duration, default=10.0, help="wait this long for the ack (default 10s)"
    )
    return parser


def _settings(args: argparse.Namespace) -> tuple[MqttSettings, ActuatorLimits]:
    settings = MqttSettings()
    limits = ActuatorLimits()
    if args.config is not None:
        from gateway.config import load_site_config

        site = load_site_config(args.config)
        settings = site.mqtt
        site_id, act_id = args.target
        for act in site.actuators:
            if site.site == site_id and act.id == act_id:
                limits = act.limits
    update = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return settings.model_copy(update=update), limits


async def send(
    settings: MqttSettings, site: str, actuator: str, cmd: p.Command, timeout: float
) -> p.Ack | None:
    """Publish ``cmd`` and return the agent's ack (None if none came within ``timeout``)."""
    client = make_client(settings, f"dustgate-actuate-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    async with client:
        # a command nobody took within our wait must not switch the output later (the
        # agent's persistent session would otherwise get it on its next connect)
        return await request_reply(
            client,
            p.cmd_topic(site, actuator),
            p.encode(cmd),
            p.ack_topic(site, actuator),
            p.Ack,
            lambda ack: ack.cmd_id == cmd.id,
            timeout,
            expiry_s=timeout,
        )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    site, actuator = args.target
    try:
        settings, limits = _settings(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        cmd = manual_command(
            args.action,
            limits,
            cmd_id=f"manual-{uuid.uuid4().hex[:12]}",
            lease_s=args.lease if args.action == "on" else None,
            reason=args.reason[:200],
            ts_ms=p.now_ms(time.time()),
        )
    except ValueError as exc:  # e.g. a lease beyond the wire's one-day limit
        print(f"dustgate actuate: {exc}", file=sys.stderr)
        return 1
    try:
        ack = asyncio.run(send(settings, site, actuator, cmd, args.timeout))
    except aiomqtt.MqttError as exc:
        print(f"broker {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    if ack is None:
        print(
            f"no answer from the agent of {site} within {args.timeout:g}s "
            f"(is it running and connected?)",
            file=sys.stderr,
        )
        return 1
    if ack.accepted:
        note = f" ({ack.reason})" if ack.reason else ""
        lease = f" for {cmd.lease_s:g}s" if cmd.action == "on" and cmd.lease_s else ""
        print(f"accepted: {site}/{actuator} {cmd.action}{lease}{note}")
        return 0
    print(f"refused: {ack.reason}")
    return 1
