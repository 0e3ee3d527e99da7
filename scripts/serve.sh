#!/usr/bin/env bash
# Sets up and serves the default model (SmolLM2-135M-Instruct Q4_1) on http://127.0.0.1:8000
# with the OpenAI-compatible API. Extra arguments go to `loraplex serve`, e.g.
#   ./scripts/serve.sh --adapter-dir my-adapters --api-key secret
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
cargo build --release
exec ./target/release/loraplex serve weights/SmolLM2-135M-Instruct.Q4_1.gguf --served-model-name SmolLM2-135M-Instruct "$@"
