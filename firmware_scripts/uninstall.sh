#!/usr/bin/env bash
# Removes FedFace: services, units, udev rule, logrotate config, Mosquitto drop-in and
# the venv. Keeps config, state (gallery, models, keys, aggregator rounds), logs and
# the federation CA unless --purge is given. Idempotent.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

PURGE=0

usage() {
    cat <<EOF2
Usage: uninstall.sh [--prefix DIR] [--no-system] [--purge]

  --prefix DIR     the install prefix (default /opt/fedface)
  --no-system      the install was made with --no-system (everything under DIR)
  --purge          ALSO delete config (/etc/fedface, incl. the federation CA and TLS
                   keys), state (/var/lib/fedface: gallery = personal data, models,
                   device keys, aggregator rounds), logs and the 'fedface' user.
                   Without it they stay, and a later install picks them up again.

EOF2
}

remove() {
    local p
    for p in "$@"; do
        if [ -e "$p" ] || [ -L "$p" ]; then
            ff_log "removing $p"
            rm -rf -- "$p"
        fi
    done
}

main() {
    local a args=()
    for a in "$@"; do case "$a" in -h | --help) usage; exit 0 ;; esac; done
    for a in "$@"; do
        case "$a" in
            --purge) PURGE=1 ;;
            *) args+=("$a") ;;
        esac
    done
    ff_parse_common "${args[@]}"
    [ ${#FF_EXTRA_ARGS[@]} -eq 0 ] || ff_die "unknown option ${FF_EXTRA_ARGS[0]} (see --help)"
    ff_require_root
    local units=(fedface-edge.service fedface-kiosk.service fedface-join.service fedface-aggregator.service
        fedface-crl-renew.timer fedface-crl-renew.service)
    if ff_system && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now "${units[@]}" 2>/dev/null || true
    fi
    local u
    for u in "${units[@]}"; do remove "$FF_UNIT_DIR/$u" "$FF_UNIT_DIR/$u.d"; done
    remove "$FF_UDEV_DIR/99-fedface-camera.rules" "$FF_LOGROTATE_DIR/fedface" \
        "$FF_MOSQUITTO_CONFD/fedface.conf"
    if ff_system && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload || true
        systemctl try-restart mosquitto.service 2>/dev/null || true
    fi
    remove "$FF_VENV" "$FF_PREFIX/share/doc/fedface" "$FF_PREFIX"/installed-*.env
    if [ "$PURGE" -eq 1 ]; then
        remove "$FF_CONF_DIR" "$FF_STATE_DIR" "$FF_LOG_DIR" "$FF_MOSQUITTO_DIR"
        if ff_system && getent passwd "$FF_USER" >/dev/null; then
            ff_log "removing user $FF_USER"
            userdel "$FF_USER" || true
        fi
    else
        ff_log "kept config $FF_CONF_DIR, state $FF_STATE_DIR, logs $FF_LOG_DIR (--purge removes them)"
    fi
    # The prefix itself only if nothing is left in it (a --no-system install keeps its
    # state under the prefix).
    if [ -d "$FF_PREFIX" ]; then
        find "$FF_PREFIX" -depth -type d -empty -delete 2>/dev/null || true
    fi
    ff_log "uninstalled"
    if [ "$PURGE" -eq 1 ]; then  # its keys are gone from here, not from the federation
        ff_log "a box that was registered: ask the operator to revoke it (fedface-aggregator" \
            "devices revoke <device id>) and rotate the key (docs/operations.md)"
    fi
}

main "$@"
