#!/usr/bin/env bash
# Install everything wakertc needs to run (and, with --test, to be tested) on Debian 12 /
# Raspberry Pi OS Bookworm. Idempotent: each step is skipped when its result is already there.
#
#   scripts/bootstrap.sh           Debian packages, .venv with wakertc, wake-word models
#   scripts/bootstrap.sh --test    the same plus the test and lint tools
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${WAKERTC_VENV:-$root/.venv}
models=${WAKERTC_MODELS:-$root/models}
python=${PYTHON:-python3}
extras=""
[[ ${1:-} == --test ]] && extras="[test]"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

sudo_() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Build headers for PyAudio and systemd-python; espeak-ng and sox make the demo's speech;
# PulseAudio is the real-time audio server the end-to-end tests run against.
apt_packages=(
    python3-venv python3-dev gcc pkg-config portaudio19-dev libsystemd-dev
    espeak-ng sox unzip
)
[[ -n $extras ]] && apt_packages+=(pulseaudio pulseaudio-utils libasound2-plugins systemd)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ ! -x $venv/bin/python ]]; then
    log "creating virtualenv $venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.wakertc-installed$extras"
if [[ ! -f $stamp || $root/pyproject.toml -nt $stamp ]]; then
    log "installing wakertc$extras into $venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$root$extras"
    touch "$stamp"
fi

# The official openWakeWord v0.1 models ship inside the wyoming-openwakeword wheel on PyPI;
# openwakeword's own download_models() needs a code host this class of machine cannot reach.
if [[ ! -f $models/hey_jarvis_v0.1.tflite || ! -f $models/embedding_model.tflite ]]; then
    log "fetching openWakeWord models into $models"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$venv/bin/pip" download -q --no-deps -d "$tmp" wyoming-openwakeword==1.8.2
    mkdir -p "$models"
    unzip -q -j -o "$tmp"/wyoming_openwakeword-*.whl 'wyoming_openwakeword/models/*.tflite' -d "$models"
fi
log "ready: $venv (models in $models)"
