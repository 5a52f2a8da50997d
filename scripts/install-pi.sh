#!/usr/bin/env bash
# Install or upgrade wakertc as a system service on Raspberry Pi OS Bookworm or Trixie, or on
# Debian 12 or 13, 64-bit (arm64 or amd64), Python 3.11 to 3.13. As root.
#
#   sudo scripts/install-pi.sh [--token-file FILE|-] [--companion [--api-key-file FILE]]
#
# Creates the `wakertc` user (groups audio, gpio), copies the code to /opt/wakertc/src, builds
# /opt/wakertc/venv and the wake-word models in /var/lib/wakertc/models (via scripts/bootstrap.sh),
# installs /etc/wakertc/wakertc.toml only when absent, and installs and enables wakertc.service.
# Re-running upgrades in place: code, venv and units are replaced; config and secrets are kept.
#
#   --token-file FILE   device token for /etc/wakertc/device-token (0600, owner wakertc); "-" = stdin.
#                       Or set WAKERTC_DEVICE_TOKEN. Without either an existing token is kept.
#   --companion         also install the companion server (user wakertc-companion,
#                       /etc/wakertc/companion.toml, wakertc-companion.service).
#   --api-key-file FILE OpenAI API key for the companion: /etc/wakertc/openai-api-key (root, 0600),
#                       handed to the service by systemd's LoadCredential=.
#   --root DIR          install into a staging tree instead of /: no systemctl, no service start;
#                       users are created in DIR/etc/passwd when it exists, else skipped.
#   --files-only        skip Debian packages, the virtualenv and model downloads (for staging tests).
#
# The machine is checked before anything changes. For tests, WAKERTC_OS_RELEASE names another
# os-release file, WAKERTC_ARCH stands for `dpkg --print-architecture`, PYTHON for python3.
set -euo pipefail

log() { printf '[install] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root="" companion=0 files_only=0 token_file="" api_key_file=""
while (($#)); do
    case $1 in
        --companion) companion=1 ;;
        --files-only) files_only=1 ;;
        --root) root=${2:?--root needs a directory} && shift ;;
        --token-file) token_file=${2:?--token-file needs a file} && shift ;;
        --api-key-file) api_key_file=${2:?--api-key-file needs a file} && shift ;;
        -h | --help) usage && exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[[ $(id -u) -eq 0 ]] || die "run as root (sudo $0 $*)"

# --- the machine, before anything changes ------------------------------------------------------------
check_machine() {
    # The Debian architecture, not `uname -m`: 32-bit Raspberry Pi OS runs a 64-bit kernel on
    # recent boards, so only the userland tells which wheels can run.
    local arch=${WAKERTC_ARCH:-$(dpkg --print-architecture 2>/dev/null || uname -m)}
    case $arch in
        arm64 | aarch64 | amd64 | x86_64) ;;
        armhf | armel | armv7l | armv6l)
            die "this is 32-bit ARM ($arch): wakertc needs a 64-bit (arm64) system such as Raspberry Pi OS (64-bit), because NumPy and eight other dependencies publish no 32-bit ARM wheels and livekit's echo canceller has no 32-bit ARM build" ;;
        *) die "this machine's architecture is $arch: wakertc runs on 64-bit ARM (arm64) and x86-64 (amd64) only" ;;
    esac
    local os_release=${WAKERTC_OS_RELEASE:-/etc/os-release} ID="" ID_LIKE="" VERSION_CODENAME="" PRETTY_NAME=""
    [[ -r $os_release ]] || die "cannot read $os_release: wakertc supports Debian 12 or 13 (Raspberry Pi OS Bookworm or Trixie) only"
    # shellcheck disable=SC1090 # os-release is shell variable assignments by definition
    source <(grep -E '^(ID|ID_LIKE|VERSION_CODENAME|PRETTY_NAME)=' "$os_release")
    if [[ ! " $ID $ID_LIKE " =~ " debian " || ! $VERSION_CODENAME =~ ^(bookworm|trixie)$ ]]; then
        die "this system is ${PRETTY_NAME:-unknown ($os_release)}: wakertc supports Debian 12 or 13 (Raspberry Pi OS Bookworm or Trixie) only"
    fi
    # Debian's own python3 is 3.11 (Bookworm) or 3.13 (Trixie); bootstrap.sh installs it if absent.
    local python=${PYTHON:-python3} version
    if command -v "$python" >/dev/null; then
        version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        [[ $version =~ ^3\.1[123]$ ]] ||
            die "$python is Python $version: wakertc needs Python 3.11 to 3.13 (Debian's python3)"
    fi
    log "machine: $arch, ${PRETTY_NAME:-$VERSION_CODENAME}${version:+, Python $version}"
}
check_machine
[[ -n $api_key_file && $companion -eq 0 ]] && die "--api-key-file only makes sense with --companion"
if [[ -n $root ]]; then
    mkdir -p "$root"
    root=$(cd "$root" && pwd)
    [[ $root == / ]] && root=""
