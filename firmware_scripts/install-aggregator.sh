#!/usr/bin/env bash
# Installs the FedFace aggregator host: the base package (no edge extra: no ONNX
# Runtime, OpenCV or torch), fedface-aggregator.service, and Mosquitto with the
# federation's TLS-only listener, client certificates, CRL and per-device ACL.
# Idempotent: an existing CA, broker certificate and config are kept.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

FED=""
HOSTS=()
PORT=""
BIND=""

usage() {
    cat <<EOF2
Usage: install-aggregator.sh --fed ID [--broker-host NAME ...] [options]

  --fed ID                federation id (needed the first time: creates the CA)
  --broker-host NAME      DNS name or IP the boxes use to reach the broker
                          (repeatable; default: \$(hostname -f) and localhost)
  --port N                broker TLS port (default 8883)
  --bind ADDR             broker bind address (default: all interfaces)

Creates (first run only) the federation CA in /etc/fedface/pki/ca (root, 0700; move
ca.key offline if you prefer, see docs/operations.md), the broker certificate, the
aggregator's client certificate (/etc/fedface/tls, CN=aggregator), the Mosquitto
drop-in /etc/mosquitto/conf.d/fedface.conf with its files in /etc/mosquitto/fedface,
and a daily timer that re-signs the CRL before it expires.
Then: fedface-aggregator init ... (docs/operations.md) and systemctl start fedface-aggregator.

EOF2
    ff_common_usage
}

pki() { "$FF_VENV/bin/python" -m aggregator.cli.pki "$@"; }

