"""The systemd units: `systemd-analyze verify` clean, hardening exposure at its target.

`verify` insists that ExecStart's binary exists, and /opt/wakertc/venv/bin/wakertc does not on a
development machine. It runs on a copy whose ExecStart path is replaced by an existing binary; the
test asserts that path is the only line that differs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
INSTALLED_BINARY = "/opt/wakertc/venv/bin/wakertc"
# Unit -> highest `systemd-analyze security` exposure allowed (issue 2).
TARGETS = {"wakertc.service": 3.0, "wakertc-companion.service": 2.0}

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian package `systemd`)"
)


def _analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def _settings(unit: str) -> dict[str, list[str]]:
    """Key -> every value it is given in the unit (sections flattened; keys are unique here)."""
    values: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def _exposure(unit_path: Path) -> float:
    result = _analyze("security", "--offline=true", unit_path)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure line in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


@pytest.mark.parametrize("unit", sorted(TARGETS))
def test_verify_is_clean(unit: str, tmp_path: Path) -> None:
    original = (UNITS / unit).read_text()
    stand_in = shutil.which("true")
    assert stand_in is not None
    copy = tmp_path / unit
    copy.write_text(original.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={stand_in} "))
    changed = [
        (a, b)
        for a, b in zip(original.splitlines(), copy.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert len(changed) == 1 and changed[0][0].startswith(f"ExecStart={INSTALLED_BINARY} ")

    result = _analyze("verify", copy)
    # verify exits 0 even for unknown keys or unparsable values; it only warns. Demand silence.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize(("unit", "target"), sorted(TARGETS.items()))
def test_hardening_exposure_within_target(unit: str, target: float) -> None:
    exposure = _exposure(UNITS / unit)
    assert exposure <= target, f"{unit}: exposure {exposure} > {target}"
    # systemd's own gate agrees (it fails above the threshold, scaled by 10).
    gate = _analyze("security", "--offline=true", f"--threshold={int(target * 10)}", UNITS / unit)
    assert gate.returncode == 0, gate.stdout[-500:]


def test_security_check_notices_a_weakened_unit(tmp_path: Path) -> None:
    """The exposure figure is real: dropping the sandbox raises it past the target."""
    weakened = tmp_path / "wakertc.service"
    lines = (UNITS / "wakertc.service").read_text().splitlines()
    sandbox_start = lines.index(next(line for line in lines if line.startswith("# --- sandbox")))
    weakened.write_text("\n".join([*lines[:sandbox_start], "[Install]", "WantedBy=x.target", ""]))
    assert _exposure(weakened) > TARGETS["wakertc.service"]


def test_device_unit_contract() -> None:
    s = _settings("wakertc.service")
    assert s["ExecStart"] == [f"{INSTALLED_BINARY} run --config /etc/wakertc/wakertc.toml"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["User"] == ["wakertc"] and s["SupplementaryGroups"] == ["audio gpio"]
    assert 10 <= int(s["WatchdogSec"][0]) <= 60
    assert s["Restart"] == ["always"] and "StartLimitBurst" in s
    assert s["TimeoutStopSec"] == ["5"]
    assert s["StateDirectory"] == ["wakertc"]  # /var/lib/wakertc/models
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert s["DevicePolicy"] == ["closed"]
    assert set(s["DeviceAllow"]) == {"char-alsa rw", "char-gpiochip rw", "/dev/gpiomem rw"}
    assert "PrivateDevices" not in s  # it would hide the GPIO chips
    assert s["ReadOnlyPaths"] == ["-/etc/wakertc"]  # "-": no failure when it is missing
    assert "MemoryMax" in s


def test_device_unit_is_ordered_after_time_sync_without_waiting_for_it() -> None:
    s = _settings("wakertc.service")
    assert "time-sync.target" in s["After"][0].split()
    pulled_in = " ".join(s.get("Wants", []) + s.get("Requires", []) + s.get("BindsTo", []))
    assert "time-sync.target" not in pulled_in


def test_companion_unit_contract() -> None:
    s = _settings("wakertc-companion.service")
    assert s["ExecStart"] == [f"{INSTALLED_BINARY} companion --config /etc/wakertc/companion.toml"]
    assert s["User"] == ["wakertc-companion"]
    assert s["LoadCredential"] == ["openai-api-key:/etc/wakertc/openai-api-key"]
    assert s["StateDirectory"] == ["wakertc-companion"]
    assert "EnvironmentFile" not in s  # the key never travels in the environment
    assert s["PrivateDevices"] == ["yes"] and s["RestrictAddressFamilies"] == [
        "AF_UNIX AF_INET AF_INET6"
    ]