fi
R=$root
opt=$R/opt/wakertc
etc=$R/etc/wakertc
state=$R/var/lib/wakertc
units=$R/etc/systemd/system
live=0
[[ -z $R && -d /run/systemd/system ]] && live=1

# --- secrets first, so a bad token file fails before anything changes ----------------------------
token=""
if [[ -n $token_file ]]; then
    [[ -z ${WAKERTC_DEVICE_TOKEN:-} ]] || die "give the token by --token-file or WAKERTC_DEVICE_TOKEN, not both"
    if [[ $token_file == - ]]; then
        token=$(tr -d '[:space:]')
    else
        [[ -r $token_file ]] || die "cannot read token file $token_file"
        token=$(tr -d '[:space:]' <"$token_file")
    fi
    [[ -n $token ]] || die "token file $token_file is empty"
elif [[ -n ${WAKERTC_DEVICE_TOKEN:-} ]]; then
    token=$(printf '%s' "$WAKERTC_DEVICE_TOKEN" | tr -d '[:space:]')
fi
if [[ -n $api_key_file ]]; then
    [[ -r $api_key_file ]] || die "cannot read API key file $api_key_file"
    [[ -n $(tr -d '[:space:]' <"$api_key_file") ]] || die "API key file $api_key_file is empty"
fi
if ((companion)); then
    [[ -f $src/config/companion.toml ]] || die "missing $src/config/companion.toml in the source tree"
fi
[[ -f $src/config/wakertc.toml ]] || die "missing $src/config/wakertc.toml in the source tree"

# --- users and groups -----------------------------------------------------------------------------
# On a live system ask NSS; in a staging tree read its own files (and let useradd --prefix edit them).
prefix=()
[[ -n $R ]] && prefix=(--prefix "$R")
manage_users=1
if [[ -n $R && ! -f $R/etc/passwd ]]; then
    manage_users=0
    log "no $R/etc/passwd: skipping users and groups; files stay owned by root"
fi
lookup() { # DATABASE NAME -> the entry, or failure
    if [[ -z $R ]]; then
        getent "$1" "$2"
    else
        awk -F: -v name="$2" '$1 == name { print; found = 1 } END { exit !found }' "$R/etc/$1"
    fi
}
uid_of() { if ((manage_users)); then lookup passwd "$1" | cut -d: -f3; else echo 0; fi; }
gid_of() { if ((manage_users)); then lookup group "$1" | cut -d: -f3; else echo 0; fi; }

ensure_group() {
    lookup group "$1" >/dev/null || {
        log "creating group $1"
        groupadd "${prefix[@]}" --system "$1"
    }
}
ensure_user() { # NAME HOME [GROUP,...]
    if ! lookup passwd "$1" >/dev/null; then
        log "creating system user $1"
        useradd "${prefix[@]}" --system --user-group --home-dir "$2" --no-create-home \
            --shell /usr/sbin/nologin --comment "wakertc service" ${3:+--groups "$3"} "$1"
    elif [[ -n ${3:-} ]]; then
        usermod "${prefix[@]}" --append --groups "$3" "$1"
    fi
}
if ((manage_users)); then
    ensure_group audio
    ensure_group gpio # Raspberry Pi OS has it; plain Debian does not
    ensure_user wakertc /var/lib/wakertc audio,gpio
    ((companion)) && ensure_user wakertc-companion /var/lib/wakertc-companion
fi
uid=$(uid_of wakertc) gid=$(gid_of wakertc)

# --- code -----------------------------------------------------------------------------------------
# Built next to the old copy and swapped in, so the venv's editable install never sees a half tree.
mkdir -p "$opt"
chmod 0755 "$opt"
if [[ $src -ef $opt/src ]]; then
    log "running from $opt/src itself: code left as is"
