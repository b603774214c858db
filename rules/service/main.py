"""``dustgate rules --config rules.yaml``: the command line of the rule service.

Parses the options, reads the rules file, builds the sink and the
:class:`rules.service.service.RulesService`, and runs it until SIGTERM or
SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from gateway.configfile import ConfigError
from rules.core.config import SHARED_GROUP_REFUSED, RulesFile, load_rules_file
from rules.core.partition import parse_partition
from rules.service.outbound import LineSink
from rules.service.service import RulesService, ServiceOptions


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dustgate rules",
        description="Run the rule engine: telemetry in over MQTT, lease commands and events out.",
    )
    ap.add_argument("--config", type=Path, required=True, help="rules.yaml")
    ap.add_argument("--client-id", default=None, help="MQTT client id (default from config/host)")
    ap.add_argument(
        "--partition",
        default=None,
        metavar="K/N",
        help="own the sites of partition K of N engines (overrides service.partition in "
        "the rules file; `dustgate check --explain-partition N` lists them)",
    )
    ap.add_argument("--shared-group", default=None, help=argparse.SUPPRESS)  # refused
    ap.add_argument(
        "--tick", type=float, default=1.0, help="seconds between timer ticks (0.05-1, default 1)"
    )
    ap.add_argument(
        "--watch-interval", type=float, default=1.0, help="rules file poll interval (1 s)"
    )
    ap.add_argument(
        "--persist-interval", type=float, default=5.0, help="state save check interval (5 s)"
    )
    ap.add_argument("--stats-interval", type=float, default=10.0, help="health points (10 s)")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def build_sink(rules_file: RulesFile) -> LineSink | None:
    if rules_file.influx is None:
        return None
    from rules.sink.writer import InfluxSink

    return InfluxSink(rules_file.influx, rules_file.state_dir)


async def serve(service: RulesService) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await service.run(stop)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not 0.05 <= args.tick <= 1.0:
        print("dustgate rules: --tick must be between 0.05 and 1 second", file=sys.stderr)
        return 2
    if args.shared_group is not None:
        print(f"dustgate rules: --shared-group is refused: {SHARED_GROUP_REFUSED}", file=sys.stderr)
        return 2
    partition = None
    if args.partition is not None:
        try:
            partition = parse_partition(args.partition)
        except ValueError as exc:
            print(f"dustgate rules: --partition: {exc}", file=sys.stderr)
            return 2
    try:
        text = args.config.read_text(encoding="utf-8")
        rules_file = load_rules_file(args.config, text=text)
    except ConfigError as exc:
        print(f"dustgate rules: {args.config} has errors:\n{exc}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as exc:
        print(f"dustgate rules: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    options = ServiceOptions(
        tick_interval=args.tick,
        persist_interval=args.persist_interval,
        watch_interval=args.watch_interval,
        stats_interval=args.stats_interval,
        client_id=args.client_id,
        partition=partition,
    )
    service = RulesService(
        args.config, rules_file, options, sink=build_sink(rules_file), rules_text=text
    )
    asyncio.run(serve(service))
    return 0
