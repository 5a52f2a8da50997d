# shellcheck shell=bash
# Debian roots made with debootstrap, for scripts/check-arm64.sh and scripts/check-trixie.sh.
# Sourced, not run. As root. A root is built once into a cache and copied for each run, so every
# run installs into a fresh system; apt's and pip's download caches are kept between runs.
#
#   debroot_make BASE SUITE ARCH     build BASE (cached: skipped when BASE/.debroot-ok exists)
#   debroot_fresh BASE WORK CACHE    WORK = a new copy of BASE, with proc, sys, dev, DNS, the CA
#                                    bundle and the caches in CACHE mounted; unmounted on exit
#   debroot_run WORK COMMAND         run COMMAND with bash in WORK, in a clean environment
#   debroot_copy_source SRC DIR      SRC's tracked and new files (as a clone has them, no models)
#   debroot_umount WORK              unmount everything under WORK (also done on exit)
#   debroot_remove WORK              unmount, then delete WORK

DEBROOT_MIRROR=${DEBROOT_MIRROR:-http://deb.debian.org/debian}
DEBROOT_MOUNTED=()

debroot_make() {
    local base=$1 suite=$2 arch=$3
    [[ -f $base/.debroot-ok ]] && return 0
    rm -rf "$base"
    mkdir -p "$(dirname "$base")"
    printf '[debroot] building %s %s in %s\n' "$suite" "$arch" "$base" >&2
    if [[ $arch == "$(dpkg --print-architecture)" ]]; then
        debootstrap --variant=minbase "$suite" "$base" "$DEBROOT_MIRROR" >"$base.log" 2>&1
    else
        # Another architecture: unpack here, then configure inside under qemu-user (binfmt).
        debootstrap --foreign --arch="$arch" --variant=minbase "$suite" "$base" "$DEBROOT_MIRROR" \
            >"$base.log" 2>&1
        chroot "$base" /debootstrap/debootstrap --second-stage >>"$base.log" 2>&1
    fi
    touch "$base/.debroot-ok"
}

debroot_umount() {
    local work=$1 mount
    # Deepest first; lazily, so that a process still inside cannot keep a mount alive.
    awk -v p="$work/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mount; do umount -l "$mount"; done
}

debroot_remove() {
    local work=$1
    debroot_umount "$work"
    # Never delete through a mount: that would reach the host's /dev or a cache.
    if awk -v p="$work/" 'index($2, p) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        printf '[debroot] %s still has mounts; not deleting it\n' "$work" >&2
        return 1
    fi
    rm -rf "$work"
}

_debroot_cleanup() {
    local work
    for work in "${DEBROOT_MOUNTED[@]}"; do debroot_umount "$work"; done
}
trap _debroot_cleanup EXIT
# Interrupted or timed out: exit, so that the EXIT trap unmounts.
trap 'exit 130' INT
trap 'exit 143' TERM

debroot_fresh() {
    local base=$1 work=$2 cache=$3
    debroot_remove "$work"
    cp -a "$base" "$work"
    DEBROOT_MOUNTED+=("$work")
    mount -t proc proc "$work/proc"
    # rslave: unmounting the copy must never propagate back to the host's /dev and /sys.
    local dir
    for dir in dev sys; do
        mount --rbind "/$dir" "$work/$dir"
        mount --make-rslave "$work/$dir"
    done
    mkdir -p "$cache/apt" "$cache/pip" "$work/root/.cache/pip"
    mount --bind "$cache/apt" "$work/var/cache/apt/archives"
    mount --bind "$cache/pip" "$work/root/.cache/pip"
    cp -L /etc/resolv.conf "$work/etc/resolv.conf"
    cp -L /etc/ssl/certs/ca-certificates.crt "$work/tmp/ca.crt"
}

debroot_run() {
    local work=$1
    shift
    # env -i: none of the host's variables (PIP_*, VIRTUAL_ENV, ...) leak into the root.
    chroot "$work" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 PIP_CERT=/tmp/ca.crt DEBIAN_FRONTEND=noninteractive \
        bash -c "$*"
}

debroot_copy_source() {
    local src=$1 dest=$2
    mkdir -p "$dest"
    git -C "$src" ls-files -z --cached --others --exclude-standard | grep -zv '^models' |
        tar -C "$src" --null -T - -cf - | tar -C "$dest" -xf -
}
