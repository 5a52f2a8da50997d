"""`wakertc emulator ...`: run the emulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from ..logs import setup_logging
from ..serving import serve_until_signalled
from .faults import FAULT_HELP, FaultError
from .options import DEFAULT_HOST, DEFAULT_PORT, DEV_API_KEY, REPLY_POLICIES, EmulatorOptions
from .script import ScriptError

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        """Print `message` as one line and exit 2."""
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The emulator's command-line flags."""
    faults = "\n".join(f"  {name:<18} {text}" for name, text in FAULT_HELP.items())
    parser = _Parser(
        prog="wakertc emulator",
        description="A local stand-in for the OpenAI Realtime API (GA shapes, real WebRTC).",
        epilog=f"faults (--fault, repeatable):\n{faults}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port, 0 for any (%(default)s)"
    )
    parser.add_argument(
        "--api-key",
        help=f"the standard key to accept (default $OPENAI_API_KEY, else {DEV_API_KEY!r})",
    )
    parser.add_argument(
        "--reply", choices=REPLY_POLICIES, default="echo", help="reply policy (%(default)s)"
    )
    parser.add_argument("--reply-text", help="what the speech policy says")
    parser.add_argument("--script", type=Path, help="JSON or TOML file of scripted turns")
    parser.add_argument(
        "--record",
        type=Path,
        help="write input.wav, output.wav, events.jsonl, frames.jsonl per call here",
    )
    parser.add_argument(
        "--fault", action="append", default=[], metavar="NAME[=VALUE]", help="inject a fault"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="(%(default)s)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `wakertc emulator`; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"wakertc emulator: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY") or DEV_API_KEY
    options = EmulatorOptions(
        host=args.host,
        port=args.port,
        api_key=api_key,
        reply=args.reply,
        script=args.script,
        record_dir=args.record,
        faults=tuple(args.fault),
        **({"reply_text": args.reply_text} if args.reply_text else {}),
    )
    setup_logging(args.log_level)
    try:
        return asyncio.run(_serve(options))
    except (FaultError, ScriptError) as exc:
        print(f"wakertc emulator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wakertc emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


async def _serve(options: EmulatorOptions) -> int:
    from .server import Emulator  # aiortc is heavy; --help stays quick

    emulator = Emulator(options)
    return await serve_until_signalled(emulator, "emulator", f"reply: {options.reply}")
