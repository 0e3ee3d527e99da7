#!/usr/bin/env bash
# Regenerates tests/golden/gemma3-270m/ (see its README.md): transformers' and llama.cpp's
# tokenization of ~50 strings with the tokenizer of weights/gemma-3-270m-q4_k_m.gguf, a skeleton
# of the tokenizer.json transformers builds from that GGUF, and llama.cpp's greedy continuations
# (with pre-sampling top-2 logprobs) for six prompts.
#
# Needs: the GGUF (scripts/fetch-gemma3.sh) and llama.cpp's llama-server, built by
# `benches/llamacpp.sh avx2` (this script never builds it; if it is missing it polls every 30 s
# for up to LLAMA_SERVER_WAIT_S seconds, for a build that is already running). The server runs
# with one thread (-t 1) on 127.0.0.1:$LLAMA_PORT and is stopped afterwards.
#
# Same throw-away virtual environment as scripts/make-family-goldens.sh (only PyPI is needed),
# plus the `gguf` package that transformers' GGUF loading uses.
# Usage: scripts/make-gemma3-goldens.sh [--tokenizer-only]
#   LORAPLEX_GOLDENS_VENV  where the venv lives (default ${TMPDIR:-/tmp}/loraplex-goldens-venv)
#   GGUF                   the model (default weights/gemma-3-270m-q4_k_m.gguf)
#   LLAMA_SERVER           default ~/.cache/loraplex/llama.cpp/build-avx2/bin/llama-server
#   LLAMA_PORT             default 8791
#   LLAMA_SERVER_WAIT_S    default 1200
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LORAPLEX_GOLDENS_VENV:-${TMPDIR:-/tmp}/loraplex-goldens-venv}"
PY="${PYTHON:-python3}"

TORCH=2.15.0
TRANSFORMERS=5.24.0
NUMPY=2.4.6
TOKENIZERS=0.23.3
GGUF_PY=0.19.0

export GGUF="${GGUF:-$ROOT/weights/gemma-3-270m-q4_k_m.gguf}"
export LLAMA_SERVER="${LLAMA_SERVER:-${LLAMACPP_CACHE:-$HOME/.cache/loraplex/llama.cpp}/build-avx2/bin/llama-server}"
export LLAMA_PORT="${LLAMA_PORT:-8791}"
WAIT_S="${LLAMA_SERVER_WAIT_S:-1200}"

if [ ! -f "$GGUF" ]; then
    echo "make-gemma3-goldens: $GGUF is missing; run scripts/fetch-gemma3.sh" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

have() { "$VENV/bin/python" - "$@" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        got = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if got.split("+")[0] != want:
        sys.exit(1)
PYEOF
}

if ! have torch==$TORCH; then
    # transformers' GGUF reader imports torch. Its Linux wheel on PyPI depends on several GB of
    # CUDA wheels: try it without them first (CPU use only), else install it whole.
    "${PIP[@]}" install filelock sympy networkx jinja2 fsspec typing-extensions setuptools
    "${PIP[@]}" install --no-deps "torch==$TORCH"
    if ! "$VENV/bin/python" -c 'import torch; torch.ones(2) @ torch.ones(2)' 2>/dev/null; then
        echo "make-gemma3-goldens: torch $TORCH does not import without its CUDA wheels; installing them" >&2
        "${PIP[@]}" install "torch==$TORCH"
    fi
fi
if ! have transformers==$TRANSFORMERS numpy==$NUMPY tokenizers==$TOKENIZERS gguf==$GGUF_PY; then
    "${PIP[@]}" install "transformers==$TRANSFORMERS" "numpy==$NUMPY" "tokenizers==$TOKENIZERS" \
        "gguf==$GGUF_PY"
fi

ARGS=("$@")
if [[ " ${ARGS[*]-} " != *" --tokenizer-only "* ]]; then
    waited=0
    while [ ! -x "$LLAMA_SERVER" ]; do
        if [ "$waited" -ge "$WAIT_S" ]; then
            echo "make-gemma3-goldens: no $LLAMA_SERVER after ${WAIT_S}s; build it with" \
                "benches/llamacpp.sh avx2 (or pass --tokenizer-only)" >&2
            exit 1
        fi
        echo "make-gemma3-goldens: waiting for $LLAMA_SERVER (${waited}s)" >&2
        sleep 30
        waited=$((waited + 30))
    done
    # A build that just linked the binary may still be writing it.
    sleep 2
fi

export PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
cd "$ROOT"
"$VENV/bin/python" tests/golden/gemma3-270m/generate.py "${ARGS[@]+"${ARGS[@]}"}"
du -sh tests/golden/gemma3-270m
