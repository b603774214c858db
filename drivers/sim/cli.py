"""``dustgate sim``: run simulated devices by hand.

    dustgate sim site   [--seed N] [--relay-tcp PORT] [--no-uart] [--event-after S] ...
    dustgate sim modbus --profile dust-station [--tcp PORT | --rtu-over-tcp PORT] [--pymodbus]
    dustgate sim relay  [--tcp PORT] [--channels 8] [--coil-base 1] [--register-base 1 ...]

Each prints where its devices are (pty paths, TCP ports) and runs until Ctrl-C (or
``--duration``). In ``site`` and ``modbus`` mode a dust event starts on ``--event-after``, every
``--event-every`` seconds, on SIGUSR1, or when you type ``e`` and Enter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from drivers.profiles import ProfileError, profile_names, resolve_profile
from drivers.sim.modbus_server import RtuPtyServer, TcpServer
from drivers.sim.relay_board import RelayBoardUnit
from drivers.sim.site import FakeSite, LivePlume
from drivers.sim.units import ProfileUnit, SimUnit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dustgate sim", description="Simulated Modbus/UART devices on ptys and TCP."
    )
    sub = parser.add_subparsers(dest="mode", required=True)

    def common(p: argparse.ArgumentParser, events: bool = True) -> None:
        p.add_argument("--duration", type=float, default=0, help="stop after S seconds (0: run)")
        p.add_argument("--status-every", type=float, default=5.0, help="print values every S s")
        if events:
            p.add_argument("--seed", type=int, default=1)
            p.add_argument("--time-scale", type=float, default=1.0, help="model speed-up")
            p.add_argument("--event-after", type=float, default=None, help="dust event after S s")
            p.add_argument("--event-every", type=float, default=None, help="dust event every S s")
            p.add_argument("--event-hold", type=float, default=120.0, help="event plateau, s")

    site = sub.add_parser("site", help="a whole fake site (sensors, relay board, UART sensors)")
    common(site)
    site.add_argument("--cannons", type=int, default=2)
    site.add_argument(
        "--relay-tcp",
        type=int,
        default=None,
        metavar="PORT",
        help="relay board on Modbus TCP 127.0.0.1:PORT (0: any) instead of a pty",
    )
    site.add_argument("--no-uart", action="store_true", help="without SDS011/PMS5003")
    site.add_argument(
        "--config-out",
        default=None,
        metavar="FILE",
        help="write the buses/devices/actuators for site.yaml to FILE",
    )

    modbus = sub.add_parser("modbus", help="one Modbus device of a profile, fed by the plume")
    common(modbus)
    modbus.add_argument("--profile", required=True, help=", ".join(profile_names()))
    modbus.add_argument("--slave-id", type=int, default=None)
    where = modbus.add_mutually_exclusive_group()
    where.add_argument("--tcp", type=int, default=None, metavar="PORT", help="Modbus TCP")
    where.add_argument("--rtu-over-tcp", type=int, default=None, metavar="PORT")
    modbus.add_argument("--pymodbus", action="store_true", help="serve TCP with pymodbus")

    relay = sub.add_parser("relay", help="a relay board")
    common(relay, events=False)
    relay.add_argument("--slave-id", type=int, default=1)
    relay.add_argument("--channels", type=int, default=8)
    relay.add_argument("--coil-base", type=int, default=0)
    relay.add_argument("--register-base", type=lambda s: int(s, 0), default=None)
    relay.add_argument("--on-value", type=lambda s: int(s, 0), default=1)
    relay.add_argument("--no-flash", action="store_true", help="no flash timers at 0x0200+ch")
    relay.add_argument("--reject-fc05", action="store_true")
    relay.add_argument("--tcp", type=int, default=None, metavar="PORT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0
    except (ProfileError, OSError, ValueError) as exc:
        print(f"dustgate sim: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    if args.mode == "site":
        return await _site(args)
    if args.mode == "modbus":
        return await _modbus(args)
    return await _relay(args)


async def _site(args: argparse.Namespace) -> int:
    fake = FakeSite(
        seed=args.seed,
        cannons=args.cannons,
        relay_transport="tcp" if args.relay_tcp is not None else "rtu",
        relay_tcp_port=args.relay_tcp or 0,
        uart=not args.no_uart,
        time_scale=args.time_scale,
    )
    endpoints = await fake.start()
    try:
        config = endpoints.agent_config()
        print("fake site running; devices:")
        print(f"  RS485 bus 1 (pty, 9600 8N1): {endpoints.sensor_bus}")
        print("      unit 1   dust-station   unit 255 generic-pm")
        if endpoints.relay_tcp:
            print(f"  relay board (Modbus TCP): {endpoints.relay_tcp[0]}:{endpoints.relay_tcp[1]}")
        else:
            print(f"  relay board (pty, 9600 8N1, unit 1): {endpoints.relay_bus}")
        print(f"      cannons on channels 0..{fake.cannons - 1}")
        for driver, path in endpoints.uart.items():
            print(f"  {driver} (pty, 9600 8N1): {path}")
        print("\n# site.yaml excerpt\n" + yaml.safe_dump(config, sort_keys=False))
        if args.config_out:
            with open(args.config_out, "w", encoding="utf-8") as out:
                yaml.safe_dump(config, out, sort_keys=False)
        sys.stdout.flush()

        def status() -> str:
            r = fake.readings()
            return (
                f"pm10 {r['pm10']:6.1f}  pm25 {r['pm25']:6.1f}  noise {r['noise']:5.1f}  "
                f"wind {r['wind_speed']:4.1f} m/s {r['wind_dir']:3.0f}  "
                f"cannons on {fake.active_cannons()}"
            )

        await _serve(args, lambda: fake.trigger_event(args.event_hold), status)
    finally:
        await fake.stop()
    return 0


async def _modbus(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {} if args.slave_id is None else {"slave_id": args.slave_id}
    profile = resolve_profile(args.profile, overrides)
    plume = LivePlume(seed=args.seed, time_scale=args.time_scale)
    unit: SimUnit
    if profile.relay is not None:
        unit = RelayBoardUnit.from_profile(profile)  # switchable, not fed by the plume
    else:
        unit = ProfileUnit(profile, plume.readings)
    server, where = await _start_server([unit], args.tcp, args.rtu_over_tcp, args.pymodbus)
    plume.start()
    try:
        print(f"{args.profile} (unit {unit.unit_id}) on {where}")
        fields = ", ".join(f"{f.name}@{f.address:#06x}" for f in profile.fields)
        print(f"  fields: {fields}")
        sys.stdout.flush()

        def status() -> str:
            if isinstance(unit, RelayBoardUnit):
                return _board_status(unit)
            r = plume.readings()
            return "  ".join(f"{f.name} {r[f.name]}" for f in profile.fields if f.name in r)

        await _serve(args, lambda: plume.trigger_event(args.event_hold), status)
    finally:
        await plume.stop()
        await server.stop()
    return 0


async def _relay(args: argparse.Namespace) -> int:
    board = RelayBoardUnit(
        args.slave_id,
        channels=args.channels,
        coil_base=args.coil_base,
        register_base=args.register_base,
        on_value=args.on_value,
        flash_base=None if args.no_flash else 0x0200,
        reject_fc05=args.reject_fc05,
    )
    server, where = await _start_server([board], args.tcp, None, False)
    try:
        print(f"{board.describe()} on {where}")
        sys.stdout.flush()
        await _serve(args, None, lambda: _board_status(board))
    finally:
        await server.stop()
    return 0


def _board_status(board: RelayBoardUnit) -> str:
    now = asyncio.get_running_loop().time()
    states = "".join("1" if board.is_on(ch, now) else "0" for ch in range(board.channels))
    return f"relays {states}  switches {board.switch_count}"


async def _start_server(
    units: list[SimUnit], tcp: int | None, rtu_over_tcp: int | None, use_pymodbus: bool
) -> tuple[Any, str]:
    if tcp is not None and use_pymodbus:
        try:
            from drivers.sim.pymodbus_tcp import PymodbusTcpServer
        except ImportError as exc:
            raise SystemExit(
                f"--pymodbus needs pymodbus ({exc}): pip install 'dustgate[sim]'"
            ) from None

        server: Any = PymodbusTcpServer(units, tcp)
        return server, f"Modbus TCP (pymodbus) 127.0.0.1:{await server.start()}"
    if tcp is not None:
        server = TcpServer(units, "mbap", port=tcp)
        return server, f"Modbus TCP 127.0.0.1:{await server.start()}"
    if rtu_over_tcp is not None:
        server = TcpServer(units, "rtu", port=rtu_over_tcp)
        return server, f"RTU over TCP 127.0.0.1:{await server.start()}"
    server = RtuPtyServer(units)
    return server, f"Modbus RTU pty {await server.start()}"


async def _serve(
    args: argparse.Namespace, trigger: Callable[[], None] | None, status: Callable[[], str]
) -> None:
    """Run until a signal or ``--duration``; trigger events as asked; print status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def event(source: str) -> None:
        if trigger is not None:
            trigger()
            print(f"dust event started ({source})", flush=True)

    with contextlib.ExitStack() as cleanup:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            cleanup.callback(loop.remove_signal_handler, sig)
        if trigger is not None:
            loop.add_signal_handler(signal.SIGUSR1, event, "SIGUSR1")
            cleanup.callback(loop.remove_signal_handler, signal.SIGUSR1)
            with contextlib.suppress(OSError, ValueError, NotImplementedError, PermissionError):
                loop.add_reader(sys.stdin.fileno(), _on_stdin, event, stop)
                cleanup.callback(loop.remove_reader, sys.stdin.fileno())
            after = getattr(args, "event_after", None)
            if after is not None:
                cleanup.callback(loop.call_later(after, event, "--event-after").cancel)
            every = getattr(args, "event_every", None)
            if every:
                periodic = loop.create_task(_every(every, lambda: event("--event-every")))
                cleanup.callback(periodic.cancel)
        if args.duration:
            cleanup.callback(loop.call_later(args.duration, stop.set).cancel)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.status_every if args.status_every > 0 else None):
                    await stop.wait()
            if not stop.is_set() and args.status_every > 0:
                print(status(), flush=True)


def _on_stdin(event: Callable[[str], None], stop: asyncio.Event) -> None:
    line = sys.stdin.readline()
    if not line:  # EOF: stop watching stdin, keep running
        asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
        return
    if line.strip().lower() in ("e", "event"):
        event("stdin")
    elif line.strip().lower() in ("q", "quit"):
        stop.set()


async def _every(period: float, action: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(period)
        action()


if __name__ == "__main__":
    raise SystemExit(main())
