#!/usr/bin/env bash
# Loraplex's server against llama.cpp's llama-server on the same GGUF, in one run: aggregate
# output tok/s at 1, 4 and 16 concurrent streaming clients, as ratios. llama-server runs with
# -np = concurrency (continuous batching on). Needs benches/llamacpp.sh to have built llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=weights/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA_SERVER=${LLAMA_SERVER:-$HOME/.cache/loraplex/llama.cpp/build-${LLAMACPP_ISA:-avx512}/bin/llama-server}
REQUESTS_PER_CLIENT=${REQUESTS_PER_CLIENT:-4}
PROMPT=${PROMPT:-64}
OUTPUT=${OUTPUT:-64}
THREADS=${THREADS:-2}
./scripts/fetch-model.sh
cargo build --release --quiet
wait_up() { for _ in $(seq 600); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
echo "[" 
first=1
for C in 1 4 16; do
  RAYON_NUM_THREADS=$THREADS ./target/release/loraplex serve "$MODEL" --port 8731 --served-model-name smollm2 \
    --max-num-seqs 16 >/dev/null 2>&1 &
  LP=$!
  wait_up http://127.0.0.1:8731
  ours=$(python3 benches/loadgen.py --url http://127.0.0.1:8731 --models smollm2 --concurrency $C \
    --requests $((C * REQUESTS_PER_CLIENT)) --prompt-tokens $PROMPT --output-tokens $OUTPUT)
  kill -TERM $LP; wait $LP || true
  "$LLAMA_SERVER" -m "$MODEL" -t $THREADS -np $C -cb -c $((C * 1024)) --port 8732 >/dev/null 2>&1 &
  LC=$!
  wait_up http://127.0.0.1:8732
  theirs=$(python3 benches/loadgen.py --url http://127.0.0.1:8732 --models smollm2 --concurrency $C \
    --requests $((C * REQUESTS_PER_CLIENT)) --prompt-tokens $PROMPT --output-tokens $OUTPUT)
  kill -TERM $LC; wait $LC || true
  ratio=$(python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(a['output_tok_per_s']/b['output_tok_per_s'])" "$ours" "$theirs")
  [ $first = 1 ] || echo ","
  first=0
  echo "{\"concurrency\": $C, \"loraplex\": $ours, \"llama_cpp\": $theirs, \"throughput_ratio\": $ratio}"
done
echo "]"
