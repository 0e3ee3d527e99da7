#!/usr/bin/env bash
# Sets up and runs the default model. Until the HTTP gateway lands this starts an interactive
# chat loop on the terminal with the same engine.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
cargo build --release
MODEL=weights/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "$#" -gt 0 ]; then
  exec ./target/release/loraplex "$@"
fi
echo "Loraplex: chatting with $MODEL (Ctrl-D to quit)" >&2
while IFS= read -r -p "> " line; do
  [ -n "$line" ] && ./target/release/loraplex generate "$MODEL" --chat --prompt "$line"
done
