#!/usr/bin/env bash
# Installs a FedFace edge box on Raspberry Pi OS (64-bit, bookworm; Pi 4/5).
# Idempotent: run it again to repair; upgrades keep config and state.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<EOF2
Usage: install-rpi.sh [options]

Raspberry Pi OS arm64: as install-x86.sh (user, venv with fedface[edge], models,
systemd units, udev rule, logrotate), plus the build tools pip needs for packages
that publish no arm64 wheel (TenSEAL compiles from source there: allow ~30 min on a
Pi 4 the first time, or pass --wheel-dir with wheels built once on another Pi).

Camera: USB (UVC) cameras are V4L2 devices and work as is. The Pi camera modules
(CSI) are driven by libcamera on bookworm; their /dev/video* nodes give raw Bayer
data, so stream them instead, e.g. 'rpicam-vid -t 0 --inline -o tcp://127.0.0.1:8554'
and set FEDFACE_SOURCE accordingly in /etc/fedface/edge.env.

EOF2
    ff_common_usage
}

main() {
    local a
    for a in "$@"; do case "$a" in -h | --help) usage; exit 0 ;; esac; done
    ff_parse_common "$@"
    [ ${#FF_EXTRA_ARGS[@]} -eq 0 ] || ff_die "unknown option ${FF_EXTRA_ARGS[0]} (see --help)"
    ff_require_root
    case "$(uname -m)" in
        aarch64 | arm64) ;;
        armv7l | armhf) ff_die "32-bit Raspberry Pi OS is not supported (no onnxruntime wheels): install the 64-bit OS" ;;
        *) ff_log "warning: this is $(uname -m), not a Raspberry Pi (arm64)" ;;
    esac
    ff_apt_install python3 python3-venv python3-dev ca-certificates v4l-utils \
        build-essential cmake git
    ff_edge_install
    ff_edge_finish rpi
}

main "$@"
