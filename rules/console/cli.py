"""``dustgate console``: serve the console; ``dustgate console adduser``: manage users.

::

    dustgate console --config console.yaml
    dustgate console adduser --config console.yaml alice --role operator
        # password: asked twice on the terminal, or --password-file FILE,
        # or the environment variable DUSTGATE_CONSOLE_PASSWORD (scripts)

Serves on ``console.listen:port`` (loopback by default); with
``tls_cert_file``/``tls_key_file`` it speaks HTTPS itself, else put it behind
a TLS reverse proxy (deploy/central/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import time
from pathlib import Path

from gateway.configfile import ConfigError
from rules.console.auth import ROLE_NAMES, Role, check_password, check_username, hash_password
from rules.console.config import ConsoleFile, load_console_file

PASSWORD_ENV = "DUSTGATE_CONSOLE_PASSWORD"


def _load(path: Path) -> ConsoleFile | None:
    try:
        return load_console_file(path)
    except ConfigError as exc:
        print(f"dustgate console: {path} has errors:\n{exc}", file=sys.stderr)
        return None


def _password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        return Path(args.password_file).read_text(encoding="utf-8").strip()
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first


def adduser(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="dustgate console adduser",
        description="Add a console user, or reset their password and role.",
    )
    ap.add_argument("--config", "-c", type=Path, required=True, help="console.yaml")
    ap.add_argument("name")
    ap.add_argument("--role", choices=ROLE_NAMES, default="viewer")
    ap.add_argument(
        "--password-file", type=Path, help=f"read it from a file (else ${PASSWORD_ENV} or a prompt)"
    )
    args = ap.parse_args(argv)
    cfg = _load(args.config)
    if cfg is None:
        return 2
    from rules.console.store import Store

    try:
        check_username(args.name)
        password = check_password(_password(args))
    except (ValueError, OSError) as exc:
        print(f"dustgate console adduser: {exc}", file=sys.stderr)
        return 2
    store = Store(cfg.store)
    try:
        existed = store.user(args.name) is not None
        store.add_user(args.name, Role.parse(args.role).label, hash_password(password), time.time())
        store.audit(time.time(), "cli", "user", f"user:{args.name}", f"role {args.role} (adduser)")
    finally:
        store.close()
    print(f"{'updated' if existed else 'added'} {args.name} ({args.role}) in {cfg.store}")
    return 0


def serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="dustgate console",
        description="The district web console (board, site pages, thresholds). "
        "Subcommand: adduser.",
    )
    ap.add_argument("--config", "-c", type=Path, required=True, help="console.yaml")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = _load(args.config)
    if cfg is None:
        return 2
    import uvicorn

    from rules.console.app import create_app, make_ctx

    c = cfg.console
    for what, path in (("tls_cert_file", c.tls_cert_file), ("tls_key_file", c.tls_key_file)):
        if path is not None and not os.access(path, os.R_OK):
            print(f"dustgate console: console.{what}: cannot read {path}", file=sys.stderr)
            return 2

    ctx = make_ctx(cfg)
    app = create_app(ctx)
    config = uvicorn.Config(
        app,
        host=c.listen,
        port=c.port,
        ssl_certfile=str(c.tls_cert_file) if c.tls_cert_file else None,
        ssl_keyfile=str(c.tls_key_file) if c.tls_key_file else None,
        log_level=args.log_level.lower(),
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        limit_concurrency=1000,
        timeout_graceful_shutdown=3,
    )
    scheme = "https" if c.tls_cert_file else "http"
    print(f"dustgate console on {scheme}://{c.listen}:{c.port}/", flush=True)
    asyncio.run(uvicorn.Server(config).serve())
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "adduser":
        return adduser(argv[1:])
    return serve(argv)
