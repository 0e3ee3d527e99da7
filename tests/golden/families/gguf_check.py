#!/usr/bin/env python3
"""Checks the GGUF files that scripts/make-family-ggufs.sh wrote with llama.cpp's converter
(tests/golden/families/<family>.gguf) against the safetensors they came from, and prints what is in
them (see GGUF.md):

* metadata: every key and value (the three vocabulary arrays summarised), and the architecture
  keys compared with config.json;
* tensors: name, ggml type, ne (GGUF order, innermost first); the set of names must be exactly the
  expected llama.cpp names, and every value must equal the safetensors value bit for bit (BF16
  tensors as stored, F32 tensors as the exact widening of the bf16 value), after llama.cpp's
  renaming and with no other transformation;
* vocabulary: tokens, token types, merges and special ids equal ../tiny-llama/tokenizer.json;
* a forward pass: numpy_reference.forward run on the GGUF tensors (mapped back to HF names) with
  hyper-parameters read only from the GGUF metadata reproduces the base logits in
  <family>_last_logits.npy within numpy_reference.TOL;
* when LLAMA_LOGITS_DIR is set (scripts/make-family-ggufs.sh sets it after running
  gguf_llama_logits.c): llama.cpp's own logits for the base cases, from an f32 conversion of the
  same weights (within LLAMA_F32_TOL) and from the bf16 file (reported; same argmax wherever the
  golden top-1/top-2 margin exceeds 2 * LLAMA_BF16_TOL, and within LLAMA_BF16_TOL).

Usage: gguf_check.py LLAMA_CPP_SRC [family ...]   (default: qwen2 qwen3 phi3)
Exits non-zero on any mismatch.
"""
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))  # tests/golden/families
GOLDEN = os.path.dirname(HERE)
ALL = ["qwen2", "qwen3", "phi3"]
LLAMA_F32_TOL = 1e-4  # observed 3.3e-6: f32 weights, F32 KV cache
LLAMA_BF16_TOL = 0.1  # observed 0.04: ggml's BF16 matmul rounds the activations to bf16 as well
VOCAB_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def read_safetensors(path):
    """name -> uint16 array of bf16 bits, HF shape (read by hand: numpy has no bf16)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "BF16", (name, meta["dtype"])
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<u2").reshape(meta["shape"])
    return out


def expected_names(fam, cfg):
    """llama.cpp name -> HF name, written out by hand from gguf-py's tensor_mapping for these
    architectures (no tensor is split, merged, permuted or offset by the converter here)."""
    m = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if not cfg.get("tie_word_embeddings", False):
        m["output.weight"] = "lm_head.weight"
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        m[b + "attn_norm.weight"] = p + "input_layernorm.weight"
        m[b + "ffn_norm.weight"] = p + "post_attention_layernorm.weight"
        m[b + "attn_output.weight"] = p + "self_attn.o_proj.weight"
        m[b + "ffn_down.weight"] = p + "mlp.down_proj.weight"
        if fam == "phi3":
            m[b + "attn_qkv.weight"] = p + "self_attn.qkv_proj.weight"  # rows [q | k | v]
            m[b + "ffn_up.weight"] = p + "mlp.gate_up_proj.weight"  # rows [gate | up]
        else:
            for x in "qkv":
                m[b + f"attn_{x}.weight"] = p + f"self_attn.{x}_proj.weight"
                if fam == "qwen2":
                    m[b + f"attn_{x}.bias"] = p + f"self_attn.{x}_proj.bias"
            m[b + "ffn_gate.weight"] = p + "mlp.gate_proj.weight"
            m[b + "ffn_up.weight"] = p + "mlp.up_proj.weight"
        if fam == "qwen3":
            m[b + "attn_q_norm.weight"] = p + "self_attn.q_norm.weight"
            m[b + "attn_k_norm.weight"] = p + "self_attn.k_norm.weight"
    return m


def expected_meta(fam, cfg):
    a = fam
    h, nq = cfg["hidden_size"], cfg["num_attention_heads"]
    f32 = lambda x: float(np.float32(x))  # noqa: E731  (GGUF stores these as float32)
    e = {
        "general.architecture": a,
        "general.file_type": 32,  # LlamaFileType.MOSTLY_BF16
        f"{a}.block_count": cfg["num_hidden_layers"],
        f"{a}.context_length": cfg["max_position_embeddings"],
        f"{a}.embedding_length": h,
        f"{a}.feed_forward_length": cfg["intermediate_size"],
        f"{a}.attention.head_count": nq,
        f"{a}.attention.head_count_kv": cfg["num_key_value_heads"],
        f"{a}.rope.freq_base": f32(cfg["rope_parameters"]["rope_theta"]),
        f"{a}.attention.layer_norm_rms_epsilon": f32(cfg["rms_norm_eps"]),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
    }
    if cfg.get("head_dim") is not None:  # qwen3 only: head_dim 16 != hidden/heads 8
        e[f"{a}.attention.key_length"] = cfg["head_dim"]
        e[f"{a}.attention.value_length"] = cfg["head_dim"]
    if fam == "phi3":
        e[f"{a}.rope.dimension_count"] = int(cfg["rope_parameters"]["partial_rotary_factor"] * h) // nq
        e[f"{a}.rope.scaling.original_context_length"] = cfg["original_max_position_embeddings"]
        e[f"{a}.attention.sliding_window"] = 0  # sliding_window null -> 0
    return e


def gguf_tensor_bits(t):
    """GGUFReader tensor -> (kind, array in HF/numpy order). BF16 comes back as raw bytes."""
    from gguf import GGMLQuantizationType as Q
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    if t.tensor_type == Q.BF16:
        return "BF16", np.ascontiguousarray(t.data).view("<u2").reshape(shape)
    if t.tensor_type == Q.F32:
        return "F32", np.asarray(t.data, dtype="<f4").reshape(shape)
    raise AssertionError(f"{t.name}: unexpected type {t.tensor_type.name}")


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def check(fam, errors):
    from gguf import GGUFReader
    err = lambda msg: errors.append(f"{fam}: {msg}")  # noqa: E731
    n_errors = len(errors)
    cfg = json.load(open(os.path.join(HERE, fam, "config.json")))
    path = os.path.join(HERE, f"{fam}.gguf")
    r = GGUFReader(path)
    print(f"== {fam}.gguf  {os.path.getsize(path)} bytes, tensor data at {r.data_offset}, "
          f"alignment {r.alignment}")

    meta = {}
    for k, fld in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = fld.contents()
        meta[k] = v
        ty = fld.types[0].name + ("[" + fld.types[-1].name + "]" if len(fld.types) > 1 else "")
        if k in VOCAB_KEYS:
            shown = f"<{len(v)} items: {v[:3]!r} ...>"
        elif k == "tokenizer.chat_template":
            shown = f"<{len(v)} chars: SmolLM2's ChatML template from tokenizer_config.json>"
        else:
            shown = repr(v)
        print(f"  {k:48s} {ty:14s} {shown}")
    if any(s in str(meta.get("general.name", "")).lower() for s in ("phi3", "phi-3")):
        err("general.name contains phi3/phi-3: llama.cpp would apply Phi-3's SentencePiece token attributes")
    for k, want in expected_meta(fam, cfg).items():
        if k not in meta:
            err(f"metadata {k} missing")
        elif meta[k] != want:
            err(f"metadata {k} = {meta[k]!r}, expected {want!r}")

    st = read_safetensors(os.path.join(HERE, fam, "model.safetensors"))
    names = expected_names(fam, cfg)
    got = {t.name: t for t in r.tensors}
    if set(got) != set(names):
        err(f"tensor names differ: extra {sorted(set(got) - set(names))}, "
            f"missing {sorted(set(names) - set(got))}")
    if set(names.values()) != set(st):
        err(f"safetensors names not all used: {sorted(set(st) - set(names.values()))}")
    weights = {}
    for t in r.tensors:
        kind, arr = gguf_tensor_bits(t)
        ne = [int(d) for d in t.shape.tolist()]
        hf = names.get(t.name)
        print(f"  {t.name:28s} {kind:5s} ne={ne!s:14s} <- {hf}")
        if hf is None or hf not in st:
            continue
        src = st[hf]
        if arr.shape != src.shape:
            err(f"{t.name}: shape {arr.shape} != safetensors {src.shape}")
            continue
        want_kind = "F32" if src.ndim == 1 else "BF16"  # 1-D (norms, biases) are widened to F32
        if kind != want_kind:
            err(f"{t.name}: type {kind}, expected {want_kind}")
        if kind == "BF16":
            same = np.array_equal(arr, src)
        else:
            same = np.array_equal(arr.view(np.uint32), bf16_to_f32(src).view(np.uint32))
        if not same:
            err(f"{t.name}: values differ from {hf}")
        weights[hf] = (bf16_to_f32(arr) if kind == "BF16" else arr).astype(np.float64)

    # vocabulary
    tj = json.load(open(os.path.join(HERE, fam, "tokenizer.json")))
    vocab = dict(tj["model"]["vocab"])
    special = set()
    for a in tj["added_tokens"]:
        vocab[a["content"]] = a["id"]
        if a["special"]:
            special.add(a["id"])
    by_id = {i: s for s, i in vocab.items()}
    tokens = meta["tokenizer.ggml.tokens"]
    if tokens != [by_id[i] for i in range(len(tokens))] or len(tokens) != cfg["vocab_size"]:
        err("tokenizer.ggml.tokens differ from tokenizer.json")
    types = meta["tokenizer.ggml.token_type"]
    if types != [3 if i in special else 1 for i in range(len(tokens))]:  # CONTROL / NORMAL
        err("tokenizer.ggml.token_type: expected CONTROL(3) for the 17 special added tokens, NORMAL(1) else")
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    if meta["tokenizer.ggml.merges"] != merges:
        err("tokenizer.ggml.merges differ from tokenizer.json")
    tc = json.load(open(os.path.join(HERE, fam, "tokenizer_config.json")))
    if meta.get("tokenizer.chat_template") != tc["chat_template"]:
        err("tokenizer.chat_template differs from tokenizer_config.json")

    # a forward pass from the GGUF alone (hyper-parameters from its metadata, not config.json)
    sys.path.insert(0, HERE)
    import numpy_reference
    a = fam
    gcfg = {
        "hidden_size": meta[f"{a}.embedding_length"],
        "num_attention_heads": meta[f"{a}.attention.head_count"],
        "num_key_value_heads": meta[f"{a}.attention.head_count_kv"],
        "head_dim": meta.get(f"{a}.attention.key_length"),
        "rms_norm_eps": meta[f"{a}.attention.layer_norm_rms_epsilon"],
        "num_hidden_layers": meta[f"{a}.block_count"],
        "intermediate_size": meta[f"{a}.feed_forward_length"],
        "rope_parameters": {"rope_theta": meta[f"{a}.rope.freq_base"]},
    }
    doc = json.load(open(os.path.join(HERE, f"{fam}_cases.json")))
    full = np.load(os.path.join(GOLDEN, doc["full_logits_file"]["file"]))
    vi = doc["variants"].index("base")
    worst = 0.0
    for case in doc["cases"]:
        lg = numpy_reference.forward(fam, gcfg, weights, None, case["input_ids"])
        worst = max(worst, float(np.abs(lg - full[vi, case["index"]]).max()))
    if worst > numpy_reference.TOL:
        err(f"forward pass from the GGUF: max |d| {worst:.2e} > {numpy_reference.TOL}")
    llama = os.environ.get("LLAMA_LOGITS_DIR")
    if llama:
        want = full[vi][[c["index"] for c in doc["cases"]]]  # prompts were written in case order
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * LLAMA_BF16_TOL
        for kind, tol in (("f32", LLAMA_F32_TOL), ("bf16", LLAMA_BF16_TOL)):
            got = np.fromfile(os.path.join(llama, f"{fam}.{kind}.logits"), dtype="<f4").reshape(want.shape)
            d = float(np.abs(got - want).max())
            same = got.argmax(1) == want.argmax(1)
            print(f"  llama.cpp on the {kind} file vs {fam}_last_logits.npy: max |d| {d:.2e}, "
                  f"argmax equal in {int(same.sum())}/{len(same)} cases")
            if d > tol:
                err(f"llama.cpp logits ({kind}) differ by {d:.2e} > {tol}")
            if not same[clear].all() or (kind == "f32" and not same.all()):
                err(f"llama.cpp argmax ({kind}) differs from the goldens")
    print(f"  forward from the GGUF alone vs {fam}_last_logits.npy (base, {len(doc['cases'])} cases): "
          f"max |d| {worst:.2e}")
    if len(errors) == n_errors:
        print(f"  OK: {len(r.tensors)} tensors bit-identical to model.safetensors, metadata as config.json "
              f"says, vocabulary = tokenizer.json")


def main():
    src = sys.argv[1]
    sys.path.insert(0, os.path.join(os.path.abspath(src), "gguf-py"))
    errors = []
    for fam in sys.argv[2:] or ALL:
        check(fam, errors)
    if errors:
        sys.exit("gguf_check: FAILED\n  " + "\n  ".join(errors))
    print("gguf_check: all OK")


if __name__ == "__main__":
    main()
