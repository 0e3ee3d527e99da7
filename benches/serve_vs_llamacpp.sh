#!/usr/bin/env bash
# Loraplex's server against llama.cpp's llama-server on the same GGUF, in one run: aggregate
# output tok/s (counted from each server's `usage`, benches/loadgen.py) at 1, 4 and 16 concurrent
# streaming clients. Each concurrency runs ROUNDS (>= 3) alternating rounds, each server started
# fresh per round and warmed with one request; the ratio is of the two medians. A round with an
# error or an incomplete request marks that concurrency "failed" and no ratio is printed for it.
# llama-server runs with -np = concurrency (continuous batching on), built for the ISA level this
# CPU has (benches/llamacpp.sh; LLAMACPP_ISA overrides), and Loraplex's kernels are forced to the
# same level (--cpu-kernels, LORAPLEX_KERNELS overrides), so implementations are compared, not ISAs.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=weights/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -z "${LLAMACPP_ISA:-}" ]; then
  if grep -qw avx512_vnni /proc/cpuinfo; then LLAMACPP_ISA=avx512; else LLAMACPP_ISA=avx2; fi
fi
KERNELS=${LORAPLEX_KERNELS:-$LLAMACPP_ISA}
LLAMA_SERVER=${LLAMA_SERVER:-$(dirname "$(./benches/llamacpp.sh "$LLAMACPP_ISA")")/llama-server}
REQUESTS_PER_CLIENT=${REQUESTS_PER_CLIENT:-4}
PROMPT=${PROMPT:-64}
OUTPUT=${OUTPUT:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-1 4 16}
[ "$ROUNDS" -ge 3 ] || { echo "ROUNDS must be at least 3" >&2; exit 2; }
./scripts/fetch-model.sh >/dev/null
cargo build --release --quiet
wait_up() { for _ in $(seq 600); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
load() { # url concurrency requests
  python3 benches/loadgen.py --url "$1" --models smollm2 --concurrency "$2" --requests "$3" \
    --prompt-tokens "$PROMPT" --output-tokens "$OUTPUT"
}
loraplex_round() {
  RAYON_NUM_THREADS=$THREADS ./target/release/loraplex serve "$MODEL" --port 8731 --served-model-name smollm2 \
    --max-num-seqs 16 --cpu-kernels "$KERNELS" >/dev/null 2>&1 &
  local pid=$!
  wait_up http://127.0.0.1:8731
  load http://127.0.0.1:8731 1 1 >/dev/null
  load http://127.0.0.1:8731 "$1" $(($1 * REQUESTS_PER_CLIENT))
  kill -TERM $pid; wait $pid || true
}
llamacpp_round() {
  "$LLAMA_SERVER" -m "$MODEL" -t "$THREADS" -np "$1" -cb -c $(($1 * 1024)) --port 8732 >/dev/null 2>&1 &
  local pid=$!
  wait_up http://127.0.0.1:8732
  load http://127.0.0.1:8732 1 1 >/dev/null
  load http://127.0.0.1:8732 "$1" $(($1 * REQUESTS_PER_CLIENT))
  kill -TERM $pid; wait $pid || true
}
echo "{\"isa\": \"$LLAMACPP_ISA\", \"cpu_kernels\": \"$KERNELS\", \"rounds\": $ROUNDS, \"results\": ["
first=1
for C in $CONCURRENCY; do
  ours=()
  theirs=()
  for r in $(seq "$ROUNDS"); do
    # Alternate which server goes first, so drift in the machine's speed falls on both sides.
    if [ $((r % 2)) = 1 ]; then
      ours+=("$(loraplex_round "$C")")
      theirs+=("$(llamacpp_round "$C")")
    else
      theirs+=("$(llamacpp_round "$C")")
      ours+=("$(loraplex_round "$C")")
    fi
  done
  [ $first = 1 ] || echo ","
  first=0
  python3 - "$C" "${#ours[@]}" "${ours[@]}" "${theirs[@]}" <<'EOF'
import json, statistics, sys
c, n = int(sys.argv[1]), int(sys.argv[2])
ours = [json.loads(x) for x in sys.argv[3:3 + n]]
theirs = [json.loads(x) for x in sys.argv[3 + n:]]
def side(runs):
    return {
        "failed": any(r["failed"] for r in runs),
        "errors": [e for r in runs for e in r["errors"]][:5],
        "output_tok_per_s": [round(r["output_tok_per_s"], 1) for r in runs],
        "median_tok_per_s": round(statistics.median(r["output_tok_per_s"] for r in runs), 1),
        "ttft_p50_s": statistics.median(r["ttft_p50_s"] or 0 for r in runs),
        "itl_p50_s": statistics.median(r["itl_p50_s"] or 0 for r in runs),
    }
a, b = side(ours), side(theirs)
out = {"concurrency": c, "loraplex": a, "llama_cpp": b}
if a["failed"] or b["failed"]:
    out["failed"] = True
else:
    out["throughput_ratio"] = round(a["median_tok_per_s"] / b["median_tok_per_s"], 3)
print(json.dumps(out))
EOF
done
echo "]}"
