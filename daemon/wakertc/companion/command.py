"""`wakertc companion ...`: serve, manage device tokens, read the usage ledger, forget memory."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, NoReturn

from ..logs import setup_logging
from ..serving import serve_until_signalled
from .config import CompanionConfig, CompanionConfigError, load_companion_config
from .devices import DeviceError
from .store import Spend, Store, StoreError, open_store

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/wakertc/companion.toml"
DEVICE_COMMANDS = ("add-device", "remove-device", "list-devices")
STORE_COMMANDS = (*DEVICE_COMMANDS, "usage", "forget")


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
    if argv and argv[0] == "usage":
        return _usage_command(argv[1:])
    if argv and argv[0] == "forget":
        return _forget_command(argv[1:])
    parser = _Parser(
        prog="wakertc companion",
        description="Key server: holds the OpenAI API key and mints ephemeral keys for devices. "
        f"Manage devices, read usage, forget memory with `wakertc companion "
        f"{{{','.join(STORE_COMMANDS)}}} ...`.",
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
    except (CompanionConfigError, DeviceError, StoreError) as exc:
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

    async def run(store: Store) -> None:
        if command == "add-device":
            token = await store.add_device(args.name)
            print(token)
            print(
                f"device {args.name!r} added; the token above is shown only this once "
                "(put it in the device's companion.token_file)",
                file=sys.stderr,
            )
        elif command == "remove-device":
            await store.remove_device(args.name)
            print(f"device {args.name!r} removed; its token no longer works", file=sys.stderr)
        else:
            for name in await store.device_names():
                print(name)

    return _with_store(args.config, run)


def _usage_command(argv: list[str]) -> int:
    parser = _Parser(
        prog="wakertc companion usage",
        description="What the devices used, from the usage ledger: sessions, tokens, seconds and "
        "cost by device, and the household's total.",
    )
    parser.add_argument("--device", help="only this device")
    parser.add_argument(
        "--since", type=_date, help="from this day on, YYYY-MM-DD, local time (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _config_flag(parser)
    args = parser.parse_args(argv)
    since = 0.0 if args.since is None else args.since.timestamp()

    async def run(store: Store) -> None:
        if args.device is not None:
            spends = {args.device: await store.spent(args.device, since)}
            household = None
        else:
            spends = await store.spent_by_device(since)
            household = await store.spent(None, since)
        if args.json:
            report: dict[str, Any] = {
                "since": None if args.since is None else args.since.date().isoformat(),
                "devices": {name: _spend_json(spend) for name, spend in sorted(spends.items())},
            }
            if household is not None:
                report["household"] = _spend_json(household)
            print(json.dumps(report, indent=2))
        else:
            print(_usage_table(spends, household, args.since))

    return _with_store(args.config, run)


def _forget_command(argv: list[str]) -> int:
    parser = _Parser(
        prog="wakertc companion forget",
        description="Delete every conversation turn the companion remembers for a device.",
    )
    parser.add_argument("--device", required=True, help="the device whose memory to delete")
    _config_flag(parser)
    args = parser.parse_args(argv)

    async def run(store: Store) -> None:
        turns = await store.forget(args.device)
        print(f"device {args.device!r}: forgot {turns} remembered turns", file=sys.stderr)

    return _with_store(args.config, run)


def _with_store(config_path: str, run: Callable[[Store], Awaitable[None]]) -> int:
    """Load the config, open its store, `run` on it, close it; the exit status (errors are one
    line on stderr)."""

    async def main() -> None:
        config = load_companion_config(config_path)
        store = await open_store(config.store, devices_file=config.devices_file)
        try:
            await run(store)
        finally:
            await store.close()

    try:
        asyncio.run(main())
    except (CompanionConfigError, DeviceError, StoreError) as exc:
        print(f"wakertc companion: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wakertc companion: {exc}", file=sys.stderr)
        return 1
    return 0


def _date(value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d")  # local midnight, on purpose
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {value!r}") from None


def _spend_json(spend: Spend) -> dict[str, Any]:
    return {
        "sessions": spend.sessions,
        "tokens": spend.tokens,
        "seconds": round(spend.seconds, 3),
        "cost_usd": round(spend.cost_usd, 6),
    }


def _usage_table(spends: dict[str, Spend], household: Spend | None, since: datetime | None) -> str:
    rows = [("device", "sessions", "tokens", "seconds", "cost (USD)")]
    for name, spend in sorted(spends.items()):
        rows.append(_usage_row(name, spend))
    if household is not None:
        rows.append(_usage_row("household", household))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    period = f"since {since.date().isoformat()}" if since else "all recorded usage"
    return f"usage, {period}:\n" + "\n".join(lines)


def _usage_row(name: str, spend: Spend) -> tuple[str, str, str, str, str]:
    return (
        name,
        str(spend.sessions),
        str(spend.tokens),
        f"{spend.seconds:.1f}",
        f"{spend.cost_usd:.4f}",
    )


async def _serve(config: CompanionConfig) -> int:
    from .server import Companion

    companion = Companion(config)
    store = config.store.url or str(config.store.file)  # the config refuses a password in it
    details = f"upstream {config.upstream.url}, store {store}"
    return await serve_until_signalled(companion, "companion", details)
