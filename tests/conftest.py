"""Shared fixtures: paths, a valid device config, and a device token file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("WAKERTC_MODELS", ROOT / "models"))


@pytest.fixture
def models_dir() -> Path:
    """The openWakeWord models fetched by scripts/bootstrap.sh."""
    if not (MODELS / "hey_jarvis_v0.1.tflite").is_file():
        pytest.fail(f"wake-word models missing in {MODELS}: run scripts/bootstrap.sh --test")
    return MODELS


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A device token file with the right permissions."""
    path = tmp_path / "device-token"
    path.write_text("device-token-for-tests\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def write_config(tmp_path: Path, token_file: Path) -> Callable[..., Path]:
    """Write a device config (TOML text) next to a valid token file; returns its path."""

    def write(text: str = "", *, name: str = "wakertc.toml", mode: int = 0o640, **_: Any) -> Path:
        path = tmp_path / name
        header = f'[companion]\ntoken_file = "{token_file}"\n' if "[companion]" not in text else ""
        path.write_text(header + text)
        path.chmod(mode)
        return path

    return write


@pytest.fixture
async def serve():
    """Serve an aiohttp application on a free loopback port; returns its base URL."""
    from aiohttp import web

    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
