#!/usr/bin/env bash
# GPU checks in one go, for a machine with CUDA: the GPU tests (run_gpu_tests.sh), then the benchmark on the GPU and,
# for comparison, the same ImageNet-LT-shaped benchmark on that machine's CPU. Results go to the folder given (default
# gpu-results). Uses the python3 on PATH with torch, numpy, typer, rich, safetensors, pytest, hypothesis and
# scikit-learn installed; lacal is taken from this checkout (PYTHONPATH), so nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
bash benchmarks/run_gpu_tests.sh "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 300 python3 benchmarks/bench_fit_tau.py --repeats 5 --device cuda --shapes imagenet-lt --json "$out/bench_cuda_imagenet.json" 2>&1 | tee "$out/bench.txt"
timeout 240 python3 benchmarks/bench_fit_tau.py --repeats 5 --device cuda --shapes inaturalist --skip-sklearn --json "$out/bench_cuda_inat.json" 2>&1 | tee -a "$out/bench.txt"
timeout 120 python3 benchmarks/bench_fit_tau.py --repeats 5 --device cpu --shapes imagenet-lt --skip-sklearn --json "$out/bench_host_cpu.json" 2>&1 | tee -a "$out/bench.txt"