setup_pki() {
    local ca="$FF_CONF_DIR/pki/ca" srv="$FF_CONF_DIR/pki/broker" tls="$FF_CONF_DIR/tls"
    ff_dir 0700 root root "$FF_CONF_DIR/pki"
    if [ ! -f "$ca/ca.key" ]; then
        [ -n "$FED" ] || ff_die "no federation CA yet: pass --fed ID to create it"
        pki ca-create --ca-dir "$ca" --fed "$FED"
    else
        ff_log "keeping existing CA $ca"
    fi
    if [ ! -f "$srv/server.crt" ]; then
        local host_args=() h
        if [ ${#HOSTS[@]} -eq 0 ]; then HOSTS=("$(hostname -f 2>/dev/null || hostname)" localhost 127.0.0.1); fi
        for h in "${HOSTS[@]}"; do host_args+=(--host "$h"); done
        pki server-cert --ca-dir "$ca" --out "$srv" "${host_args[@]}"
    fi
    ff_dir 0750 root "$FF_USER" "$tls"
    if [ ! -f "$tls/aggregator.crt" ]; then
        pki client-cert --ca-dir "$ca" --out "$tls"
    fi
    install -m 0644 "$ca/ca.crt" "$tls/ca.crt"
    # The aggregator service (user fedface) reads its key; nobody else.
    if ff_system; then chown "$FF_USER:$FF_USER" "$tls/aggregator.key"; fi
    chmod 0600 "$tls/aggregator.key"
}

setup_mosquitto() {
    local ca="$FF_CONF_DIR/pki/ca" srv="$FF_CONF_DIR/pki/broker" args=()
    ff_apt_install mosquitto
    install -d "$FF_MOSQUITTO_DIR" "$FF_MOSQUITTO_CONFD"
    args=(--ca-dir "$ca" --server-dir "$srv" --out "$FF_MOSQUITTO_DIR" --port "$PORT")
    [ -n "$BIND" ] && args+=(--bind "$BIND")
    # the dynamic-security plugin (revoke cuts a live session) rewrites its state file:
    # keep it where the broker user may write, not among the files it must not change
    ff_system && args+=(--dynsec-file /var/lib/mosquitto/fedface-dynamic-security.json)
    pki broker-config "${args[@]}"
    install -m 0644 "$FF_MOSQUITTO_DIR/fedface.conf" "$FF_MOSQUITTO_CONFD/fedface.conf"
    if ff_system; then
        # Mosquitto drops root before reading its key, the ACL and (on reload) the CRL.
        chown root:mosquitto "$FF_MOSQUITTO_DIR"
        chmod 0750 "$FF_MOSQUITTO_DIR"
        chown mosquitto:mosquitto "$FF_MOSQUITTO_DIR/server.key"
        if [ -f /var/lib/mosquitto/fedface-dynamic-security.json ]; then
            chown mosquitto:mosquitto /var/lib/mosquitto/fedface-dynamic-security.json
        fi
        chmod 0600 "$FF_MOSQUITTO_DIR/server.key"
    fi
}

# aggregator.env points the service at the port chosen here (--port), which ff_render's
# path placeholders do not know.
render_aggregator_env() {
    local tmp
    tmp="$(mktemp)"
    sed "s|@BROKER_PORT@|$PORT|g" "$FF_SCRIPTS_DIR/config/aggregator.env.in" >"$tmp"
    ff_render_config_once "$tmp" "$FF_CONF_DIR/aggregator.env"
    rm -f "$tmp"
}

main() {
    local a args=()
    for a in "$@"; do case "$a" in -h | --help) usage; exit 0 ;; esac; done
    while [ $# -gt 0 ]; do
        case "$1" in
            --fed) FED="${2:?--fed needs an id}"; shift 2 ;;
            --broker-host) HOSTS+=("${2:?--broker-host needs a name}"); shift 2 ;;
            --port) PORT="${2:?--port needs a number}"; shift 2 ;;
            --bind) BIND="${2:?--bind needs an address}"; shift 2 ;;
            *) args+=("$1"); shift ;;
        esac
    done
    ff_parse_common "${args[@]}"
    [ ${#FF_EXTRA_ARGS[@]} -eq 0 ] || ff_die "unknown option ${FF_EXTRA_ARGS[0]} (see --help)"
    # A re-run (repair, upgrade.sh) keeps the recorded broker port and bind address.
    local record="$FF_PREFIX/installed-aggregator.env"
    if [ -f "$record" ]; then
        [ -n "$PORT" ] || PORT="$(sed -n 's/^FF_BROKER_PORT=//p' "$record" | tail -n 1)"
        [ -n "$BIND" ] || BIND="$(sed -n 's/^FF_BROKER_BIND=//p' "$record" | tail -n 1)"
    fi
    [ -n "$PORT" ] || PORT=8883
    case "$PORT" in *[!0-9]*) ff_die "--port must be a number" ;; esac
    ff_require_root
    ff_apt_install python3 python3-venv ca-certificates
    ff_ensure_user
    ff_make_dirs
    ff_dir 0700 "$FF_USER" "$FF_USER" "$FF_STATE_DIR/aggregator"
    ff_create_venv
    ff_install_package ""
    ff_install_docs
    setup_pki
    setup_mosquitto
    render_aggregator_env
    ff_install_units fedface-aggregator.service fedface-crl-renew.service fedface-crl-renew.timer
    ff_record_install aggregator aggregator
    printf 'FF_BROKER_PORT=%s\nFF_BROKER_BIND=%s\n' "$PORT" "$BIND" >>"$FF_PREFIX/installed-aggregator.env"
    if ff_system && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload
        systemctl enable mosquitto.service fedface-crl-renew.timer fedface-aggregator.service
        if [ "$FF_NO_START" -eq 0 ]; then
            systemctl restart mosquitto.service
            systemctl start fedface-crl-renew.timer
            # The aggregator needs `fedface-aggregator init` (the federation's public
            # CKKS context) first; start it only once that state exists.
            if [ -f "$FF_STATE_DIR/aggregator/config.json" ]; then
                systemctl restart fedface-aggregator.service
            fi
        fi
    fi
    ff_log "aggregator installed; broker config $FF_MOSQUITTO_CONFD/fedface.conf (port $PORT)"
    if [ ! -f "$FF_STATE_DIR/aggregator/config.json" ]; then
        ff_log "next: sudo -u $FF_USER $FF_VENV/bin/fedface-aggregator init --state $FF_STATE_DIR/aggregator --fed ${FED:-ID} --public-context FILE; then systemctl start fedface-aggregator"
    fi
}

main "$@"
