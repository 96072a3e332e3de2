#!/usr/bin/env bash
# The command a device machine runs: install the carried wheels, lay out exlx_autocfg, run gpu_validate.py.
#
#   bash bench/device_run.sh [gpu_validate.py options]      (OUT must name the results folder)
#
# The device machine has torch with CUDA, nvcc, ninja and safetensors but no network: exllamav2 and any
# other missing package travel as wheels in .whl/ (docs/gpu-validation.md lists them). Everything this
# prints also lands in $OUT/run.log; the script writes validate.json, table.txt, facts.json, plans.json
# and build.log beside it (6 files: the device tool returns at most 8).
#
# Knobs (environment): EXLX_PYTHON (python3), EXLX_WHL_DIR (.whl), EXLX_SITE (/tmp/exlx-site),
# EXLX_WORK (/tmp/exlx-validate-work: the test model, kept for a warm rerun), EXLX_VALIDATE_LIMIT
# (450 s: hard stop for the script, under the device call's timeout_s).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
if [ -z "${OUT:-}" ]; then
    echo "device_run.sh: OUT is not set (the folder the results go to)" >&2
    exit 2
fi
PY=${EXLX_PYTHON:-python3}
WHL=${EXLX_WHL_DIR:-.whl}
SITE=${EXLX_SITE:-/tmp/exlx-site}
WORK=${EXLX_WORK:-/tmp/exlx-validate-work}
LIMIT=${EXLX_VALIDATE_LIMIT:-450}
mkdir -p "$OUT"

run() {
    echo "== device_run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $($PY --version 2>&1)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,memory.total,memory.used,driver_version \
            --format=csv,noheader 2>&1
    else
        echo "nvidia-smi: not available"
    fi

    rm -rf "$SITE" && mkdir -p "$SITE" || return 2
    shopt -s nullglob
    local wheels=("$WHL"/*.whl)
    if ((${#wheels[@]})); then
        # --no-deps: the machine cannot fetch anything; every needed wheel is carried (one version each).
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${wheels[@]}" || { echo "device_run.sh: installing $WHL/*.whl failed"; return 3; }
    fi
    echo "carried wheels: ${#wheels[@]} installed into $SITE:" \
        "$(cd "$SITE" && ls -d ./*.dist-info 2>/dev/null | sed 's|^\./||; s|\.dist-info$||' | tr '\n' ' ')"

    # exlx_autocfg as its wheel lays it out (probe/ and profiles/ become subpackages), built from this tree.
    cp -r exlx_autocfg "$SITE/" && cp -r probe "$SITE/exlx_autocfg/probe" \
        && cp -r profiles "$SITE/exlx_autocfg/profiles" || { echo "device_run.sh: copying the package failed"; return 3; }

    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1
    # Inside the tree (build/ is git-ignored): a warm rerun on the same machine reuses the JIT build.
    export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build/torch_extensions}
    mkdir -p "$TORCH_EXTENSIONS_DIR"

    timeout -k 15 "$LIMIT" "$PY" bench/gpu_validate.py --out "$OUT" --work "$WORK" \
        --deadline "$((LIMIT - 50))" "$@"
    local rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "device_run.sh: gpu_validate.py passed its ${LIMIT} s limit; partial results in $OUT/validate.json"
    fi
    echo "== device_run.sh exit $rc"
    return "$rc"
}

run "$@" 2>&1 | tee -a "$OUT/run.log"
exit "${PIPESTATUS[0]}"
