#!/usr/bin/env bash
# Upgrades an installed FedFace (edge box and/or aggregator) in place from a new
# source tree or wheel: stops the services, re-runs the installer it was installed
# with (same platform and options), which keeps config, state, keys and certificates,
# then starts them again. Idempotent.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<EOF2
Usage: upgrade.sh [--prefix DIR] [--source PATH] [other install options]

Reads DIR/installed-edge.env and/or DIR/installed-aggregator.env (written at install)
and re-runs install-<platform>.sh / install-aggregator.sh with the recorded options
(--no-system, --with-train, --system-site-packages) plus the options given here.
Config files in /etc/fedface are never overwritten; the gallery, models, device keys
and the aggregator's state stay. It prints the release installed before and after
(fedface-edge --version: version and build) and warns when the build did not change.
Check afterwards: journalctl -u fedface-edge.

EOF2
    ff_common_usage
}

# Reads one recorded install (KEY=VALUE lines written by ff_record_install).
recorded() {
    local file="$1" key="$2"
    sed -n "s/^$key=//p" "$file" | tail -n 1
}

# The release an installed CLI says it is (fedface-edge --version), or that it cannot.
release_of() {
    "$1/venv/bin/fedface-$2" --version 2>/dev/null || echo "an unknown release"
}

main() {
    local a prefix=/opt/fedface rest=() i
    for a in "$@"; do case "$a" in -h | --help) usage; exit 0 ;; esac; done
    i=1
    while [ $i -le $# ]; do
        if [ "${!i}" = "--prefix" ]; then
            local j=$((i + 1))
            prefix="${!j:?--prefix needs a directory}"
        fi
        i=$((i + 1))
    done
    rest=("$@")
    local found=0 kind file platform flags units=() active=() u after
    # what ran before any installer: an aggregator and a box in one prefix share a venv
    local -A was=()
    for kind in aggregator edge; do
        [ -f "$prefix/installed-$kind.env" ] && was[$kind]="$(release_of "$prefix" "$kind")"
    done
    for kind in aggregator edge; do
        file="$prefix/installed-$kind.env"
        [ -f "$file" ] || continue
        found=1
        platform="$(recorded "$file" FF_PLATFORM)"
        flags=(--prefix "$prefix")
        [ "$(recorded "$file" FF_NO_SYSTEM)" = 1 ] && flags+=(--no-system)
        [ "$(recorded "$file" FF_WITH_TRAIN)" = 1 ] && flags+=(--with-train)
        [ "$(recorded "$file" FF_SYSTEM_SITE)" = 1 ] && flags+=(--system-site-packages)
        if [ "$(recorded "$file" FF_NO_SYSTEM)" != 1 ] && command -v systemctl >/dev/null 2>&1; then
            if [ "$kind" = edge ]; then units=(fedface-edge.service fedface-kiosk.service fedface-join.service); else units=(fedface-aggregator.service); fi
            # the installer restarts only the services it enables itself: remember what
            # ran (the kiosk, the federation client) and start it again afterwards
            active=()
            for u in "${units[@]}"; do
                if systemctl is-active --quiet "$u"; then active+=("$u"); fi
            done
            ff_log "stopping ${units[*]}"
            systemctl stop "${units[@]}" || true
        fi
        [ -x "$FF_SCRIPTS_DIR/install-$platform.sh" ] || ff_die "unknown recorded platform '$platform' in $file"
        ff_log "upgrading $kind ($platform)"
        ff_log "installed: ${was[$kind]}"
        "$FF_SCRIPTS_DIR/install-$platform.sh" "${flags[@]}" "${rest[@]}"
        after="$(release_of "$prefix" "$kind")"
        ff_log "now: $after"
        # an upgrade that changed nothing looked like one that worked (helper-40)
        [ "$after" != "${was[$kind]}" ] || ff_log "WARNING: $kind: the same build as before (was --source the new release?)"
        if [ ${#active[@]} -gt 0 ]; then
            ff_log "starting again ${active[*]}"
            systemctl start "${active[@]}" || ff_log "could not start ${active[*]}: see systemctl status"
        fi
        active=()
    done
    [ "$found" -eq 1 ] || ff_die "no FedFace install recorded in $prefix (installed-edge.env / installed-aggregator.env)"
}

main "$@"
