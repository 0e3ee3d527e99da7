#!/usr/bin/env bash
# Runs every test: fetches what the tests need (the default model), then the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
cargo test --workspace --all-targets "$@" 2>&1
