#!/usr/bin/env bash
# `make gpu-check`: every GPU figure of docs/benchmarks.md in one run, each step capped so
# the whole stays under 8 minutes. For a machine with an NVIDIA GPU and a Python (python3,
# or $PYTHON) holding torch with CUDA, numba and numba-cuda, onnx, onnxruntime,
# opencv-python-headless, msgpack, prometheus-client, safetensors and pytest: mfvan is
# installed there with --no-deps (into /tmp/mfvan-site, nothing else touched), beside the
# wheels of what that Python lacks, carried in .whl/ (docs/benchmarks.md, "GPU", says which
# and how). Everything it writes goes under OUT: the first argument that is not a flag, or
# $MFVAN_GPU_OUT, default gpu-check/.
#
#   make gpu-check                          # on the GPU machine
#   make gpu-check GPU_CHECK_ARGS=--cpu     # a dry run here: same steps on the CPU (the gpu
#                                           # tests skip; the batched flow under Numba's CUDA
#                                           # simulator on tiny crops)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=cuda
OUT=${MFVAN_GPU_OUT:-gpu-check}
for arg in "$@"; do
    case "$arg" in
        --cpu) DEVICE=cpu ;;
        -*) echo "gpu-check: unknown flag $arg" >&2; exit 2 ;;
        *) OUT=$arg ;;
    esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run it capped, its output in OUT/NAME.txt
    local name=$1 limit=$2 started rc
    shift 2
    started=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    printf '%-18s exit %3d  %4ds  (cap %ss)\n' "$name" "$rc" "$(( $(date +%s) - started ))" "$limit" \
        | tee -a "$SUMMARY"
}

SITE=/tmp/mfvan-site
rm -rf "$SITE"
if [ "$DEVICE" = cuda ] && compgen -G ".whl/*.whl" > /dev/null; then  # for that Python
    step install-wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
# this checkout, built there without the network; if that cannot be done (an old
# setuptools), the mfvan wheel carried in .whl/ (`make gpu-wheels`) stays installed
step install-mfvan 120 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
    --no-compile --upgrade --target "$SITE" .
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$PATH"
MFVAN=("$PY" -m mfvan)

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c 'import torch, numba, platform; print("python", platform.python_version(), "torch", torch.__version__, "numba", numba.__version__); print("cuda:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")'
    nproc
} > "$OUT/machine.txt" 2>&1

if [ "$DEVICE" = cuda ]; then
    # CUDA parity (FP32 1e-4, FP16/BF16 2e-2, CUDA graphs at 1/8/32, torch.compile, the AOT
    # package, the batched flow) and the figures, each against eager CUDA FP32 in the same run
    step pytest-gpu 200 "$PY" -m pytest -m gpu tests/deploy/test_backends.py tests/kernels/test_flow.py -q -rs -p no:cacheprovider \
        --junitxml="$OUT/pytest-gpu.xml"
    step bench-demo 170 "${MFVAN[@]}" bench backends --config demo --device cuda \
        --batches 1 8 32 64 128 256 --runs 50
    step bench-paper 70 "${MFVAN[@]}" bench backends --config paper --device cuda \
        --batches 1 8 --runs 30 --rows 'eager|fp16|bf16'
    step bench-flow 50 "${MFVAN[@]}" bench flow --device cuda --streams 1 16 64 256 --runs 20
else
    step pytest-gpu 120 "$PY" -m pytest -m gpu tests/deploy/test_backends.py tests/kernels/test_flow.py -q -rs -p no:cacheprovider \
        --junitxml="$OUT/pytest-gpu.xml"
    step bench-demo 300 "${MFVAN[@]}" bench backends --config demo --device cpu \
        --batches 1 8 --runs 3 --rows 'eager|aoti'
    step bench-paper 120 "${MFVAN[@]}" bench backends --config paper --device cpu \
        --batches 1 --runs 2 --rows eager
    NUMBA_ENABLE_CUDASIM=1 step bench-flow 300 "${MFVAN[@]}" bench flow --device cuda \
        --streams 1 2 --crop 24 --runs 1
fi
echo "gpu-check: figures in $OUT (summary.txt, one file per step)"
