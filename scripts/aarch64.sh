#!/usr/bin/env bash
# Cross-builds the release binary for aarch64 Linux and runs it under Debian's qemu-user, to
# show that the crates build for a CPU without the x86 tiers and that the portable tier there
# gives the same greedy ids as `--cpu-kernels portable` on this machine. Not part of the test
# command (a second full release build); run by hand:
#   scripts/aarch64.sh            # builds, then compares 8 greedy tokens of the default model
# Installs what it needs where apt and rustup can: the aarch64 std, a cross gcc, qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  { apt-get install -y -qq gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user ||
    { apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user; }; } >/dev/null
fi
./scripts/fetch-model.sh >/dev/null
MODEL=weights/SmolLM2-135M-Instruct.Q4_1.gguf
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
cargo build --release --quiet --target "$TARGET"
cargo build --release --quiet
BIN=target/$TARGET/release/loraplex
file "$BIN" | grep -q "ARM aarch64" || { echo "not an aarch64 binary: $(file "$BIN")" >&2; exit 1; }
ARGS=(generate "$MODEL" --prompt "The capital of France is" --max-tokens 8 --ignore-eos --json)
ids() { python3 -c "import json,sys; print(json.load(sys.stdin)['ids'])"; }
native=$(target/release/loraplex "${ARGS[@]}" --cpu-kernels portable 2>/dev/null | ids)
arm=$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$BIN" "${ARGS[@]}" --cpu-kernels portable 2>/dev/null | ids)
# `auto` there must pick the portable tier (no x86 tier exists on aarch64).
arm_auto=$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$BIN" "${ARGS[@]}" --cpu-kernels auto 2>/dev/null | ids)
echo "native portable: $native"
echo "aarch64 (qemu):  $arm"
[ "$native" = "$arm" ] && [ "$arm" = "$arm_auto" ] || { echo "greedy ids differ" >&2; exit 1; }
echo "aarch64 build runs and matches the portable tier"
