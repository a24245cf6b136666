#!/usr/bin/env bash
# The GPU tests alone, for a machine with CUDA (see run_gpu_checks.sh for the benchmark too).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_search.py tests/test_scoring.py \
    tests/test_shift_calibrate.py tests/test_distributed_search.py tests/test_checkpoints.py 2>&1 | tee "$out/tests.txt"
