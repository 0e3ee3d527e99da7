#!/usr/bin/env bash
# Converts tiny family models in tests/golden/families/ (made by scripts/make-family-goldens.sh)
# to bf16 GGUF with llama.cpp's own convert_hf_to_gguf.py, writing
# tests/golden/families/<family>.gguf, then checks every file with gguf-py's GGUFReader and
# numpy (tests/golden/families/gguf_check.py; see tests/golden/families/GGUF.md).
# Deterministic: a rerun rewrites byte-identical files.
#
# The converter runs through tests/golden/families/gguf_convert.py, which changes only how the
# SmolLM2 tokenizer these models carry is read (tokenizer.json as written, so the converter's own
# pre-tokenizer hash check finds "smollm"; Phi-3 through the converter's gpt2/BPE vocabulary path
# instead of a SentencePiece tokenizer.model). Weights and architecture metadata are the
# converter's, untouched.
#
# When a llama.cpp build (libllama.so) and a C compiler are at hand, llama.cpp itself also runs
# each file (tests/golden/families/gguf_llama_logits.c) and its last-position logits are compared
# with <family>_last_logits.npy: the bf16 file, and an f32 conversion of the same weights made in a
# temporary directory (the f32 one must agree within 1e-4; bf16 matmuls round activations).
#
# Usage: scripts/make-family-ggufs.sh [family ...]   (default: qwen2 qwen3 phi3)
#   LORAPLEX_GOLDENS_VENV  the venv of scripts/make-family-goldens.sh (default
#                          ${TMPDIR:-/tmp}/loraplex-goldens-venv; it needs torch, transformers,
#                          numpy, safetensors; sentencepiece is added here)
#   LLAMACPP_CACHE         where benches/llamacpp.sh keeps llama.cpp (default ~/.cache/loraplex/llama.cpp):
#                          src/ is the llama.cpp that llama-cpp-python 0.3.36 vendors, build-avx2/bin
#                          its libraries (benches/llamacpp.sh avx2 makes both)
#   LLAMA_CPP_SRC          the llama.cpp source tree (default $LLAMACPP_CACHE/src); its
#                          convert_hf_to_gguf.py and gguf-py are used, not the gguf package from PyPI
#   LLAMA_CPP_LIB          the folder holding its libllama.so (default $LLAMACPP_CACHE/build-avx2/bin);
#                          without one the llama.cpp run is skipped
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LORAPLEX_GOLDENS_VENV:-${TMPDIR:-/tmp}/loraplex-goldens-venv}"
CACHE="${LLAMACPP_CACHE:-$HOME/.cache/loraplex/llama.cpp}"
SRC="${LLAMA_CPP_SRC:-$CACHE/src}"
LIB="${LLAMA_CPP_LIB:-$CACHE/build-avx2/bin}"
SENTENCEPIECE=0.2.3  # the converter imports it before falling back to the gpt2 vocabulary

if [ ! -x "$VENV/bin/python" ]; then
    echo "make-family-ggufs: no venv at $VENV; run scripts/make-family-goldens.sh first" >&2
    exit 1
fi
if [ ! -f "$SRC/convert_hf_to_gguf.py" ] || [ ! -d "$SRC/gguf-py/gguf" ]; then
    echo "make-family-ggufs: no llama.cpp source (convert_hf_to_gguf.py, gguf-py) at $SRC" >&2
    exit 1
fi
if ! "$VENV/bin/python" -c "import sentencepiece, sys; sys.exit(sentencepiece.__version__ != '$SENTENCEPIECE')" 2>/dev/null; then
    "$VENV/bin/python" -m pip --disable-pip-version-check -q install "sentencepiece==$SENTENCEPIECE"
fi

export PYTHONPATH="$SRC/gguf-py${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
cd "$ROOT"
FAMILIES=("$@")
[ ${#FAMILIES[@]} -gt 0 ] || FAMILIES=(qwen2 qwen3 phi3)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# convert FAMILY OUTFILE [converter option ...]
convert() {
    local fam="$1" out="$2"
    shift 2
    local opts=()
    # general.name defaults to the directory name ("Phi3"). llama.cpp's vocabulary loader treats a
    # general.name containing "phi3" or "phi-3" as Phi-3's own SentencePiece vocabulary and looks up
    # "</s>", which the SmolLM2 vocabulary lacks (llama_model_load: "unordered_map::at"); it would
    # also mark every special token RSTRIP. Any other name avoids both; nothing else reads it.
    [ "$fam" != phi3 ] || opts=(--model-name "Tiny Phi 3")
    if ! "$VENV/bin/python" tests/golden/families/gguf_convert.py "$SRC" "tests/golden/families/$fam" \
            "$out.part" ${opts[@]+"${opts[@]}"} "$@" >"$TMP/log" 2>&1; then
        cat "$TMP/log" >&2
        rm -f "$out.part"
        echo "make-family-ggufs: converting $fam failed" >&2
        exit 1
    fi
    mv "$out.part" "$out"
}

for fam in "${FAMILIES[@]}"; do
    out="tests/golden/families/$fam.gguf"
    convert "$fam" "$out"
    echo "$out: $(stat -c %s "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16)..." >&2
done

CC="${CC:-cc}"
if [ -f "$LIB/libllama.so" ] && [ -f "$SRC/include/llama.h" ] && command -v "$CC" >/dev/null; then
    "$CC" -O1 -std=c11 -o "$TMP/logits" tests/golden/families/gguf_llama_logits.c \
        -I"$SRC/include" -I"$SRC/ggml/include" -L"$LIB" -lllama -lggml -lggml-base -Wl,-rpath,"$LIB"
    for fam in "${FAMILIES[@]}"; do
        "$VENV/bin/python" -c 'import json, sys
for c in json.load(open(sys.argv[1]))["cases"]: print(*c["input_ids"])' \
            "tests/golden/families/${fam}_cases.json" >"$TMP/$fam.prompts"
        "$TMP/logits" "tests/golden/families/$fam.gguf" "$TMP/$fam.bf16.logits" <"$TMP/$fam.prompts"
        convert "$fam" "$TMP/$fam-f32.gguf" --outtype f32
        "$TMP/logits" "$TMP/$fam-f32.gguf" "$TMP/$fam.f32.logits" <"$TMP/$fam.prompts"
    done
    export LLAMA_LOGITS_DIR="$TMP"
else
    echo "make-family-ggufs: no llama.cpp library at $LIB (or no $CC): not running the files in llama.cpp" >&2
fi
"$VENV/bin/python" tests/golden/families/gguf_check.py "$SRC" "${FAMILIES[@]}"
