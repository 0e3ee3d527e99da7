//! The one integration-test binary (as ripgrep's `tests/tests.rs`): every module below is a
//! boundary of the system tested from outside. The goldens they compare with are in
//! `tests/golden/` (its README says how they were made and what tolerances apply).

// Helpers, not tests.
mod adapter_fixtures; // PEFT adapter folders written by tests: random valid ones, broken ones, merged bases
mod util; // paths to the goldens and the default model, readers, shared forward-pass drivers

mod adapter_cache; // resident adapters: leases, LRU eviction, memory accounting, versions
mod adapter_configs; // adapter_config.json fields left out take PEFT's defaults; ranks past the stack scratch
mod adapter_store; // the directory store: versions by content, atomic pointer moves, crash repair
mod adapters; // PEFT adapters against PEFT's logits, mixed batches, merged weights, every refusal
mod admin; // the admin API over HTTP: upload, replace, pull, delete, load/unload, hostile uploads
mod cli; // `loraplex generate` run as a user runs it
mod constraints; // constrained decoding on SmolLM2's tokenizer: masks against brute force, compile errors, mixed batches
mod engine; // the engine through EngineHandle: batching, chunked prefill, cancel, backpressure, cold loads
mod experiments; // the experiments admin API: create/list/show/patch/delete, every refusal, persistence, keys
mod gateway;
mod gemma3_270m; // Gemma 3 270M GGUF: its SentencePiece tokenizer against transformers', continuations against llama.cpp's // the OpenAI HTTP contract: response shapes and every error case
mod golden_families; // tiny Qwen2, Qwen3, Gemma 3, Mistral (sliding window) and Phi-3 (fused) with adapters against transformers + PEFT
mod golden_smollm2; // the real SmolLM2 GGUF against transformers' dequantized-f32 reference
mod golden_tiny; // the tiny Llama against transformers' exact f32 logits, alone and batched
mod hub; // hub ids through hf-hub's cache layout; offline mode stays offline
mod load_errors; // broken model files give typed errors naming the file
mod portable; // the binary under qemu-user as older CPUs (Haswell, no AVX): runs, picks their tier, same greedy ids
mod routed; // requests on routes: arm headers, primaries unchanged by shadows, live scores equal the endpoint's, records, report, 409s
mod shadow; // POST /v1/shadow/score against echo + logprobs, its refusals; the live ShadowQueue: same scores, failures and drops counted
mod structured_http; // response_format, structured_outputs and guided_* over HTTP: every refusal, constrained answers that match; 405s
mod tokenizer; // the GGUF tokenizer and chat template against transformers'
mod tools_http; // tools over HTTP: every refusal, required/named calls that follow their schema, streamed calls that reassemble, follow-up turns with tool results
mod utf8; // generations cut inside a character: no U+FFFD in text, raw bytes in logprobs
