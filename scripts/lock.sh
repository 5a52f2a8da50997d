#!/usr/bin/env bash
# Refresh the pinned, hashed dependency sets in requirements/ from pyproject.toml's ranges.
#
#   scripts/lock.sh             re-resolve, keeping the current pins wherever the ranges allow
#   scripts/lock.sh --upgrade   move every pin to the newest release the ranges allow
#
# One set per supported Python, each valid on aarch64 and x86_64 (uv's universal resolution,
# limited by [tool.uv] environments in pyproject.toml):
#   requirements/py311.txt, py311-test.txt   Debian 12 / Raspberry Pi OS Bookworm (Python 3.11)
#   requirements/py313.txt, py313-test.txt   Debian 13 / Raspberry Pi OS Trixie (Python 3.13)
# The test sets are the runtime sets (same pins) plus the test and lint tools.
# Then, for each Python and machine, it checks that every pinned package has a wheel that runs on
# glibc 2.36 (Bookworm's; Trixie has 2.41), except the few that are built from source against
# Debian's -dev packages (SOURCE_BUILT below). A package that fails this check fails the script.
# Needs network access to PyPI; uses `uv` from PATH, or installs a pinned one in a temporary venv.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
UV_VERSION=0.13.9
PYTHONS=(3.11 3.12 3.13)
MACHINES=(aarch64 x86_64)
GLIBC=2_36
# Built from source on install (scripts/bootstrap.sh installs what they need): PyAudio against
# portaudio19-dev, systemd-python against libsystemd-dev, lgpio (aarch64 only; no cp313 wheel)
# with swig from its bundled C library.
SOURCE_BUILT=(pyaudio systemd-python lgpio)

upgrade=()
case ${1:-} in
    "") ;;
    --upgrade) upgrade=(--upgrade) ;;
    *) echo "usage: $0 [--upgrade]" >&2 && exit 2 ;;
esac

log() { printf '[lock] %s\n' "$*" >&2; }

uv=$(command -v uv || true)
if [[ -z $uv ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    log "installing uv $UV_VERSION into a temporary virtualenv"
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" install -q "uv==$UV_VERSION"
    uv=$tmp/venv/bin/uv
fi

compile=(
    "$uv" pip compile pyproject.toml --quiet --universal --generate-hashes
    --override requirements/overrides.txt --custom-compile-command scripts/lock.sh
)
for py in "${PYTHONS[@]}"; do
    tag=py${py/./}
    log "resolving for Python $py: requirements/$tag.txt, requirements/$tag-test.txt"
    "${compile[@]}" "${upgrade[@]}" --python-version "$py" -o "requirements/$tag.txt"
    # Constrained by the runtime set, so tests run on exactly the pins a device installs.
    "${compile[@]}" "${upgrade[@]}" --python-version "$py" --extra test \
        --constraint "requirements/$tag.txt" -o "requirements/$tag-test.txt"
done

source_ok=()
for pkg in "${SOURCE_BUILT[@]}"; do source_ok+=(--no-binary "$pkg"); done
failed=0
for py in "${PYTHONS[@]}"; do
    for machine in "${MACHINES[@]}"; do
        tag=py${py/./}
        # Re-resolving with the lock as constraints and wheels only proves the pinned versions
        # have wheels for this interpreter, machine and glibc.
        if "$uv" pip compile pyproject.toml --quiet --extra test -o /dev/null \
            --override requirements/overrides.txt --constraint "requirements/$tag-test.txt" \
            --python-version "$py" --python-platform "$machine-manylinux_$GLIBC" \
            --only-binary :all: "${source_ok[@]}"; then
            log "ok: every pin of $tag-test.txt has a wheel for cp${py/./} $machine glibc ${GLIBC/_/.}"
        else
            log "FAILED: some pin of $tag-test.txt has no wheel for cp${py/./} $machine glibc ${GLIBC/_/.}"
            failed=1
        fi
    done
done
exit $failed