else
    log "copying code to $opt/src"
    rm -rf "$opt/src.new" "$opt/src.old"
    mkdir "$opt/src.new"
    items=()
    for item in pyproject.toml README.md LICENSE daemon scripts config systemd requirements; do
        [[ -e $src/$item ]] && items+=("$item")
    done
    tar -C "$src" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' -cf - "${items[@]}" |
        tar -C "$opt/src.new" --no-same-owner -xf -
    chmod -R u+rwX,go+rX,go-w "$opt/src.new"
    [[ -d $opt/src ]] && mv "$opt/src" "$opt/src.old"
    mv "$opt/src.new" "$opt/src"
    rm -rf "$opt/src.old"
fi

# --- state: models ---------------------------------------------------------------------------------
mkdir -p "$state/models"
for model in "$src"/models/*.tflite; do
    # Bundled with a development checkout: no download needed. Existing files are the user's.
    [[ -f $model && ! -e $state/models/${model##*/} ]] && install -m 0640 "$model" "$state/models/"
done

# --- virtualenv, Debian packages, model download ---------------------------------------------------
if ((files_only)); then
    log "--files-only: skipping Debian packages, virtualenv and model download"
else
    log "installing Debian packages, the Python packages and the models (minutes on a Pi)"
    WAKERTC_VENV=$opt/venv WAKERTC_MODELS=$state/models "$opt/src/scripts/bootstrap.sh" --device
    # The service cannot write bytecode next to root-owned code; compile it once here instead.
    "$opt/venv/bin/python" -m compileall -q "$opt/src/daemon"
    # lgpio, gpiozero's pin driver on Bookworm, comes with the package on ARM (pyproject.toml).
    mkdir -p "$R/usr/local/bin"
    ln -sfn /opt/wakertc/venv/bin/wakertc "$R/usr/local/bin/wakertc"
fi
# StateDirectory= would chown it at start anyway; doing it now lets add-device/check-config run first.
chown -R "$uid:$gid" "$state"
chmod 0750 "$state"

# --- configuration and secrets ---------------------------------------------------------------------
mkdir -p "$etc"
chmod 0755 "$etc"
install -m 0644 -o 0 -g 0 "$src/config/wakertc.toml" "$etc/wakertc.toml.example"
if [[ -e $etc/wakertc.toml ]]; then
    log "keeping $etc/wakertc.toml (the new defaults are in wakertc.toml.example)"
else
    log "installing $etc/wakertc.toml"
    install -m 0640 -o 0 -g "$gid" "$src/config/wakertc.toml" "$etc/wakertc.toml"
fi

write_secret() { # CONTENT FILE OWNER GROUP: 0600 from the first byte, replaced atomically
    local tmp
    tmp=$(mktemp "$2.XXXXXX") # mktemp creates it 0600
    printf '%s\n' "$1" >"$tmp"
    chown "$3:$4" "$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$2"
}
if [[ -n $token ]]; then
    log "writing the device token to $etc/device-token"
    write_secret "$token" "$etc/device-token" "$uid" "$gid"
elif [[ -e $etc/device-token ]]; then
    log "keeping $etc/device-token"
fi

# --- audio devices ---------------------------------------------------------------------------------
# Shows what can capture and play, and gives a config that names no microphone the first device that
# can capture (Pi OS Lite's defaults, HDMI and the headphone jack, cannot). A user's choice is never
# overwritten. WAKERTC_INSTALL_CLI: the wakertc command to run (tests; default: the venv's).
choose_audio_devices() {
    local cli=${WAKERTC_INSTALL_CLI:-$opt/venv/bin/wakertc}
    if [[ ! -x $cli ]]; then
        log "not listing audio devices: no $cli (--files-only)"
        return 0
    fi
    log "audio devices (wakertc devices):"
    "$cli" devices 2>&1 | sed 's/^/[install]   /' >&2 || true
    local said
    if said=$("$cli" devices --write-input "$etc/wakertc.toml" 2>&1); then
        log "$said"
    else
        log "warning: could not choose a microphone: $said"
    fi
}
choose_audio_devices

