#!/usr/bin/env python3
"""An independent float64 numpy re-implementation of the five family models (and their LoRA
adapters), checked against the case files that generate.py wrote: the last-position logits
(top-20, logsumexp, the .npy vector) and every greedy step, teacher-forced without a cache.
It states in a few lines the math an engine needs for each family; scripts/make-family-goldens.sh
runs it after generate.py and fails when the goldens and it disagree by more than TOL.

Usage: numpy_reference.py [family ...]   (default: all five)
"""
import json
import math
import os
import sys

import numpy as np
from safetensors.torch import load_file  # the weights are bf16, which numpy cannot hold

HERE = os.path.dirname(os.path.abspath(__file__))  # tests/golden/families
GOLDEN = os.path.dirname(HERE)  # tests/golden
TOL = 2e-5
ALL = ["qwen2", "qwen3", "gemma3", "mistral", "phi3"]


def load(path):
    return {k: v.float().numpy().astype(np.float64) for k, v in load_file(path).items()}


def rms(x, w, eps, gemma):
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y * ((1.0 + w) if gemma else w)  # Gemma's norm scales by (1 + w)


def rope(x, pos, theta):
    """x [T, heads, D]; HF rotate_half layout: dim i pairs with dim i + D/2."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.concatenate([pos[:, None] * inv[None]] * 2, -1)[:, None]
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * np.cos(ang) + rot * np.sin(ang)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1 + np.exp(-x))


def forward(fam, cfg, w, lora, ids):
    """Logits at the last position of `ids` (no cache)."""
    gemma = fam == "gemma3"
    h, nq, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nq  # qwen2 and phi3 write no head_dim
    eps = cfg["rms_norm_eps"]
    n = len(ids)
    pos = np.arange(n, dtype=np.float64)

    def lin(x, key):  # y = W x + b + scale * B (A x)
        y = x @ w[key + ".weight"].T
        if key + ".bias" in w:
            y = y + w[key + ".bias"]
        if lora is not None:
            scale, t = lora
            a = "base_model.model." + key + ".lora_A.weight"
            if a in t:
                y = y + scale * ((x @ t[a].T) @ t[a.replace("lora_A", "lora_B")].T)
        return y

    x = w["model.embed_tokens.weight"][ids]
    if gemma:
        x = x * float(np.float32(math.sqrt(h)))  # transformers holds sqrt(hidden) as an f32 buffer
    layer_types = cfg.get("layer_types") or ["full_attention"] * cfg["num_hidden_layers"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        lt = layer_types[i]
        if fam == "mistral":
            window = cfg["sliding_window"]
        elif fam == "gemma3":
            window = cfg["sliding_window"] if lt == "sliding_attention" else None
        else:
            window = None  # qwen2/qwen3: use_sliding_window false; phi3: sliding_window null
        theta = cfg["rope_parameters"][lt]["rope_theta"] if gemma else cfg["rope_parameters"]["rope_theta"]

        xn = rms(x, w[p + "input_layernorm.weight"], eps, gemma)
        if fam == "phi3":  # fused rows: [q (nq*hd) | k (nkv*hd) | v (nkv*hd)]
            qkv = lin(xn, p + "self_attn.qkv_proj")
            q, k, v = qkv[:, : nq * hd], qkv[:, nq * hd: (nq + nkv) * hd], qkv[:, (nq + nkv) * hd:]
        else:
            q, k, v = (lin(xn, p + f"self_attn.{m}_proj") for m in "qkv")
        q, k, v = q.reshape(n, nq, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
        if fam in ("qwen3", "gemma3"):  # per-head RMSNorm over head_dim, before RoPE
            q = rms(q, w[p + "self_attn.q_norm.weight"], eps, gemma)
            k = rms(k, w[p + "self_attn.k_norm.weight"], eps, gemma)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        scale = cfg["query_pre_attn_scalar"] ** -0.5 if gemma else hd**-0.5
        k, v = np.repeat(k, nq // nkv, axis=1), np.repeat(v, nq // nkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) * scale  # Gemma 3: no attention softcapping
        qi, ki = np.arange(n)[:, None], np.arange(n)[None]
        mask = ki <= qi
        if window is not None:
            mask &= ki > qi - window  # a query sees itself and the window-1 keys before it
        s = np.where(mask[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = lin(np.einsum("hqk,khd->qhd", s, v).reshape(n, nq * hd), p + "self_attn.o_proj")

        if gemma:  # sandwich norms
            x = x + rms(a, w[p + "post_attention_layernorm.weight"], eps, True)
            xn = rms(x, w[p + "pre_feedforward_layernorm.weight"], eps, True)
        else:
            x = x + a
            xn = rms(x, w[p + "post_attention_layernorm.weight"], eps, False)
        if fam == "phi3":  # fused rows: [gate (I) | up (I)]
            gu = lin(xn, p + "mlp.gate_up_proj")
            g, u = gu[:, : cfg["intermediate_size"]], gu[:, cfg["intermediate_size"]:]
        else:
            g, u = lin(xn, p + "mlp.gate_proj"), lin(xn, p + "mlp.up_proj")
        m = lin((gelu_tanh(g) if gemma else silu(g)) * u, p + "mlp.down_proj")
        x = x + (rms(m, w[p + "post_feedforward_layernorm.weight"], eps, True) if gemma else m)

    x = rms(x[-1:], w["model.norm.weight"], eps, gemma)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])  # tied when lm_head is absent
    logits = (x @ head.T)[0]
    if gemma and cfg.get("final_logit_softcapping"):
        c = cfg["final_logit_softcapping"]
        logits = c * np.tanh(logits / c)
    return logits


def check(fam):
    doc = json.load(open(os.path.join(HERE, f"{fam}_cases.json")))
    cfg = json.load(open(os.path.join(HERE, fam, "config.json")))
    w = load(os.path.join(HERE, fam, "model.safetensors"))
    full_file = doc.get("full_logits_file")
    full = np.load(os.path.join(GOLDEN, full_file["file"])) if full_file else None
    worst_last, worst_step, wrong_ids, min_margin = 0.0, 0.0, 0, float("inf")
    for vi, var in enumerate(doc["variants"]):
        lora = None
        if var != "base":
            a = doc["adapters"][var]
            lora = (a["effective_scaling"], load(os.path.join(GOLDEN, a["dir"], "adapter_model.safetensors")))
        for case in doc["cases"]:
            res = case["results"][var]
            lg = forward(fam, cfg, w, lora, case["input_ids"])
            d = max(abs(lg[i] - l) for i, l in res["top"])
            lse = lg.max() + np.log(np.exp(lg - lg.max()).sum())
            d = max(d, abs(lse - res["logsumexp"]))
            if full is not None and vi < full.shape[0]:
                d = max(d, float(np.abs(lg - full[vi, case["index"]]).max()))
            worst_last = max(worst_last, d)
            seq = list(case["input_ids"])
            for k, want in enumerate(res["greedy_ids"]):
                lg = lg if k == 0 else forward(fam, cfg, w, lora, seq)
                top2 = np.sort(lg)[-2:]
                min_margin = min(min_margin, top2[1] - top2[0])
                wrong_ids += int(np.argmax(lg)) != want
                worst_step = max(worst_step, abs(lg[want] - res["greedy_steps"][k]["logit"]))
                seq.append(want)
    print(f"{fam}: last-position max |d| {worst_last:.2e}, greedy-step logit max |d| {worst_step:.2e}, "
          f"greedy ids differing {wrong_ids}, smallest f64 margin {min_margin:.2e}")
    return wrong_ids == 0 and worst_last <= TOL and worst_step <= TOL


def main():
    ok = all([check(f) for f in (sys.argv[1:] or ALL)])
    if not ok:
        sys.exit("numpy_reference: the goldens and the numpy re-implementation disagree")


if __name__ == "__main__":
    main()
