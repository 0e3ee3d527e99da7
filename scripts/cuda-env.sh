#!/usr/bin/env bash
# A CUDA toolkit from NVIDIA's PyPI wheels (nvcc, the runtime, CCCL headers, cuBLAS, cuRAND,
# NVRTC; CUDA 13), installed once into a cache outside the repository, for building with
# `--features cuda` on a machine without a GPU or a system CUDA. No GPU is needed to build;
# running needs one (and its driver's libcuda).
#
#   scripts/cuda-env.sh cargo build --features cuda    # runs the command in that environment
#   source scripts/cuda-env.sh                         # or sets it in this shell
#
# CUDA_COMPUTE_CAP (candle's kernels are compiled for it; nothing here can ask a GPU) defaults to
# 90 (H100/H200); set it for other GPUs.
set -euo pipefail
CACHE=${LORAPLEX_CUDA_CACHE:-$HOME/.cache/loraplex/cuda}
CU="$CACHE/wheels/nvidia/cu13"
if [ ! -x "$CU/bin/nvcc" ]; then
  mkdir -p "$CACHE"
  python3 -m pip install --quiet --target "$CACHE/wheels" \
    nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cublas nvidia-curand nvidia-cuda-nvrtc
fi
# The layout build scripts expect of a CUDA root: lib64 beside include, and the unversioned
# library names the linker looks for.
[ -e "$CU/lib64" ] || ln -s lib "$CU/lib64"
for l in "$CU"/lib/lib*.so.*; do
  base="${l%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$l")" "$base"
done
# The driver's libcuda comes with a GPU's driver, not with the toolkit wheels; the link needs
# one, so a stub that only names the driver API's functions (as the toolkit's own
# lib64/stubs/libcuda.so does), with the driver's soname: at run time the real one is loaded.
STUBS="$CU/lib/stubs"
if [ ! -e "$STUBS/libcuda.so" ]; then
  mkdir -p "$STUBS"
  # The declarations as the preprocessor leaves them (`_v2` names) and as written (those
  # behind conditions, such as the profiler's).
  { gcc -E -P -I"$CU/include" "$CU/include/cuda.h"; cat "$CU/include/cuda.h"; } | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | sed -E 's/[[:space:]]*\($//' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$STUBS/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUBS/libcuda.so" "$STUBS/libcuda_stub.c"
fi
export CUDA_ROOT="$CU" CUDA_PATH="$CU" CUDA_HOME="$CU" CUDA_TOOLKIT_ROOT_DIR="$CU"
export PATH="$CU/bin:$PATH"
export LIBRARY_PATH="$CU/lib:$STUBS${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CPATH="$CU/include:$CU/include/cccl${CPATH:+:$CPATH}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# cudarc (candle's CUDA bindings) knows toolkits up to 13.4 and refuses a newer nvcc's version;
# the 13.4 API is what it binds either way (the driver is loaded at run time).
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13040}
if [ $# -gt 0 ]; then
  exec "$@"
fi
