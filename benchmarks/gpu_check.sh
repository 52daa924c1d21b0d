#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU (a few minutes):
#   bash benchmarks/gpu_check.sh
# 1. the CUDA tests on the real GPU (no simulator): kernels against their CPU
#    twins, models trained on cuda against cpu, PTX + nvJitLink;
# 2. the five reference models, nbmodel on device="cuda" against PyTorch on
#    the same GPU, printed as one table.
# Needs the package installed with the cuda extra (and the gpu extra for cuBLAS
# through CuPy) and a CUDA build of torch 2.13; it installs nothing itself.
set -euo pipefail
cd "$(dirname "$0")/.."
unset NUMBA_ENABLE_CUDASIM

python - <<'PY'
import sys
import nbmodel as nb
from nbmodel.backend import available_devices
if "cuda" not in available_devices():
    sys.exit("gpu_check: no usable CUDA GPU here (nbmodel info says why)")
print(nb.backend.get_device("cuda").describe())
PY

echo "== CUDA tests on the GPU"
timeout 600 python -m pytest -q -p no:cacheprovider tests/cuda

echo "== reference models on the GPU: nbmodel (cuda) against PyTorch (cuda)"
MODELS="${GPU_CHECK_MODELS:-mlp,cnn,lstm,gru,transformer}"
timeout 480 python -m benchmarks.peer --device cuda --vs torch --models "$MODELS" --repeat 50
