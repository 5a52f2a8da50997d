"""Logging: journald-or-stderr choice, the stderr format, structured fields and secret redaction."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wakertc.logs import (
    REDACTED,
    RedactSecrets,
    journal_handler,
    redact,
    register_secret,
    setup_logging,
    use_journal,
)

# Shaped like a project key (built here so the source holds no key-shaped literal).
API_KEY = "sk-" + "proj-abcdefghijklmnopqrstuvwxyz0123456789"
EPHEMERAL = "ek_68a1b2c3d4e5f60718293a4b5c6d7e8f"
TOKEN = "wkt-device-token-5f1c9a77e2"


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_redact_patterns_and_registered_secrets() -> None:
    assert register_secret(TOKEN)
    text = f"key {API_KEY} eph {EPHEMERAL} token {TOKEN} fine sk-short"
    assert redact(text) == f"key {REDACTED} eph {REDACTED} token {REDACTED} fine sk-short"
    assert not register_secret("abc")  # would redact ordinary words
    assert redact("abc abcd") == "abc abcd"


def _record(msg: str, *args: Any, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("wakertc.t", logging.INFO, __file__, 1, msg, args, exc_info)


def test_filter_redacts_message_args_repr_and_traceback() -> None:
    register_secret(TOKEN)

    class Holder:
        def __repr__(self) -> str:
            return f"Holder({TOKEN!r})"

    try:
        raise RuntimeError(f"companion said no to {API_KEY}")
    except RuntimeError as exc:
        record = _record("minted %s for %r in %.1f s", EPHEMERAL, Holder(), 0.25, exc=exc)
    record.DEVICE = f"kitchen {TOKEN}"
    assert RedactSecrets().filter(record) is True
    assert record.getMessage() == f"minted {REDACTED} for Holder('{REDACTED}') in 0.2 s"
    assert record.args == ()
    assert record.exc_text is not None and "RuntimeError: companion said no to" in record.exc_text
    assert API_KEY not in record.exc_text and REDACTED in record.exc_text
    assert record.exc_info is None  # journald would otherwise send the raw exception object
    assert vars(record)["DEVICE"] == f"kitchen {REDACTED}"


def test_stderr_format_and_redaction_end_to_end(restore_root: None) -> None:
    stream = io.StringIO()
    setup_logging("debug", stream=stream, environ={})
    log = logging.getLogger("wakertc.example")
    log.debug("using key %s", API_KEY)
    log.warning("phase %s -> %s", "idle", "wake")
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG   wakertc\.example: using key \[redacted\]",
        lines[0],
    ), lines[0]
    assert lines[1].endswith("WARNING wakertc.example: phase idle -> wake")
    assert API_KEY not in stream.getvalue()


def test_level_and_reconfiguration(restore_root: None) -> None:
    first = io.StringIO()
    second = io.StringIO()
    setup_logging("warning", stream=first, environ={})
    setup_logging("info", stream=second, environ={})  # replaces, never duplicates, our handler
    logging.getLogger("wakertc.x").info("hello")
    logging.getLogger("wakertc.x").debug("hidden")
    assert first.getvalue() == ""
    assert second.getvalue().count("hello") == 1 and "hidden" not in second.getvalue()
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("loud", stream=second, environ={})


def test_journal_decision() -> None:
    with tempfile.TemporaryFile("w") as stream:
        st = os.fstat(stream.fileno())
        ours = f"{st.st_dev}:{st.st_ino}"
        assert use_journal({"JOURNAL_STREAM": ours}, stream)
        # Inherited from a unit but our stderr was redirected elsewhere: keep writing to it.
        assert not use_journal({"JOURNAL_STREAM": "1:2", "INVOCATION_ID": "abc"}, stream)
        assert use_journal({"INVOCATION_ID": "0123abcd"}, stream)
        assert not use_journal({}, stream)
    assert not use_journal({"JOURNAL_STREAM": ours}, io.StringIO())  # no file descriptor


def test_journal_decision_can_be_forced() -> None:
    stream = io.StringIO()
    assert use_journal({"WAKERTC_LOG_TARGET": "journal"}, stream)
    assert not use_journal({"WAKERTC_LOG_TARGET": "stderr", "INVOCATION_ID": "0123abcd"}, stream)


def test_setup_picks_journal_only_when_journald_listens(restore_root: None, tmp_path: Path) -> None:
    systemd_env = {"INVOCATION_ID": "0123abcd"}
    socket_path = tmp_path / "journal.socket"
    fallback = setup_logging(
        "info", stream=io.StringIO(), environ=systemd_env, journal_socket=socket_path
    )
    assert isinstance(fallback, logging.StreamHandler)
    socket_path.touch()
    handler = setup_logging(
        "info", stream=sys.stderr, environ=systemd_env, journal_socket=socket_path
    )
    assert type(handler).__name__ == "JournalHandler"
    assert fallback not in logging.getLogger().handlers  # replaced, not stacked


def test_journal_entries_carry_identifier_fields_and_no_secrets() -> None:
    sent: list[dict[str, Any]] = []

    def sender(MESSAGE: str, **fields: Any) -> None:
        sent.append({"MESSAGE": MESSAGE, **fields})

    handler = journal_handler(sender)
    assert handler is not None
    handler.addFilter(RedactSecrets())
    log = logging.getLogger("wakertc.jtest")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("key %s rejected", API_KEY, extra={"PHASE": "error", "DEVICE": "kitchen"})
    finally:
        log.removeHandler(handler)
    (entry,) = sent
    assert entry["MESSAGE"] == f"key {REDACTED} rejected"  # no time or level: journald adds them
    assert entry["SYSLOG_IDENTIFIER"] == "wakertc"
    assert entry["PHASE"] == "error" and entry["DEVICE"] == "kitchen"
    assert entry["PRIORITY"] == "4" and entry["LOGGER"] == "wakertc.jtest"
    assert API_KEY not in repr(entry)  # CODE_ARGS, msg and friends included
