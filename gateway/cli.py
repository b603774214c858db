"""The ``dustgate`` command. Subcommands import their modules lazily, so the
agent never loads the rule engine, the InfluxDB code or the simulators."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import __version__

# name -> (module, function taking argv, one-line help). Each module owns its
# own argparse, so `dustgate NAME --help` shows the real options.
DELEGATED: dict[str, tuple[str, str, str]] = {
    "agent": ("gateway.agent", "main", "run the edge agent of one site (site.yaml)"),
    "rules": ("rules.service.main", "main", "run the rule engine (rules.yaml)"),
    "status": ("gateway.statusview", "main", "live table of sites, devices, actuators, backlog"),
    "actuate": (
        "gateway.actuatecmd",
        "main",
        "switch an actuator by hand: SITE/ACT on --for 5m | off",
    ),
    "override": (
        "rules.service.override",
        "main",
        "override the rules for an actuator: on|off|auto",
    ),
    "replay": (
        "rules.history.replay",
        "main",
        "run rules over history (CSV or InfluxDB) and compare",
    ),
    "report": ("rules.history.report", "main", "weekly site ranking from InfluxDB"),
    "incidents": (
        "rules.incidents.service",
        "main",
        "derive incidents from the engine's events, notify contacts (incidents.yaml)",
    ),
    "scan": (
        "gateway.commission.scan",
        "main",
        "find the Modbus slaves on a bus (ids, baud rates), read-only",
    ),
    "probe": (
        "gateway.commission.probe",
        "main",
        "one live read of one device: raw registers, profile fields, decoded values",
    ),
    "console": (
        "rules.console.cli",
        "main",
        "the district web console (console.yaml); `console adduser` manages users",
    ),
    "calibrate": (
        "gateway.commission.calibrate",
        "main",
        "calibrate a device's metric against a reference monitor (logged)",
    ),
    "sim": ("drivers.sim.cli", "main", "run simulated devices (a fake site) on ptys/TCP"),
    "demo": ("gateway.demo", "main", "the closed loop with simulated devices, real broker + DB"),
}


def _check(argv: Sequence[str]) -> int:
    from gateway.checkcmd import check_files

    parser = argparse.ArgumentParser(
        prog="dustgate check", description="Validate site.yaml / rules.yaml files."
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--explain-partition",
        type=int,
        metavar="N",
        help="also print which of N rule engines owns each site of the rules files",
    )
    args = parser.parse_args(argv)
    rc = check_files(args.files, out=sys.stdout, err=sys.stderr)
    if rc == 0 and args.explain_partition is not None:
        from gateway.checkcmd import explain_partitions

        rc = explain_partitions(args.files, args.explain_partition, sys.stdout, sys.stderr)
    return rc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dustgate",
        description="Construction-site dust control: sensors -> MQTT -> rules -> fog cannons.",
    )
    parser.add_argument("--version", action="version", version=f"dustgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("check", help="validate config files (site.yaml, rules.yaml)", add_help=False)
    for name, (_mod, _fn, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args or args[0] in ("-h", "--help") or args[0].startswith("--version"):
        try:
            parser.parse_args(args or ["--help"])
        except SystemExit as exc:  # argparse exits after printing help/version
            return int(exc.code or 0)
        return 0
    name, rest = args[0], args[1:]
    if name == "check":
        return _check(rest)
    if name not in DELEGATED:
        parser.print_usage(sys.stderr)
        print(f"dustgate: unknown command {name!r}", file=sys.stderr)
        return 2
    module, func, _ = DELEGATED[name]
    try:
        entry: Callable[[list[str]], int] = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        print(f"dustgate {name}: not available in this build ({exc})", file=sys.stderr)
        return 2
    try:
        return int(entry(rest) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
