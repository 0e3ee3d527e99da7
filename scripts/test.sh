#!/usr/bin/env bash
# Runs every test: fetches what the tests need (the default model, Python test clients in a
# venv), then the Rust workspace tests, then the end-to-end tests with the official OpenAI SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
./scripts/fetch-gemma3.sh >/dev/null
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import openai, pytest, duckdb, jsonschema" 2>/dev/null; then
  python3 -m venv .venv
  # duckdb reads the JSONL records back the way the README's queries do (tests/e2e/test_experiments.py);
  # jsonschema validates structured outputs and tool arguments (tests/e2e/test_structured.py, test_tools.py).
  .venv/bin/pip install --quiet "openai>=1.40" "pytest>=8" "duckdb==1.5.6" "jsonschema==4.26.0"
fi
# qemu-user runs the binary as older CPUs (tests/portable.rs); that test says so and skips
# only where it cannot be installed.
if ! command -v qemu-x86_64 >/dev/null && command -v apt-get >/dev/null; then
  { apt-get install -y -qq qemu-user || { apt-get update -qq && apt-get install -y -qq qemu-user; }; } >/dev/null 2>&1 || true
fi
cargo build
cargo test --workspace --all-targets "$@" 2>&1
.venv/bin/python -m pytest tests/e2e -q
