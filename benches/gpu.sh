#!/usr/bin/env bash
# The GPU checks in one go, for a machine with an NVIDIA GPU (and its driver). The development
# machines have none, so this script has not run there: it is prepared for a machine that has
# one. It runs candle's generic path (the one every GPU takes) on the GPU: the golden suites'
# `candle` cases (tiny exact, SmolLM2 f32 and quantized criteria, adapters, batch == alone) with
# `--device cuda`, then the engine and multi-LoRA benches on the GPU.
#
#   benches/gpu.sh            # CUDA_COMPUTE_CAP from nvidia-smi; nvcc from PATH or the wheels
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
if [ -z "${CUDA_COMPUTE_CAP:-}" ] && command -v nvidia-smi >/dev/null; then
  CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
  export CUDA_COMPUTE_CAP
fi
if ! command -v nvcc >/dev/null; then
  # shellcheck source=../scripts/cuda-env.sh
  source scripts/cuda-env.sh
fi
export LORAPLEX_TEST_DEVICE=cuda
cargo test --release --features cuda --test tests -- ::candle
LORAPLEX_BENCH_DEVICE=cuda LORAPLEX_BENCH_KERNELS=candle LORAPLEX_BENCH_THREADS=1 \
  LORAPLEX_BENCH_DTYPES=auto,f16 cargo bench --features cuda --bench engine
LORAPLEX_BENCH_DEVICE=cuda LORAPLEX_BENCH_KERNELS=candle cargo bench --features cuda --bench multi_lora
