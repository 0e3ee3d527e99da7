#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-server offline, from the source tree that the PyPI
# sdist of llama-cpp-python carries, into a cache outside the repository, for one x86 ISA level:
#   benches/llamacpp.sh avx2     # GGML_NATIVE=OFF with AVX2/FMA/F16C (Haswell and later)
#   benches/llamacpp.sh avx512   # ... plus AVX-512 F/BW/VL/VNNI (what the avx512 tier uses)
# Never -march=native: AMX instructions trap in these VMs, and a tier is compared with the
# build of its own level. Prints the llama-bench path. Idempotent.
set -euo pipefail
ISA=${1:-avx512}
ROOT=${LLAMACPP_CACHE:-$HOME/.cache/loraplex/llama.cpp}
VERSION=0.3.36
BUILD="$ROOT/build-$ISA"
case "$ISA" in
  avx2) FLAGS=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON) ;;
  avx512) FLAGS=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON) ;;
  *) echo "usage: $0 avx2|avx512" >&2; exit 2 ;;
esac
if [ -x "$BUILD/bin/llama-bench" ]; then
  echo "$BUILD/bin/llama-bench"
  exit 0
fi
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake >/dev/null; }
mkdir -p "$ROOT"
cd "$ROOT"
if [ ! -d src ]; then
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d dl
  mkdir -p unpack && tar -xzf dl/llama_cpp_python-$VERSION.tar.gz -C unpack
  mv "unpack/llama_cpp_python-$VERSION/vendor/llama.cpp" src
  rm -rf unpack dl
fi
cmake -S src -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF "${FLAGS[@]}" >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target llama-bench llama-server >/dev/null
echo "$BUILD/bin/llama-bench"
