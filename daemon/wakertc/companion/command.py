"""`wakertc companion ...`: serve, or manage device tokens."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import NoReturn

from ..logs import setup_logging
from ..serving import serve_until_signalled
from .config import CompanionConfig, CompanionConfigError, load_companion_config
from .devices import DeviceError, DeviceStore

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/wakertc/companion.toml"
DEVICE_COMMANDS = ("add-device", "remove-device", "list-devices")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        """Print `message` as one line and exit 2."""
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("WAKERTC_COMPANION_CONFIG", DEFAULT_CONFIG),
        help="config file (default $WAKERTC_COMPANION_CONFIG or %(default)s)",
    )


def main(argv: list[str]) -> int:
    """Entry point of `wakertc companion`; returns the exit status."""
    if argv and argv[0] in DEVICE_COMMANDS:
        return _device_command(argv[0], argv[1:])
    parser = _Parser(
        prog="wakertc companion",
        description="Key server: holds the OpenAI API key and mints ephemeral keys for devices. "
        f"Manage devices with `wakertc companion {{{','.join(DEVICE_COMMANDS)}}} ...`.",
    )
    _config_flag(parser)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="(%(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        config = load_companion_config(args.config)
    except CompanionConfigError as exc:
        print(f"wakertc companion: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level)
    try:
        return asyncio.run(_serve(config))
    except (CompanionConfigError, DeviceError) as exc:
        print(f"wakertc companion: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        server = config.server
        print(
            f"wakertc companion: cannot listen on {server.host}:{server.port}: {exc}",
            file=sys.stderr,
        )
        return 1


def _device_command(command: str, argv: list[str]) -> int:
    parser = _Parser(prog=f"wakertc companion {command}")
    if command != "list-devices":
        parser.add_argument("name", help="device name (letters, digits, . _ -)")
    _config_flag(parser)
    args = parser.parse_args(argv)
    try:
        config = load_companion_config(args.config)
        store = DeviceStore(config.devices_file)
        if command == "add-device":
            token = store.add(args.name)
            print(token)
            print(
                f"device {args.name!r} added; the token above is shown only this once "
                "(put it in the device's companion.token_file)",
                file=sys.stderr,
            )
        elif command == "remove-device":
            store.remove(args.name)
            print(f"device {args.name!r} removed; its token no longer works", file=sys.stderr)
        else:
            for name in store.names():
                print(name)
    except (CompanionConfigError, DeviceError) as exc:
        print(f"wakertc companion: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wakertc companion: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(config: CompanionConfig) -> int:
    from .server import Companion

    companion = Companion(config)
    details = f"upstream {config.upstream.url}, {len(companion.devices.names())} devices"
    return await serve_until_signalled(companion, "companion", details)