# --- GPIO access -------------------------------------------------------------------------------------
# gpiozero's driver opens /dev/gpiochip*, root-only on plain Debian. Raspberry Pi OS gives them to the
# gpio group already (raspberrypi-sys-mods: 99-com.rules, SUBSYSTEM=="gpio", GROUP="gpio"); elsewhere
# our rule does the same.
install_gpio_rule() {
    local rule=60-wakertc-gpio.rules existing
    existing=$(grep -lsE '^SUBSYSTEM=="gpio",.*GROUP="gpio"' \
        "$R"/etc/udev/rules.d/*.rules "$R"/usr/lib/udev/rules.d/*.rules "$R"/lib/udev/rules.d/*.rules |
        grep -v "/$rule\$" | head -n 1 || true)
    if [[ -n $existing ]]; then
        log "GPIO: ${existing#"$R"} already gives the gpio group /dev/gpiochip*"
        rm -f "$R/etc/udev/rules.d/$rule"
        return
    fi
    mkdir -p "$R/etc/udev/rules.d"
    install -m 0644 -o 0 -g 0 "$src/systemd/$rule" "$R/etc/udev/rules.d/$rule"
    log "GPIO: installed /etc/udev/rules.d/$rule (group gpio gets /dev/gpiochip*)"
    if ((live)) && command -v udevadm >/dev/null; then
        if ! { udevadm control --reload-rules && udevadm trigger --subsystem-match=gpio; }; then
            log "warning: udevadm could not apply $rule; it applies from the next boot"
        fi
    fi
}
install_gpio_rule

# --- systemd units ---------------------------------------------------------------------------------
enable_unit() {
    install -m 0644 -o 0 -g 0 "$src/systemd/$1" "$units/$1"
    if [[ -z $R ]] && command -v systemctl >/dev/null; then
        ((live)) && systemctl daemon-reload
        systemctl enable --quiet "$1"
    else
        # What `systemctl enable` does for WantedBy=multi-user.target, without touching the host.
        mkdir -p "$units/multi-user.target.wants"
        ln -sfn "/etc/systemd/system/$1" "$units/multi-user.target.wants/$1"
    fi
    log "installed and enabled $1"
}
mkdir -p "$units"
enable_unit wakertc.service

if ((companion)); then
    cuid=$(uid_of wakertc-companion) cgid=$(gid_of wakertc-companion)
    mkdir -p "$R/var/lib/wakertc-companion"
    chown "$cuid:$cgid" "$R/var/lib/wakertc-companion"
    chmod 0700 "$R/var/lib/wakertc-companion"
    install -m 0644 -o 0 -g 0 "$src/config/companion.toml" "$etc/companion.toml.example"
    if [[ -e $etc/companion.toml ]]; then
        log "keeping $etc/companion.toml"
    else
        log "installing $etc/companion.toml"
        install -m 0640 -o 0 -g "$cgid" "$src/config/companion.toml" "$etc/companion.toml"
    fi
    # Earlier examples kept the devices file beside this config, where `add-device` (as root) left
    # it root's alone and the service could not read it: move it into the state directory.
    old_devices=$etc/devices.json new_devices=$R/var/lib/wakertc-companion/devices.json
    if [[ -f $old_devices && ! -e $new_devices ]] && grep -qx 'file = "devices.json"' "$etc/companion.toml"; then
        log "moving $old_devices to $new_devices (the service's state directory)"
        install -m 0600 -o "$cuid" -g "$cgid" "$old_devices" "$new_devices"
        sed -i 's|^file = "devices.json"$|file = "/var/lib/wakertc-companion/devices.json"|' "$etc/companion.toml"
        rm -f "$old_devices"
    fi
    if [[ -n $api_key_file ]]; then
        log "writing the API key to $etc/openai-api-key"
        write_secret "$(tr -d '[:space:]' <"$api_key_file")" "$etc/openai-api-key" 0 0
    fi
    enable_unit wakertc-companion.service
fi

# --- start or restart ------------------------------------------------------------------------------
start_unit() { # UNIT REQUIRED-FILE
    if systemctl is-active --quiet "$1"; then
        log "restarting $1 (upgrade)"
        systemctl restart "$1"
    elif [[ -e $2 ]]; then
        log "starting $1"
        systemctl start "$1"
    else
        log "not starting $1 yet: $2 is missing"
    fi
}
if ((live)); then
    if [[ -x $opt/venv/bin/wakertc ]]; then
        runuser -u wakertc -- "$opt/venv/bin/wakertc" check-config "$etc/wakertc.toml" ||
            log "warning: fix $etc/wakertc.toml, then: systemctl restart wakertc"
    fi
    ((companion)) && start_unit wakertc-companion.service "$etc/openai-api-key"
    start_unit wakertc.service "$etc/device-token"
fi
log "done. Next: edit $etc/wakertc.toml, then: systemctl restart wakertc; journalctl -u wakertc -f"
