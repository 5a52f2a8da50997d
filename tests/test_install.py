"""scripts/install-pi.sh into a staging root: users, files, modes, idempotence, kept config.

The script runs for real (as root) with `--root DIR --files-only`: it creates users with
`useradd --prefix` in a copy of this machine's /etc/passwd, writes every file and unit it would
write on a Pi, and skips only apt, the virtualenv and systemctl.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from emulator_helpers import KEY, run_command, running_emulator, spawn_server, stop_server
from pulse import PulseRig, pulse_rig  # noqa: F401  (fixture)
from wakertc.companion import DeviceStore, load_companion_config
from wakertc.devices import find_device, list_devices

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path("scripts/install-pi.sh")
TOKEN = "wkt-0123456789abcdef0123456789abcdef"
# Shaped like a project key (built here so the source holds no key-shaped literal).
API_KEY = "sk-" + "proj-installtest0123456789abcdef"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="install-pi.sh needs root (chown, useradd)"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd (passwd package) missing"),
]


@dataclass
class Staging:
    src: Path  # a copy of the source tree the script is run from
    root: Path  # the staging prefix

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(self.src / SCRIPT), "--root", str(self.root), "--files-only", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
            check=False,
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = self.run(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def ids(self, database: str) -> dict[str, int]:
        rows = self.path(f"/etc/{database}").read_text().splitlines()
        return {r.split(":")[0]: int(r.split(":")[2]) for r in rows}

    def members(self, group: str) -> set[str]:
        for row in self.path("/etc/group").read_text().splitlines():
            name, _, _, members = row.split(":")
            if name == group:
                return set(filter(None, members.split(",")))
        raise KeyError(group)


def _copy_source(dest: Path) -> None:
    items = ("pyproject.toml", "README.md", "daemon", "scripts", "config", "systemd", "models")
    for item in (*items, "requirements"):
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, dest / item)
    # Placeholders only in this copy, until the real files land in the repository.
    (dest / "config").mkdir(exist_ok=True)
    for name in ("wakertc.toml", "companion.toml"):
        if not (dest / "config" / name).exists():
            (dest / "config" / name).write_text(f"# placeholder {name}\n")


def _staging_in(base: Path) -> Staging:
    src, root = base / "src", base / "root"
    src.mkdir()
    _copy_source(src)
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy2(Path("/etc") / name, root / "etc" / name)
    return Staging(src, root)


@pytest.fixture
def staging(tmp_path: Path) -> Staging:
    return _staging_in(tmp_path)


@pytest.fixture
def open_staging() -> Iterator[Staging]:
    """A staging tree other users can walk into (pytest's tmp_path is root's alone), for
    running the installed code as the service's user."""
    base = Path(tempfile.mkdtemp(prefix="wakertc-install-"))
    try:
        base.chmod(0o755)
        yield _staging_in(base)
    finally:
        shutil.rmtree(base)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _tree(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every path under `root` with its mode, owner, group and (for files) content."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        if path.is_symlink():
            content = os.readlink(path).encode()
        snapshot[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, content)
    return snapshot


def test_fresh_install_creates_users_files_and_modes(staging: Staging, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    output = staging.ok(
        "--companion", "--token-file", str(token_file), "--api-key-file", str(key_file)
    )
    assert TOKEN not in output and API_KEY not in output

    users, groups = staging.ids("passwd"), staging.ids("group")
    assert {"wakertc", "wakertc-companion"} <= users.keys()
    assert "wakertc" in staging.members("audio") and "wakertc" in staging.members("gpio")
    assert "wakertc-companion" not in staging.members("audio")
    passwd = staging.path("/etc/passwd").read_text()
    assert "wakertc:x:" in passwd and ":/var/lib/wakertc:/usr/sbin/nologin" in passwd

    config = staging.path("/etc/wakertc/wakertc.toml")
    assert _mode(config) == 0o640
    assert (config.stat().st_uid, config.stat().st_gid) == (0, groups["wakertc"])
    assert config.read_bytes() == (staging.src / "config/wakertc.toml").read_bytes()

    token = staging.path("/etc/wakertc/device-token")
    assert token.read_text() == TOKEN + "\n"
    assert _mode(token) == 0o600
    assert (token.stat().st_uid, token.stat().st_gid) == (users["wakertc"], groups["wakertc"])

    companion = staging.path("/etc/wakertc/companion.toml")
    assert _mode(companion) == 0o640
    assert companion.stat().st_gid == groups["wakertc-companion"]
    api_key = staging.path("/etc/wakertc/openai-api-key")
    assert api_key.read_text() == API_KEY + "\n"
    assert _mode(api_key) == 0o600 and api_key.stat().st_uid == 0  # read by systemd, as root
    assert _mode(staging.path("/var/lib/wakertc-companion")) == 0o700

    assert _mode(staging.path("/etc/wakertc")) == 0o755
    assert not [
        p
        for p in staging.path("/etc/wakertc").iterdir()
        if ".toml" not in p.name and p.name not in {"device-token", "openai-api-key"}
    ]  # no temp files left behind

    state = staging.path("/var/lib/wakertc")
    assert _mode(state) == 0o750 and state.stat().st_uid == users["wakertc"]
    assert (state / "models/hey_jarvis_v0.1.tflite").stat().st_uid == users["wakertc"]

    code = staging.path("/opt/wakertc/src")
    assert (code / "pyproject.toml").is_file() and (code / "daemon/wakertc/notify.py").is_file()
    assert not list(code.rglob("__pycache__"))
    assert not [p for p in code.rglob("*") if _mode(p) & 0o022]  # nothing writable but by root
    assert code.stat().st_uid == 0

    for unit in ("wakertc.service", "wakertc-companion.service"):
        installed = staging.path(f"/etc/systemd/system/{unit}")
        assert installed.read_bytes() == (ROOT / "systemd" / unit).read_bytes()
        assert _mode(installed) == 0o644
        wants = staging.path(f"/etc/systemd/system/multi-user.target.wants/{unit}")
        assert os.readlink(wants) == f"/etc/systemd/system/{unit}"


def test_rerun_upgrades_in_place_and_keeps_config_and_secrets(staging: Staging) -> None:
    staging.ok("--companion", env={"WAKERTC_DEVICE_TOKEN": TOKEN})
    config = staging.path("/etc/wakertc/wakertc.toml")
    edited = config.read_text() + '\n[companion]\nurl = "http://kitchen-hub:8780"\n'
    config.write_text(edited)
    companion = staging.path("/etc/wakertc/companion.toml")
    companion.write_text("# my companion settings\n")
    # The upgrade brings new code.
    (staging.src / "daemon/wakertc/notify.py").write_text("# new version\n")

    before = _tree(staging.root)
    output = staging.ok("--companion")
    assert "keeping" in output
    assert config.read_text() == edited and _mode(config) == 0o640
    assert companion.read_text() == "# my companion settings\n"
    token = staging.path("/etc/wakertc/device-token")
    assert token.read_text() == TOKEN + "\n" and _mode(token) == 0o600
    assert (
        staging.path("/opt/wakertc/src/daemon/wakertc/notify.py").read_text() == "# new version\n"
    )

    after = _tree(staging.root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    # Only the refreshed code changed: no duplicate users or groups, no new files, same modes.
    assert changed == {"opt/wakertc/src/daemon/wakertc/notify.py"}, changed

    # A third run is a no-op; a new token replaces the old one, still 0600.
    staging.ok("--companion")
    assert _tree(staging.root) == after
    staging.ok(env={"WAKERTC_DEVICE_TOKEN": "wkt-rotated-token-0000000000"})
    assert token.read_text() == "wkt-rotated-token-0000000000\n" and _mode(token) == 0o600


def test_upgrade_moves_devices_from_beside_the_config_to_the_state_directory(
    staging: Staging,
) -> None:
    """An install made with the earlier example: `file = "devices.json"`, so `sudo add-device`
    wrote /etc/wakertc/devices.json, root's alone. The upgrade gives it to the service."""
    staging.ok("--companion")
    config = staging.path("/etc/wakertc/companion.toml")
    new_line = 'file = "/var/lib/wakertc-companion/devices.json"'
    config.write_text(config.read_text().replace(new_line, 'file = "devices.json"'))
    old = staging.path("/etc/wakertc/devices.json")
    token = DeviceStore(old).add("kitchen")
    assert (old.stat().st_uid, _mode(old)) == (0, 0o600)

    output = staging.ok("--companion")
    assert "moving" in output
    moved = staging.path("/var/lib/wakertc-companion/devices.json")
    users, groups = staging.ids("passwd"), staging.ids("group")
    assert (moved.stat().st_uid, moved.stat().st_gid) == (
        users["wakertc-companion"],
        groups["wakertc-companion"],
    )
    assert _mode(moved) == 0o600 and not old.exists()
    assert DeviceStore(moved).identify(token) == "kitchen"
    assert new_line in config.read_text() and _mode(config) == 0o640
    assert config.stat().st_gid == groups["wakertc-companion"]
    assert "moving" not in staging.ok("--companion")  # once


def test_without_a_passwd_file_users_are_skipped(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "bare"
    src.mkdir()
    _copy_source(src)
    staging = Staging(src, root)
    output = staging.ok(env={"WAKERTC_DEVICE_TOKEN": TOKEN})
    assert "skipping users" in output
    assert not staging.path("/etc/passwd").exists()
    config = staging.path("/etc/wakertc/wakertc.toml")
    assert _mode(config) == 0o640 and config.stat().st_uid == 0
    assert _mode(staging.path("/etc/wakertc/device-token")) == 0o600


def test_bad_input_changes_nothing(staging: Staging, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = staging.run("--token-file", str(empty))
    assert result.returncode != 0 and "is empty" in result.stderr
    result = staging.run("--token-file", str(empty), env={"WAKERTC_DEVICE_TOKEN": TOKEN})
    assert result.returncode != 0 and "not both" in result.stderr
    result = staging.run("--bogus")
    assert result.returncode != 0 and "unknown argument" in result.stderr
    assert not staging.path("/etc/wakertc").exists()
    assert not staging.path("/opt").exists()
    assert "wakertc" not in staging.ids("passwd")


@pytest.mark.pulse
def test_the_first_microphone_goes_into_a_config_that_names_none(
    staging: Staging,
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
) -> None:
    """With a wakertc command (the installed one is skipped by --files-only, so the test gives
    its own, on the private PulseAudio server's devices), the installer shows `wakertc devices`
    and writes the first device that can capture into the new config's [audio] input_device,
    keeping the file's mode and owner; a re-run, or a config the user set, is left alone."""
    cli = tmp_path / "wakertc"
    cli.write_text(f'#!/bin/sh\nexec {sys.executable} -m wakertc.cli "$@"\n')
    cli.chmod(0o755)
    env = {"WAKERTC_INSTALL_CLI": str(cli), "PYTHONPATH": str(staging.src / "daemon")}
    output = staging.ok(env=env)
    assert "audio devices (wakertc devices):" in output and "Inputs:" in output, output
    assert "[install]   Inputs:" in output and pulse_rig.input_device in output, output

    config = staging.path("/etc/wakertc/wakertc.toml")
    chosen = tomllib.loads(config.read_text())["audio"]["input_device"]
    devices = list_devices()
    first = min(d.index for d in devices if d.max_input_channels > 0)
    assert find_device(devices, chosen, "input").index == first, (chosen, devices)
    assert f"set audio.input_device = {chosen!r}" in output, output
    example = (staging.src / "config/wakertc.toml").read_text().splitlines()
    written = config.read_text().splitlines()
    changed = [(a, b) for a, b in zip(example, written, strict=True) if a != b]
    assert changed == [
        (
            '# input_device = ""',
            f"input_device = {json.dumps(chosen)}  # the first microphone found at install",
        )
    ]
    assert _mode(config) == 0o640 and config.stat().st_gid == staging.ids("group")["wakertc"]

    before = config.read_bytes()
    assert "keeping audio.input_device" in staging.ok(env=env)
    assert config.read_bytes() == before
    config.write_text(config.read_text().replace(json.dumps(chosen), '"my usb mic"', 1))
    user_set = config.read_bytes()
    assert "keeping audio.input_device = 'my usb mic'" in staging.ok(env=env)
    assert config.read_bytes() == user_set


async def test_readme_companion_steps_end_with_a_device_getting_a_key(
    open_staging: Staging,
) -> None:
    """The README's companion install, in order, as a user would: install-pi.sh --companion, edit
    companion.toml, `sudo wakertc companion add-device`, the service starts as its own user with
    the API key as a systemd credential, and the device's token mints a key over HTTP."""
    staging = open_staging
    _skip_unless_others_can_run(sys.executable)
    key_file = staging.root.parent / "openai.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    # 1. sudo scripts/install-pi.sh --companion --api-key-file openai.key
    staging.ok("--companion", "--api-key-file", str(key_file))
    users, groups = staging.ids("passwd"), staging.ids("group")
    service_ids = (users["wakertc-companion"], groups["wakertc-companion"])

    # The installed config keeps devices where the unit's state directory is.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(staging.path("/etc/systemd/system/wakertc-companion.service"))
    state_dir = Path("/var/lib") / unit["Service"]["StateDirectory"]
    config_path = staging.path("/etc/wakertc/companion.toml")
    assert load_companion_config(config_path).devices_file == state_dir / "devices.json"

    async with running_emulator() as emulator:
        # 2. Configure /etc/wakertc/companion.toml: OpenAI (here the emulator) and a port; the
        # devices file at the staging root's copy of its default place.
        text = config_path.read_text()
        staged_state = staging.path(str(state_dir))
        edits = {
            'url = "https://api.openai.com"': f'url = "{emulator.url}"',
            "port = 8780": "port = 0",
            f'file = "{state_dir}/devices.json"': f'file = "{staged_state}/devices.json"',
        }
        for old, new in edits.items():
            assert old in text, old
            text = text.replace(old, new)
        config_path.write_text(text)

        # 3. sudo wakertc companion add-device kitchen --config /etc/wakertc/companion.toml,
        # with the installed code.
        installed = {"PYTHONPATH": str(staging.path("/opt/wakertc/src/daemon"))}
        code, out, err = await run_command(
            "cli", "companion", "add-device", "kitchen", "--config", str(config_path), env=installed
        )
        assert code == 0, err
        token = out.strip()
        # The store beside the devices file, which the service (its own user) must open.
        store = staged_state / "companion.db"
        assert not (staged_state / "devices.json").exists()
        assert (store.stat().st_uid, store.stat().st_gid) == service_ids
        assert _mode(store) == 0o600

        # 4. systemctl start wakertc-companion: as its user, the key from LoadCredential= in a
        # directory only that user can read, in its working directory.
        credentials = staging.root.parent / "credentials"
        credentials.mkdir(mode=0o500)
        shutil.copy(staging.path("/etc/wakertc/openai-api-key"), credentials / "openai-api-key")
        (credentials / "openai-api-key").chmod(0o400)
        for path in (credentials / "openai-api-key", credentials):
            os.chown(path, *service_ids)
        as_service = (
            "setpriv",
            f"--reuid={service_ids[0]}",
            f"--regid={service_ids[1]}",
            "--clear-groups",
        )
        environment = {
            **installed,
            "CREDENTIALS_DIRECTORY": str(credentials),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        proc, url, _, lines = await spawn_server(
            "cli",
            "companion",
            "--config",
            str(config_path),
            env=environment,
            prefix=as_service,
            cwd=staged_state,
        )
        try:
            # 5. The device asks for a key with its token.
            async with httpx.AsyncClient(timeout=10) as http:
                response = await http.post(
                    url + "/v1/session", headers={"Authorization": f"Bearer {token}"}, json={}
                )
            assert response.status_code == 200, response.text
            assert response.json()["value"].startswith("ek_")
        finally:
            code, _, rest = await stop_server(proc, signal.SIGTERM)
        assert code == 0, "".join(lines) + rest
        assert token not in "".join(lines) + rest and KEY not in "".join(lines) + rest


# -- the machine check ---------------------------------------------------------------------------

BOOKWORM_PI = (
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
    "VERSION_CODENAME=bookworm\nID=debian\n"
)
TRIXIE = (
    'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\n'
    "VERSION_CODENAME=trixie\nID=debian\n"
)
BULLSEYE = 'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nVERSION_CODENAME=bullseye\nID=debian\n'
UBUNTU = 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n'
RASPBIAN = (
    'PRETTY_NAME="Raspbian GNU/Linux 12 (bookworm)"\nID=raspbian\nID_LIKE=debian\n'
    "VERSION_CODENAME=bookworm\n"
)


def _machine(tmp_path: Path, arch: str, os_release: str, python: str = "3.11") -> dict[str, str]:
    """The environment that makes install-pi.sh see this machine."""
    release = tmp_path / "os-release"
    release.write_text(os_release)
    fake_python = tmp_path / "python3"
    fake_python.write_text(f"#!/bin/sh\necho {python}\n")
    fake_python.chmod(0o755)
    return {"WAKERTC_ARCH": arch, "WAKERTC_OS_RELEASE": str(release), "PYTHON": str(fake_python)}


@pytest.mark.parametrize(
    ("arch", "os_release", "python", "says"),
    [
        ("armhf", RASPBIAN, "3.11", ["32-bit ARM (armhf)", "64-bit", "NumPy", "livekit"]),
        ("i386", BOOKWORM_PI, "3.11", ["architecture is i386", "arm64", "amd64"]),
        ("arm64", UBUNTU, "3.12", ["Ubuntu 24.04.1 LTS", "Debian 12 or 13", "Bookworm or Trixie"]),
        ("amd64", BULLSEYE, "3.9", ["Debian GNU/Linux 11 (bullseye)", "Debian 12 or 13"]),
        ("amd64", TRIXIE, "3.10", ["is Python 3.10", "3.11 to 3.13"]),
        ("arm64", TRIXIE, "3.14", ["is Python 3.14", "3.11 to 3.13"]),
    ],
    ids=["armhf", "i386", "ubuntu", "bullseye", "python3.10", "python3.14"],
)
def test_unsupported_machine_stops_with_one_sentence_before_any_change(
    staging: Staging, tmp_path: Path, arch: str, os_release: str, python: str, says: list[str]
) -> None:
    before = _tree(staging.root)
    result = staging.run(
        env={**_machine(tmp_path, arch, os_release, python), "WAKERTC_DEVICE_TOKEN": TOKEN}
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    for fragment in says:
        assert fragment in errors[0], errors[0]
    assert _tree(staging.root) == before  # no user, no file, nothing


@pytest.mark.parametrize(
    ("arch", "os_release", "python", "line"),
    [
        (
            "arm64",
            BOOKWORM_PI,
            "3.11",
            "machine: arm64, Debian GNU/Linux 12 (bookworm), Python 3.11",
        ),
        ("arm64", TRIXIE, "3.13", "machine: arm64, Debian GNU/Linux 13 (trixie), Python 3.13"),
        ("amd64", TRIXIE, "3.13", "machine: amd64, Debian GNU/Linux 13 (trixie), Python 3.13"),
    ],
    ids=["pi-os-bookworm", "pi-os-trixie", "debian-13-x86"],
)
def test_supported_machines_install(
    staging: Staging, tmp_path: Path, arch: str, os_release: str, python: str, line: str
) -> None:
    output = staging.ok(env=_machine(tmp_path, arch, os_release, python))
    assert line in output
    assert staging.path("/etc/systemd/system/wakertc.service").is_file()


# -- GPIO access ---------------------------------------------------------------------------------

RULE = "60-wakertc-gpio.rules"
# What raspberrypi-sys-mods ships in /usr/lib/udev/rules.d/99-com.rules (the GPIO lines).
PI_OS_RULES = (
    'SUBSYSTEM=="*gpiomem*", GROUP="gpio", MODE="0660"\n'
    'SUBSYSTEM=="gpio", GROUP="gpio", MODE="0660"\n'
)


def test_plain_debian_gets_a_udev_rule_for_the_gpio_chips(staging: Staging) -> None:
    output = staging.ok()
    rule = staging.path(f"/etc/udev/rules.d/{RULE}")
    assert rule.read_bytes() == (ROOT / "systemd" / RULE).read_bytes()
    assert _mode(rule) == 0o644 and rule.stat().st_uid == 0
    assert f"installed /etc/udev/rules.d/{RULE}" in output
    lines = [x for x in rule.read_text().splitlines() if x and not x.startswith("#")]
    assert lines == ['SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"']
    # The group the rule names is the one the service runs with.
    unit = (ROOT / "systemd/wakertc.service").read_text()
    assert "SupplementaryGroups=audio gpio" in unit


def test_raspberry_pi_os_keeps_its_own_gpio_rule(staging: Staging) -> None:
    pi_rules = staging.path("/usr/lib/udev/rules.d/99-com.rules")
    pi_rules.parent.mkdir(parents=True)
    pi_rules.write_text(PI_OS_RULES)
    output = staging.ok()
    assert "/usr/lib/udev/rules.d/99-com.rules already gives the gpio group" in output
    assert not staging.path(f"/etc/udev/rules.d/{RULE}").exists()
    assert pi_rules.read_text() == PI_OS_RULES


def _skip_unless_others_can_run(python: str) -> None:
    """The service's user runs this test's interpreter and virtualenv (an install has its own in
    /opt/wakertc/venv): where they live under a directory only root may enter (a clone in
    /root), that user cannot import anything, and the test could only show that."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(
        [*nobody, python, "-c", "import httpx"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(
            f"the test interpreter {python} is not usable by an unprivileged user (its "
            f"virtualenv is under a directory only root may enter): {probe.stderr.strip()[-200:]}"
        )
