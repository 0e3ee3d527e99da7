#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-server offline, from the source tree that the PyPI
# sdist of llama-cpp-python carries, into a cache outside the repository. Idempotent.
set -euo pipefail
ROOT=${LLAMACPP_CACHE:-$HOME/.cache/loraplex/llama.cpp}
VERSION=0.3.36
if [ -x "$ROOT/build/bin/llama-bench" ]; then
  echo "$ROOT/build/bin/llama-bench"
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
cmake -S src -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF >/dev/null
cmake --build build -j"$(nproc)" --target llama-bench llama-server >/dev/null
echo "$ROOT/build/bin/llama-bench"
