#!/usr/bin/env bash
# The fast part of the test suite on Debian 13 (Trixie, Python 3.13), in a fresh amd64 root made
# with debootstrap: what Raspberry Pi OS users flash today, where Python 3.13 and the
# requirements/py313-test.txt set differ from this Debian 12 machine. Called by .ci/run. As root.
#
#   sudo scripts/check-trixie.sh [PYTEST ARGS...]    default: the FAST list below
#
# The root is installed from scratch each run by scripts/bootstrap.sh --test, as on a new machine;
# the debootstrapped base and apt's and pip's downloads are cached in $WAKERTC_TRIXIE_ROOTS
# (default /var/tmp/wakertc-trixie). Every mount is undone on exit, failed, interrupted or not.
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
roots=${WAKERTC_TRIXIE_ROOTS:-/var/tmp/wakertc-trixie}
models=${WAKERTC_MODELS:-$src/models}
# shellcheck source=scripts/debroot.sh
source "$src/scripts/debroot.sh"

# The fast part: each file is quick and exercises what Python 3.13 and its set change (the
# compiled packages, NumPy 2, ai-edge-litert, aiortc/av, PyAudio, systemd-python), and one real
# chain test runs wake word -> WebRTC -> emulator -> speaker end to end. The slow and
# timing-heavy files (soak, memory, benches, fault matrices) stay on the main run.
FAST=(
    tests/test_config.py                 # config parsing and its errors
    tests/test_wakeword.py               # detection on the real models; parity with stock openwakeword
    tests/test_tflite.py                 # wakertc's interpreter against ai-edge-litert, op by op
    tests/test_emulator_http.py          # the emulator's HTTP API (aiohttp, aiortc peers)
    tests/test_companion_server.py       # key minting, the companion's HTTP server
    tests/test_keys.py                   # key renewal
    tests/test_notify.py                 # systemd-python's sd_notify (built from source on 3.13)
    tests/test_leds.py                   # gpiozero with the mock pin factory
    tests/test_install.py                # install-pi.sh, including its machine check, on Debian 13
    tests/test_requirements.py           # the pinned sets; bootstrap.sh's choice of set and packages
    tests/test_units.py                  # systemd 257's systemd-analyze on our units
    # One chain: a wake phrase through PulseAudio and PyAudio into the daemon, a real WebRTC call
    # to the emulator, the reply back out of the speaker.
    tests/test_e2e_pulse.py::test_wake_phrase_and_question_come_back_from_the_speaker
)

[[ $(id -u) -eq 0 ]] || { echo "check-trixie.sh: run as root" >&2 && exit 1; }
command -v debootstrap >/dev/null || {
    echo "check-trixie.sh: debootstrap is missing (apt-get install debootstrap)" >&2
    exit 1
}
log() { printf '[check-trixie] %s\n' "$*" >&2; }

start=$SECONDS
work=$roots/trixie-run
debroot_make "$roots/trixie" trixie amd64
debroot_fresh "$roots/trixie" "$work" "$roots/cache"
debroot_copy_source "$src" "$work/srv/wakertc"
if [[ -f $models/hey_jarvis_v0.1.tflite ]]; then
    mkdir -p "$work/srv/wakertc/models"
    cp "$models"/*.tflite "$work/srv/wakertc/models/" # else bootstrap.sh downloads them
fi
log "root ready in $((SECONDS - start)) s; installing (scripts/bootstrap.sh --test)"
debroot_run "$work" "cd /srv/wakertc && scripts/bootstrap.sh --test" >"$roots/install.log" 2>&1 || {
    tail -n 30 "$roots/install.log" >&2
    log "FAILED: scripts/bootstrap.sh --test in the Debian 13 root (log: $roots/install.log)"
    exit 1
}
log "installed in $((SECONDS - start)) s: $(debroot_run "$work" "/srv/wakertc/.venv/bin/python -VV" | head -n 1)"

args=("$@")
((${#args[@]})) || args=("${FAST[@]}")
tests_start=$SECONDS
status=0
debroot_run "$work" "cd /srv/wakertc && .venv/bin/python -m pytest -q -p no:cacheprovider ${args[*]}" ||
    status=$?
log "pytest in Debian 13 took $((SECONDS - tests_start)) s; all of check-trixie.sh $((SECONDS - start)) s"
# A failed root stays for a look inside (chroot $work); a good one is 2 GB of nothing.
((status)) || debroot_remove "$work"
exit $status
