"""The `wakertc` command: one entry point, a subcommand per job.

Subcommands import what they need lazily, so `wakertc check-config` stays quick and the daemon's
start-up cost is only what `run` itself needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wakertc run", description="Run the device daemon.")
    parser.add_argument("--config", help="config file (default $WAKERTC_CONFIG or /etc/wakertc)")
    args = parser.parse_args(argv)
    from .daemon import run_daemon

    return run_daemon(args.config)


def _check_config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wakertc check-config",
        description="Validate a config file and the audio devices it names: exit 0 and a summary "
        "(plus warnings, e.g. a device not plugged in now), or 2 and a line per problem.",
    )
    parser.add_argument("path", nargs="?", help="config file (default $WAKERTC_CONFIG or /etc/...)")
    parser.add_argument("--config", dest="config_opt", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from .config import ConfigError, config_path, load_config, summary

    path = config_path(args.path or args.config_opt)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from .audio import check_devices

    errors, warnings = check_devices(config.audio)
    for error in errors:
        print(f"{path}: {error}", file=sys.stderr)
    if errors:
        return 2
    print(summary(config))
    for line in config.warnings:
        print(line.replace(f"{path}: ", f"{path}: warning: ", 1), file=sys.stderr)
    for warning in warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    return 0


def _lazy(module: str, func: str) -> Callable[[list[str]], int]:
    def call(argv: list[str]) -> int:
        import importlib

        entry: Callable[[list[str]], int] = getattr(
            importlib.import_module(module, __package__), func
        )
        return entry(argv)

    return call


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "run": (_run, "run the device daemon"),
    "check-config": (_check_config, "validate a config file"),
    "devices": (_lazy(".devices", "devices_main"), "list audio inputs and outputs"),
    "detect": (_lazy(".wakeword", "detect_main"), "run the wake word over a WAV file"),
    "selftest": (_lazy(".selftest", "main"), "one call with this device's config, reported"),
    "demo": (_lazy(".demo", "main"), "run the whole chain locally, no hardware"),
    "emulator": (_lazy(".emulator", "main"), "local stand-in for the OpenAI Realtime API"),
    "companion": (_lazy(".companion", "main"), "the key server that holds the API key"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `wakertc SUBCOMMAND ...`; each subcommand parses its own arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
        print(f"usage: {Path(sys.argv[0]).name} COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if args else 2
    if args[0] == "--version":
        print(f"wakertc {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"wakertc: unknown command {args[0]!r} (try: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        return command[0](args[1:])
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
