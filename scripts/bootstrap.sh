#!/usr/bin/env bash
# Install everything wakertc needs to run (and, with --test, to be tested) on Debian 12 or 13 /
# Raspberry Pi OS Bookworm or Trixie. Idempotent: each step is skipped when its result is already there.
#
#   scripts/bootstrap.sh           Debian packages, .venv with wakertc, wake-word models, sox (demo)
#   scripts/bootstrap.sh --test    the same plus the test and lint tools, PulseAudio, Mosquitto, ...
#   scripts/bootstrap.sh --device  what a device needs only, no sox (used by install-pi.sh)
#
# Python packages come from the pinned, hashed set for this Python in requirements/ (refresh them
# with scripts/lock.sh); wakertc itself is installed editable on top, without dependencies.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${WAKERTC_VENV:-$root/.venv}
models=${WAKERTC_MODELS:-$root/models}
python=${PYTHON:-python3}
mode=${1:-demo}
case $mode in
    demo | --test | --device) mode=${mode#--} ;;
    *) echo "usage: $0 [--test|--device]" >&2 && exit 2 ;;
esac

log() { printf '[bootstrap] %s\n' "$*" >&2; }

sudo_() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Build headers for PyAudio and systemd-python (no wheels on PyPI); on ARM, swig for lgpio, which
# has no wheel for Python 3.13. espeak-ng makes the demo's and the tests' speech, and on a device
# the negative speech `wakertc enroll` trains against (without it, false wakes are far more common:
# enroll.py); sox and PulseAudio (the real-time audio server the end-to-end tests run against) are
# for the demo and the tests only.
apt_packages=(python3-venv python3-dev gcc pkg-config portaudio19-dev libsystemd-dev unzip espeak-ng)
[[ $(uname -m) == aarch64 ]] && apt_packages+=(swig)
[[ $mode != device ]] && apt_packages+=(sox)
# The tests also start a real Mosquitto broker (Home Assistant over MQTT) and a real PostgreSQL
# server (the companion's shared store), and drive OpenAI's browser sample in headless Chromium
# against the emulator.
[[ $mode == test ]] && apt_packages+=(pulseaudio pulseaudio-utils libasound2-plugins systemd mosquitto postgresql chromium)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# One pinned, hashed set per Python version (scripts/lock.sh): the same packages on every install.
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
lock=$root/requirements/py$pyver.txt
[[ $mode == test ]] && lock=$root/requirements/py$pyver-test.txt
if [[ ! -f $lock ]]; then
    log "error: no dependency set for Python ${pyver:0:1}.${pyver:1} in requirements/ (wakertc supports 3.11 to 3.13)"
    exit 1
fi

if [[ ! -x $venv/bin/python ]]; then
    log "creating virtualenv $venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.wakertc-installed-${lock##*/}"
if [[ ! -f $stamp || $lock -nt $stamp || $root/pyproject.toml -nt $stamp ]]; then
    log "installing ${lock#"$root"/} into $venv (minutes on a Raspberry Pi: PyAudio," \
        "systemd-python and, on ARM with Python 3.13, lgpio are compiled)"
    # --no-deps: the set is complete, and openwakeword's tflite-runtime is left out on purpose
    # (requirements/overrides.txt). PYPI=1 makes lgpio's source build use its bundled C library.
    PYPI=1 "$venv/bin/pip" install --progress-bar off --require-hashes --no-deps -r "$lock"
    # The package itself, built with the set's own setuptools: nothing unpinned is fetched.
    "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root"
    rm -f "$venv"/.wakertc-installed*
    touch "$stamp"
fi

# The official openWakeWord v0.1 models ship inside the wyoming-openwakeword wheel on PyPI;
# openwakeword's own download_models() needs a code host this class of machine cannot reach.
if [[ ! -f $models/hey_jarvis_v0.1.tflite || ! -f $models/embedding_model.tflite ]]; then
    log "fetching openWakeWord models into $models"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$venv/bin/pip" download -q --no-deps --require-hashes -d "$tmp" -r "$root/requirements/models.txt"
    mkdir -p "$models"
    unzip -q -j -o "$tmp"/wyoming_openwakeword-*.whl 'wyoming_openwakeword/models/*.tflite' -d "$models"
fi
log "ready: $venv (models in $models)"
