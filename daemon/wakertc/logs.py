"""Logging set-up: journald with structured fields under systemd, readable stderr otherwise.

Under systemd each record goes to the journal as one entry with `SYSLOG_IDENTIFIER=wakertc`, its
priority, logger name and any upper-case fields passed with `extra=` (for example
`log.info("phase %s", p, extra={"PHASE": p})`, then `journalctl -u wakertc PHASE=idle`).
Elsewhere it is one line on stderr with time, level and logger.

`RedactSecrets` runs on every handler: API keys, ephemeral keys and registered strings (the device
token) are replaced by `[redacted]` in the message, its arguments and any traceback text. This is
defence in depth: code must still never log a secret.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

REDACTED = "[redacted]"
SYSLOG_IDENTIFIER = "wakertc"
STDERR_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# `journal` or `stderr` overrides the detection below (e.g. in a unit drop-in, or in tests).
TARGET_ENV = "WAKERTC_LOG_TARGET"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")

# `ek_...` ephemeral keys minted for a session; `sk-...` standard and project API keys.
_PATTERNS = (r"ek_[A-Za-z0-9_-]+", r"sk-[A-Za-z0-9_-]{10,}")
# Shorter strings would redact ordinary words if registered by mistake.
_MIN_SECRET_LEN = 8

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern = re.compile("|".join(_PATTERNS))


def register_secret(value: str) -> bool:
    """Redact `value` (e.g. the device token) from every later log record; False if too short."""
    global _pattern
    value = value.strip()
    if len(value) < _MIN_SECRET_LEN:
        # Redacting "abc" everywhere would mangle ordinary log lines; a token this short is weak
        # anyway, and saying so is more useful than refusing to start.
        logging.getLogger(__name__).warning(
            "a secret of %d characters is too short to redact from logs", len(value)
        )
        return False
    with _secrets_lock:
        _secrets.add(value)
        # Longest first, so a secret containing another is replaced whole.
        literals = [re.escape(s) for s in sorted(_secrets, key=len, reverse=True)]
        _pattern = re.compile("|".join([*literals, *_PATTERNS]))
    return True


def redact(text: str) -> str:
    """`text` with every known secret replaced by `[redacted]`."""
    return _pattern.sub(REDACTED, text)


class RedactSecrets(logging.Filter):
    """Replace secrets in a record's final message, traceback and fields; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string: keep what we have, redacted, rather than lose the record.
            message = f"{record.msg} {record.args!r}"
        # Formatting now means a secret cannot hide in an argument's str() or repr(); the args are
        # dropped so no handler (journald's CODE_ARGS) sends them unredacted.
        record.msg = redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            # Render the traceback here so the redacted text is what every formatter reuses.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            # The exception object itself would reach journald as EXCEPTION_INFO, unredacted.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key.isupper() and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


def use_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """True when running as a systemd service whose stderr would end up in the journal anyway."""
    forced = environ.get(TARGET_ENV, "")
    if forced in {"journal", "stderr"}:
        return forced == "journal"
    journal_stream = environ.get("JOURNAL_STREAM", "")
    if journal_stream:
        # systemd.exec(5): only trust it when it names the very stream we would write to; a
        # child started from a unit with its stderr redirected inherits a stale value.
        try:
            st = os.fstat(stream.fileno())
        except (OSError, ValueError, AttributeError):
            return False
        return journal_stream == f"{st.st_dev}:{st.st_ino}"
    return bool(environ.get("INVOCATION_ID"))


def journal_handler(sender: Any = None) -> logging.Handler | None:
    """A journald handler tagged `wakertc`, or None when systemd-python is missing."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}
    if sender is not None:
        kwargs["sender_function"] = sender
    handler: logging.Handler = JournalHandler(**kwargs)
    # journald stamps time, host and identifier itself; the message stays just the message.
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def stderr_handler(stream: TextIO) -> logging.Handler:
    """One line per record: time, level, logger, message."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    return handler


QUIET_LOGGERS = ("httpx", "aioice", "aiortc")


def setup_logging(
    level: str,
    *,
    stream: TextIO = sys.stderr,
    environ: Mapping[str, str] | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
) -> logging.Handler:
    """Configure the root logger for the daemon; returns the handler it installed."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r} (expected debug, info, warning or error)")
    env = os.environ if environ is None else environ
    # Without journald's socket (a container, a chroot) every record would be an error: use stderr.
    journal = use_journal(env, stream) and journal_socket.exists()
    handler = journal_handler() if journal else None
    if handler is None:
        handler = stderr_handler(stream)
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_wakertc", False):
            root.removeHandler(old)
            old.close()
    handler._wakertc = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(numeric)
    # These log every HTTP request and ICE candidate pair at INFO: useful only when debugging.
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, numeric))
    return handler
