#!/usr/bin/env bash
# Installs a FedFace edge box on x86-64 Debian/Ubuntu (also: an x86 machine emulating
# a box). Idempotent: run it again to repair; upgrades keep config and state.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<EOF2
Usage: install-x86.sh [options]

Installs the inference-only edge box: system user 'fedface', a venv with
fedface[edge] (ONNX Runtime CPU, OpenCV headless), the pinned models, config in
/etc/fedface, state in /var/lib/fedface, fedface-edge/fedface-kiosk systemd units,
the camera udev rule and logrotate config. Then: provision the box (docs/operations.md).

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
        x86_64 | amd64) ;;
        *) ff_log "warning: this is $(uname -m), not x86-64: see install-rpi.sh / install-jetson.sh" ;;
    esac
    ff_apt_install python3 python3-venv ca-certificates v4l-utils
    ff_edge_install
    ff_edge_finish x86
}

main "$@"
