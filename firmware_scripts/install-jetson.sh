#!/usr/bin/env bash
# Installs a FedFace edge box on an NVIDIA Jetson (JetPack 5/6, L4T, arm64), with the
# CUDA / TensorRT execution providers of ONNX Runtime when a Jetson onnxruntime-gpu
# wheel is available locally, CPU otherwise. Idempotent.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ORT_WHEEL=""

usage() {
    cat <<EOF2
Usage: install-jetson.sh [options] [--ort-wheel FILE]

JetPack: as install-x86.sh (user, venv with fedface[edge], models, systemd units,
udev rule, logrotate), then replaces the CPU onnxruntime with NVIDIA's Jetson build
of onnxruntime-gpu if one is found (--ort-wheel FILE, else onnxruntime_gpu-*.whl in
--wheel-dir or /opt/fedface/wheels). PyPI has no CUDA build for arm64: download the
wheel matching your JetPack and Python from NVIDIA's Jetson software pages once and
keep it beside this script. Without one the box runs on the CPU cores.

  --ort-wheel FILE        the Jetson onnxruntime-gpu wheel to install

EOF2
    ff_common_usage
}

find_ort_wheel() {
    local d w
    [ -n "$ORT_WHEEL" ] && { [ -f "$ORT_WHEEL" ] || ff_die "--ort-wheel $ORT_WHEEL not found"; echo "$ORT_WHEEL"; return 0; }
    for d in "$FF_WHEEL_DIR" "$FF_PREFIX/wheels"; do
        if [ -z "$d" ] || [ ! -d "$d" ]; then continue; fi
        for w in "$d"/onnxruntime_gpu-*.whl; do
            [ -f "$w" ] && { echo "$w"; return 0; }
        done
    done
    return 0
}

# Swaps the CPU onnxruntime for the Jetson GPU build (same 'onnxruntime' import name,
# different distribution: both installed at once would overwrite each other's files).
install_ort_gpu() {
    local wheel providers
    wheel="$(find_ort_wheel)"
    if [ -z "$wheel" ]; then
        ff_log "no Jetson onnxruntime-gpu wheel found: ONNX Runtime will use the CPU"
    else
        ff_log "installing $wheel"
        "$FF_VENV/bin/python" -m pip uninstall -y -q onnxruntime || true
        ff_pip install --no-deps --force-reinstall "$wheel"
    fi
    providers="$("$FF_VENV/bin/python" -c 'import onnxruntime as o; print(",".join(o.get_available_providers()))')" \
        || ff_die "onnxruntime does not import in $FF_VENV (wrong wheel for this JetPack/Python?)"
    ff_log "ONNX Runtime providers: $providers"
    # Preference order for the recogniser: TensorRT, CUDA, then CPU; only those present.
    local order=() p
    for p in TensorrtExecutionProvider CUDAExecutionProvider CPUExecutionProvider; do
        case ",$providers," in *",$p,"*) order+=("$p") ;; esac
    done
    JETSON_PROVIDERS="$(IFS=,; echo "${order[*]}")"
}

# The GPU is reached through device nodes that DevicePolicy=closed hides: allow exactly
# the ones this board has (they differ between JetPack 5 /dev/nvhost-* and 6 /dev/nvgpu).
write_gpu_dropin() {
    local dropin="$FF_UNIT_DIR/fedface-edge.service.d" node
    install -d "$dropin"
    {
        echo "# Written by install-jetson.sh: GPU device nodes and CUDA libraries."
        echo "[Service]"
        echo "SupplementaryGroups=video render"
        echo "Environment=LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/lib/aarch64-linux-gnu/tegra"
        echo "Environment=FEDFACE_ORT_PROVIDERS=$JETSON_PROVIDERS"
        # TensorRT builds engines on first use (minutes); caching them in the state dir
        # makes later starts fast.
        echo "Environment=ORT_TENSORRT_ENGINE_CACHE_ENABLE=1 ORT_TENSORRT_CACHE_PATH=$FF_STATE_DIR/trt-cache"
        for node in /dev/nvhost-* /dev/nvmap /dev/nvgpu/igpu0/* /dev/nvidia*; do
            [ -e "$node" ] && echo "DeviceAllow=$node rw"
        done
    } >"$dropin/10-jetson-gpu.conf"
}

main() {
    local a args=()
    for a in "$@"; do case "$a" in -h | --help) usage; exit 0 ;; esac; done
    while [ $# -gt 0 ]; do
        case "$1" in
            --ort-wheel) ORT_WHEEL="${2:?--ort-wheel needs a file}"; shift 2 ;;
            *) args+=("$1"); shift ;;
        esac
    done
    ff_parse_common "${args[@]}"
    [ ${#FF_EXTRA_ARGS[@]} -eq 0 ] || ff_die "unknown option ${FF_EXTRA_ARGS[0]} (see --help)"
    ff_require_root
    if [ ! -f /etc/nv_tegra_release ]; then
        ff_log "warning: /etc/nv_tegra_release missing: this does not look like a Jetson (L4T)"
    fi
    ff_apt_install python3 python3-venv python3-dev ca-certificates v4l-utils \
        build-essential cmake git
    ff_edge_install
    JETSON_PROVIDERS=CPUExecutionProvider
    install_ort_gpu
    ff_install_units fedface-edge.service fedface-kiosk.service fedface-join.service
    write_gpu_dropin
    ff_edge_finish jetson
}

main "$@"
