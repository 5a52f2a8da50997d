"""The pinned dependency sets in requirements/: complete, hashed, within pyproject's ranges.

scripts/lock.sh writes them (and checks wheels for every Python and machine, which needs PyPI);
these checks need no network: that each set pins every dependency pyproject.toml declares, that
every pin carries hashes, that the test sets install exactly the runtime pins, and that
scripts/bootstrap.sh picks the set of the Python it runs on.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.11", "3.12", "3.13")
MACHINES = ("aarch64", "x86_64")


def _pins(path: Path, python: str, machine: str) -> dict[str, Version]:
    """Name -> pinned version of each entry of `path` that applies to this Python and machine."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    env = {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "platform_machine": machine,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
    }
    pins: dict[str, Version] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *hashes = line.split(" --hash=")
        assert hashes and all(h.startswith("sha256:") for h in hashes), f"{path.name}: {line[:60]}"
        name_version, _, marker = spec.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(env):
            continue
        name, _, version = name_version.strip().partition("==")
        assert version, f"{path.name}: {name} is not pinned"
        assert canonicalize_name(name) not in pins, f"{path.name}: {name} pinned twice"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r)
        for r in (project["optional-dependencies"][extra] if extra else project["dependencies"])
    ]


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("python", PYTHONS)
def test_each_set_pins_what_pyproject_declares_with_hashes(python: str, machine: str) -> None:
    tag = "py" + python.replace(".", "")
    runtime = _pins(ROOT / f"requirements/{tag}.txt", python, machine)
    test = _pins(ROOT / f"requirements/{tag}-test.txt", python, machine)
    env = {"python_version": python, "platform_machine": machine, "platform_system": "Linux"}
    for pins, declared in ((runtime, _declared()), (test, _declared() + _declared("test"))):
        for req in declared:
            if req.marker is not None and not req.marker.evaluate(env):
                assert canonicalize_name(req.name) not in runtime, req
                continue
            version = pins.get(canonicalize_name(req.name))
            assert version is not None, f"{tag}: {req.name} is not in the set for {machine}"
            assert req.specifier.contains(version, prereleases=True), (tag, req, version)
    # The tests run on exactly what a device installs.
    assert {name: test[name] for name in runtime} == runtime
    assert runtime["numpy"].major >= 2 and "ai-edge-litert" in runtime
    # Dropped on purpose (requirements/overrides.txt): no NumPy 2 or Python 3.13 build.
    assert "tflite-runtime" not in test
    assert ("lgpio" in runtime) == (machine == "aarch64")


def test_bootstrap_refuses_a_python_without_a_set(tmp_path: Path) -> None:
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\necho 310\n")  # what bootstrap.sh asks it: major and minor
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "WAKERTC_VENV": str(tmp_path / "venv")}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/bootstrap.sh"), "--device"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "no dependency set for Python 3.10 in requirements/" in result.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="as a user, bootstrap.sh runs apt-get by sudo")
@pytest.mark.parametrize(
    ("mode", "wanted", "unwanted"),
    [
        ("--device", {"portaudio19-dev", "libsystemd-dev", "espeak-ng"}, {"sox", "pulseaudio"}),
        ("", {"portaudio19-dev", "espeak-ng", "sox"}, {"pulseaudio"}),
        ("--test", {"portaudio19-dev", "espeak-ng", "sox", "pulseaudio"}, set()),
    ],
    ids=["device", "demo", "test"],
)
def test_bootstrap_installs_demo_packages_only_off_the_device(
    tmp_path: Path, mode: str, wanted: set[str], unwanted: set[str]
) -> None:
    """A device gets no sox or PulseAudio, but espeak-ng (`wakertc enroll`'s negative speech):
    seen by what bootstrap.sh asks apt-get to install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "apt-args"
    fakes = {
        "dpkg-query": "exit 1\n",  # nothing is installed
        "apt-get": f'[ "$1" = update ] && exit 0\necho "$@" > {asked}\nexit 1\n',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["WAKERTC_VENV"] = str(tmp_path / "venv")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/bootstrap.sh"), *filter(None, [mode])],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0  # the fake apt-get fails once it has been asked
    packages = set(asked.read_text().split())
    assert wanted <= packages and not unwanted & packages, packages
