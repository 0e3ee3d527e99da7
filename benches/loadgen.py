#!/usr/bin/env python3
"""HTTP load generator for OpenAI-compatible servers (Loraplex, llama.cpp's llama-server, vLLM).

Streaming clients send /v1/completions requests and time every chunk. Prints JSON: TTFT p50/p95,
inter-chunk latency p50/p95, request latency p50/p95 and aggregate output tok/s. Tokens are
counted from the `usage` each server reports at the end of the stream (`stream_options.
include_usage`), not from SSE chunks, which a server may merge or split. A request that fails,
reports no usage, or stops short of --output-tokens is an error; any error marks the whole run
`"failed": true`, and a comparison built on it must not be reported as a ratio.

  python3 benches/loadgen.py --url http://127.0.0.1:8000 --concurrency 16 --requests 64 \
      --prompt-tokens 64 --output-tokens 64 --models smollm2,adapter-a,adapter-b
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def one_request(url, model, prompt, max_tokens, api_key):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    stamps = []
    usage = None
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if "error" in ev:
            raise RuntimeError(ev["error"])
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices", []):
            if ch.get("text"):
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    conn.close()
    if usage is None:
        raise RuntimeError("the stream reported no usage")
    tokens = usage.get("completion_tokens", 0)
    if tokens != max_tokens:
        raise RuntimeError(f"incomplete: {tokens} of {max_tokens} tokens")
    return start, stamps, end, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64, help="approximate prompt length")
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--models", default="", help="comma-separated model/adapter names, used round-robin")
    ap.add_argument("--api-key", default=None)
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m] or ["default"]
    lock = threading.Lock()
    results, errors = [], []
    next_i = [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= args.requests:
                return
            # Distinct prompts so no server can reuse a cached prefix across requests.
            words = " ".join(f"w{(i * 7919 + k) % 997}" for k in range(max(1, args.prompt_tokens // 2)))
            prompt = f"Request {i}: {words}"
            try:
                r = one_request(args.url, models[i % len(models)], prompt, args.output_tokens, args.api_key)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - reported in the JSON
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [s[0] - st for st, s, _, _ in results if s]
    itl = [b - a for _, s, _, _ in results for a, b in zip(s, s[1:])]
    lat = [e - st for st, _, e, _ in results]
    tokens = sum(n for _, _, _, n in results)
    out = {
        "url": args.url,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "completed": len(results),
        "failed": bool(errors) or len(results) != args.requests,
        "error_count": len(errors),
        "errors": errors[:5],
        "output_tokens": tokens,
        "wall_s": wall,
        "output_tok_per_s": tokens / wall if wall else 0,
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p95_s": pct(ttft, 95),
        "itl_p50_s": pct(itl, 50),
        "itl_p95_s": pct(itl, 95),
        "itl_mean_s": statistics.fmean(itl) if itl else None,
        "latency_p50_s": pct(lat, 50),
        "latency_p95_s": pct(lat, 95),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
