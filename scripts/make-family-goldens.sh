#!/usr/bin/env bash
# Regenerates tests/golden/families/: five tiny random models (qwen2, qwen3, gemma3, mistral,
# phi3), three PEFT LoRA adapters each, and one <family>_cases.json (+ _last_logits.npy) per
# family, computed by Hugging Face transformers + PEFT on CPU in float32, then cross-checked by
# tests/golden/families/numpy_reference.py (see tests/golden/README.md, "Architecture families").
# Deterministic: a rerun rewrites byte-identical files.
#
# A throw-away virtual environment outside the repository holds the pinned versions. Only PyPI is
# needed. Usage: scripts/make-family-goldens.sh [family ...]   (default: all five)
#   LORAPLEX_GOLDENS_VENV  where the venv lives (default ${TMPDIR:-/tmp}/loraplex-goldens-venv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LORAPLEX_GOLDENS_VENV:-${TMPDIR:-/tmp}/loraplex-goldens-venv}"
PY="${PYTHON:-python3}"

TORCH=2.15.0
TRANSFORMERS=5.24.0
PEFT=0.21.2
SAFETENSORS=0.8.0
NUMPY=2.4.6
TOKENIZERS=0.23.3

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

if ! have torch==$TORCH transformers==$TRANSFORMERS peft==$PEFT safetensors==$SAFETENSORS \
        numpy==$NUMPY tokenizers==$TOKENIZERS; then
    # torch's Linux wheel on PyPI depends on several GB of CUDA wheels. Try it without them first
    # (CPU use only); if it will not import that way, install it whole.
    "${PIP[@]}" install filelock sympy networkx jinja2 fsspec typing-extensions setuptools
    "${PIP[@]}" install --no-deps "torch==$TORCH"
    if ! "$VENV/bin/python" -c 'import torch; torch.ones(2) @ torch.ones(2)' 2>/dev/null; then
        echo "make-family-goldens: torch $TORCH does not import without its CUDA wheels; installing them" >&2
        "${PIP[@]}" install "torch==$TORCH"
    fi
    "${PIP[@]}" install "transformers==$TRANSFORMERS" "peft==$PEFT" "safetensors==$SAFETENSORS" \
        "numpy==$NUMPY" "tokenizers==$TOKENIZERS"
fi

# Fixed hash seed: PEFT keeps target_modules in a set, and its order lands in adapter_config.json.
# Offline: the adapters' base_model_name_or_path is a placeholder that PEFT would otherwise look up.
export PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
cd "$ROOT"
"$VENV/bin/python" tests/golden/families/generate.py "$@"
# An independent float64 numpy re-implementation must reproduce what was just written.
"$VENV/bin/python" tests/golden/families/numpy_reference.py "$@"
du -sh tests/golden/families
