#!/usr/bin/env bash
# Install wakertc as a new user would on 64-bit ARM, under emulation, and try it: for Debian 12
# (Raspberry Pi OS Bookworm's base) and Debian 13 (Trixie's), in a fresh arm64 root each time,
# run scripts/install-pi.sh, then `wakertc --help`, `wakertc check-config` and `wakertc detect` on
# "hey jarvis" spoken by espeak-ng (made here: a device has no espeak-ng). As root; slow (qemu-user
# runs everything ~10x slower: no timings from here mean anything on a Pi).
#
#   sudo scripts/check-arm64.sh [SUITE...]      default: bookworm trixie (one after the other)
#
# Prints one line per OS on stdout; the full logs go to $WAKERTC_ARM64_ROOTS/SUITE-run.log.
# Roots are cached in $WAKERTC_ARM64_ROOTS (default /work/arm64-roots): the debootstrapped base
# (SUITE/), the copy each run installs into (SUITE-run/) and apt's and pip's downloads (cache-SUITE/).
# Needs: debootstrap, qemu-user-static, binfmt-support, espeak-ng, sox.
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
roots=${WAKERTC_ARM64_ROOTS:-/work/arm64-roots}
suites=("$@")
((${#suites[@]})) || suites=(bookworm trixie)
# shellcheck source=scripts/debroot.sh
source "$src/scripts/debroot.sh"

[[ $(id -u) -eq 0 ]] || { echo "check-arm64.sh: run as root" >&2 && exit 1; }
for tool in debootstrap qemu-aarch64-static espeak-ng sox; do
    command -v "$tool" >/dev/null || {
        echo "check-arm64.sh: $tool is missing (apt-get install debootstrap qemu-user-static binfmt-support espeak-ng sox)" >&2
        exit 1
    }
done
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64
fi

# The wake phrase, made on the host: 1 s of silence either side, 16 kHz mono.
tmp=$(mktemp -d)
trap '_debroot_cleanup; rm -rf "$tmp"' EXIT
espeak-ng -v en-us -s 140 -w "$tmp/raw.wav" "hey jarvis"
sox "$tmp/raw.wav" -r 16000 -c 1 "$tmp/hey-jarvis.wav" pad 1 1

check() { # SUITE -> one line on stdout
    local suite=$1 base=$roots/$1 work=$roots/$1-run log=$roots/$1-run.log
    local start status line python help check detect
    debroot_make "$base" "$suite" arm64
    debroot_fresh "$base" "$work" "$roots/cache-$suite"
    : >"$log"
    # The source as a clone would have it (tracked and new files, no models: they are downloaded).
    debroot_copy_source "$src" "$work/root/wakertc"
    cp "$tmp/hey-jarvis.wav" "$work/tmp/hey-jarvis.wav"

    printf '[check-arm64] %s: installing (log: %s)\n' "$suite" "$log" >&2
    start=$SECONDS
    if debroot_run "$work" "cd /root/wakertc && WAKERTC_DEVICE_TOKEN=wkt-check-arm64-token scripts/install-pi.sh" >>"$log" 2>&1; then
        status="install ok ($(((SECONDS - start) / 60)) min under qemu)"
    else
        printf '%s arm64: FAILED install-pi.sh (%s)\n' "$suite" "$(grep -a 'error' "$log" | tail -n 1)"
        debroot_umount "$work"
        return 1
    fi
    # Under qemu-user, /proc/cpuinfo describes the x86 host; with the host's /sys beside it,
    # XNNPACK's CPU detection (in ai-edge-litert) takes the emulated arm64 for something it is
    # not and crashes. Without /sys it falls back to the defaults, as it never needs to on a Pi.
    umount -l "$work/sys"
    python=$(debroot_run "$work" "/opt/wakertc/venv/bin/python -c 'import sys; print(sys.version.split()[0])'")
    help=$(debroot_run "$work" "wakertc --help >/dev/null && echo ok || echo FAILED")
    check=$(debroot_run "$work" "runuser -u wakertc -- wakertc check-config /etc/wakertc/wakertc.toml 2>&1" |
        tee -a "$log" | head -n 1) || true
    detect=$(debroot_run "$work" "runuser -u wakertc -- wakertc detect --config /etc/wakertc/wakertc.toml /tmp/hey-jarvis.wav 2>>/tmp/detect.err" |
        tee -a "$log" | head -n 1) || true
    best=$(grep -a 'best score' "$work/tmp/detect.err" | head -n 1) || true
    cat "$work/tmp/detect.err" >>"$log"
    debroot_umount "$work"
    # shellcheck disable=SC1091 # the root's os-release, read in a subshell
    line="$suite arm64 ($(. "$work/etc/os-release" && echo "$PRETTY_NAME"), Python $python): $status"
    line+="; --help $help; check-config: ${check:-no output}; detect: ${detect:-nothing detected}"
    line+=" (${best:-no score: see the log})"
    echo "$line"
    [[ $help == ok && $detect == *'"word": "hey_jarvis"'* ]]
}

failed=0
for suite in "${suites[@]}"; do check "$suite" || failed=1; done
exit $failed
