#!/usr/bin/env python3
"""Writes the golden references of tests/golden/families/ (see tests/golden/README.md).

Five tiny random models -- qwen2, qwen3, gemma3 (text), mistral, phi3 -- each with three PEFT
LoRA adapters, and one case file per family computed by Hugging Face transformers + PEFT on CPU
in float32 with eager attention. Run through scripts/make-family-goldens.sh, which pins the
versions; everything is seeded, and every figure is computed from the files as reloaded from
disk (weights stored as bfloat16, loaded with dtype=torch.float32).
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch_file
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

HERE = os.path.dirname(os.path.abspath(__file__))  # tests/golden/families
GOLDEN = os.path.dirname(HERE)  # tests/golden
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]

VOCAB = 49152
N_NEW = 16
TOP_K = 20
NEAR_TIE = 1e-3  # greedy steps whose top1-top2 margin is below this are listed in near_tie_steps
EOS = 2
PAD = 2
PROMPT_LENGTHS = [1, 3, 7, 12, 17, 24]
PROMPT_SEED = 20240601
MIN_MARGIN = 2e-3  # a prompt is redrawn while some variant's greedy step has a smaller top1-top2 margin
MAX_ATTEMPTS = 50
MODEL_SEED = 0  # torch.manual_seed before constructing each model
NORM_SEED = 1  # torch.Generator seed for the norm-weight perturbation
BIAS_SEED = 2  # torch.Generator seed for the q/k/v biases (qwen2)
LORA_STD = 0.1
WRITE_FULL_LOGITS = True  # <name>_last_logits.npy: base variant, all cases, f32 [1, 6, 49152] (1.2 MB)

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=EOS,
    pad_token_id=PAD,
)

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


def adapters_std(seed0):
    return [
        dict(name="a-r8-qv", r=8, lora_alpha=16, use_rslora=False, target_modules=["q_proj", "v_proj"], seed=seed0 + 1),
        dict(name="b-r16-all", r=16, lora_alpha=32, use_rslora=False, target_modules=ATTN + MLP, seed=seed0 + 2),
        dict(name="c-r4-rslora", r=4, lora_alpha=8, use_rslora=True, target_modules=["o_proj", "down_proj"], seed=seed0 + 3),
    ]


FAMILIES = [
    dict(
        name="qwen2",
        config_cls=Qwen2Config,
        model_cls=Qwen2ForCausalLM,
        config=dict(
            COMMON,
            num_hidden_layers=2,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
            use_sliding_window=False,
        ),
        gemma_norm=False,
        qkv_bias=True,
        features=["qkv_bias", "untied_lm_head", "head_dim=8", "gqa_4q_2kv", "rope_theta=1e6",
                  "use_sliding_window=false (config.json sliding_window null)", "norm_weights_perturbed"],
        adapters=adapters_std(200),
    ),
    dict(
        name="qwen3",
        config_cls=Qwen3Config,
        model_cls=Qwen3ForCausalLM,
        config=dict(
            COMMON,
            num_hidden_layers=2,
            head_dim=16,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True,
            attention_bias=False,
            use_sliding_window=False,
        ),
        gemma_norm=False,
        features=["qk_norm (per-head RMSNorm on q and k before RoPE)", "tied_embeddings",
                  "head_dim=16 (q width 64 != hidden 32)", "no_bias", "gqa_4q_2kv", "rope_theta=1e6",
                  "norm_weights_perturbed"],
        adapters=adapters_std(300),
    ),
    dict(
        name="gemma3",
        config_cls=Gemma3TextConfig,
        model_cls=Gemma3ForCausalLM,
        config=dict(
            COMMON,
            num_hidden_layers=4,
            head_dim=16,
            rms_norm_eps=1e-6,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=12,
            sliding_window=4,
            sliding_window_pattern=4,
            layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
            final_logit_softcapping=10.0,
            attn_logit_softcapping=None,
            tie_word_embeddings=True,
        ),
        gemma_norm=True,
        features=["gemma_rmsnorm (x*(1+w), computed in f32)", "qk_norm", "sandwich_norms (4 per layer)",
                  "embed_scale=sqrt(hidden)", "geglu (gelu_pytorch_tanh)", "query_pre_attn_scalar=12 (scale 12^-0.5, head_dim 16)",
                  "sliding_window=4 on layers 0-2, global on layer 3",
                  "dual_rope (local theta 1e4, global theta 1e6)", "final_logit_softcapping=10",
                  "attn_logit_softcapping=null (not applied by transformers' Gemma3 attention)",
                  "tied_embeddings", "head_dim=16 (q width 64 != hidden 32)", "norm_weights_perturbed"],
        adapters=adapters_std(400),
    ),
    dict(
        name="mistral",
        config_cls=MistralConfig,
        model_cls=MistralForCausalLM,
        config=dict(
            COMMON,
            num_hidden_layers=2,
            head_dim=8,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            sliding_window=4,
            tie_word_embeddings=False,
        ),
        gemma_norm=False,
        features=["sliding_window=4 on every layer", "untied_lm_head", "head_dim=8", "gqa_4q_2kv",
                  "rope_theta=1e6", "norm_weights_perturbed"],
        adapters=adapters_std(500),
    ),
    dict(
        name="phi3",
        config_cls=Phi3Config,
        model_cls=Phi3ForCausalLM,
        config=dict(
            COMMON,
            num_hidden_layers=2,
            rms_norm_eps=1e-5,
            original_max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
            tie_word_embeddings=False,
            sliding_window=None,
        ),
        gemma_norm=False,
        features=["fused qkv_proj [q|k|v rows]", "fused gate_up_proj [gate|up rows]", "untied_lm_head",
                  "head_dim=8", "gqa_4q_2kv", "default rope, partial_rotary_factor 1.0", "norm_weights_perturbed",
                  "lora on fused modules"],
        adapters=[
            dict(name="a-r8-qkv", r=8, lora_alpha=16, use_rslora=False, target_modules=["qkv_proj"], seed=601),
            dict(name="b-r16-all", r=16, lora_alpha=32, use_rslora=False,
                 target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], seed=602),
            dict(name="c-r4-rslora", r=4, lora_alpha=8, use_rslora=True, target_modules=["o_proj", "down_proj"], seed=603),
        ],
    ),
]


# ----------------------------------------------------------------------------- helpers


def maxdiff(a, b):
    return float((a.float() - b.float()).abs().max())


def model_dir(fam):
    return os.path.join(HERE, fam["name"])


def adapter_dir(fam, ad):
    return os.path.join(HERE, f"{fam['name']}-adapters", ad["name"])


def load_base(fam, attn="eager", **overrides):
    m = AutoModelForCausalLM.from_pretrained(
        model_dir(fam), dtype=torch.float32, attn_implementation=attn, **overrides
    )
    return m.eval()


def no_eos(model):
    """Greedy runs never stop at EOS: drop it from the loaded (in-memory) generation config."""
    gc = model.generation_config
    gc.eos_token_id = None
    gc.pad_token_id = PAD
    return model


def load_variant(fam, variant, attn="eager"):
    base = load_base(fam, attn)
    if variant == "base":
        return no_eos(base)
    ad = next(a for a in fam["adapters"] if a["name"] == variant)
    pm = PeftModel.from_pretrained(base, adapter_dir(fam, ad)).eval()
    no_eos(pm.base_model.model)
    return pm


@torch.no_grad()
def last_logits(model, ids, **kw):
    t = torch.tensor([ids])
    return model(input_ids=t, attention_mask=torch.ones_like(t), use_cache=False, **kw).logits[0, -1].float()


@torch.no_grad()
def greedy(model, ids, **kw):
    t = torch.tensor([ids])
    out = model.generate(
        input_ids=t,
        attention_mask=torch.ones_like(t),
        do_sample=False,
        max_new_tokens=N_NEW,
        eos_token_id=None,
        pad_token_id=PAD,
        return_dict_in_generate=True,
        output_logits=True,
        output_scores=True,
        **kw,
    )
    new = out.sequences[0, len(ids):].tolist()
    logits = torch.stack([l[0] for l in out.logits]).float()  # [steps, vocab], raw
    scores = torch.stack([s[0] for s in out.scores]).float()  # after logits processors
    return new, logits, scores


def top(logits, k=TOP_K):
    v, i = torch.topk(logits, k)
    return [[int(a), float(b)] for a, b in zip(i, v)]


def lse(logits):
    return float(torch.logsumexp(logits.double(), dim=-1))


def step_info(step_logits):
    steps = []
    for row in step_logits:
        v, i = torch.topk(row, 2)
        steps.append({"id": int(i[0]), "logit": float(v[0]), "margin": float(v[0] - v[1]), "runner_up": int(i[1])})
    return steps


def norm_modules(model):
    return [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("RMSNorm")]


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=True)
        f.write("\n")


def rel(path):
    return os.path.relpath(path, GOLDEN)


# ----------------------------------------------------------------------------- making the files


def make_model(fam):
    d = model_dir(fam)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    cfg = fam["config_cls"](**fam["config"])
    cfg._attn_implementation = "eager"
    torch.manual_seed(MODEL_SEED)
    model = fam["model_cls"](cfg).eval()
    g = torch.Generator().manual_seed(NORM_SEED)
    with torch.no_grad():
        for _, m in norm_modules(model):
            noise = 0.1 * torch.randn(m.weight.shape, generator=g)
            m.weight.copy_(noise if fam["gemma_norm"] else 1.0 + noise)
        if fam.get("qkv_bias"):
            gb = torch.Generator().manual_seed(BIAS_SEED)
            for layer in model.model.layers:
                for p in ("q_proj", "k_proj", "v_proj"):
                    b = getattr(layer.self_attn, p).bias
                    b.copy_(0.2 * torch.randn(b.shape, generator=gb))
    model.to(torch.bfloat16).save_pretrained(d)
    os.chmod(os.path.join(d, "model.safetensors"), 0o644)
    for f in TOKENIZER_FILES:
        os.symlink(os.path.join("..", "..", "tiny-llama", f), os.path.join(d, f))
        assert os.path.exists(os.path.join(d, f)), f"symlink {f} does not resolve"


def make_adapter(fam, ad):
    d = adapter_dir(fam, ad)
    if os.path.exists(d):
        shutil.rmtree(d)
    base = load_base(fam)
    cfg = LoraConfig(
        r=ad["r"],
        lora_alpha=ad["lora_alpha"],
        target_modules=list(ad["target_modules"]),
        lora_dropout=0.0,
        bias="none",
        use_rslora=ad["use_rslora"],
        task_type="CAUSAL_LM",
    )
    pm = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(ad["seed"])
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if ".lora_A." in n or ".lora_B." in n:
                p.copy_(LORA_STD * torch.randn(p.shape, generator=g))
    pm.peft_config["default"].base_model_name_or_path = fam["name"]
    pm.save_pretrained(d)
    os.chmod(os.path.join(d, "adapter_model.safetensors"), 0o644)
    readme = os.path.join(d, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


# ----------------------------------------------------------------------------- references


def weights_are_bf16_exact(fam):
    """The f32 model as loaded holds exactly the bf16 values of model.safetensors, upcast."""
    st = load_torch_file(os.path.join(model_dir(fam), "model.safetensors"))
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in st.values()})
    sd = load_base(fam).state_dict()
    ok = True
    for k, v in st.items():
        p = sd[k]
        ok &= p.dtype == torch.float32 and bool(torch.equal(p, v.float()))
    return ok, dtypes, sorted(st.keys())


def one_case(model, ids, tok, stats):
    lg = last_logits(model, ids)
    stats["rerun"] = max(stats["rerun"], maxdiff(lg, last_logits(model, ids)))
    new, sl, sc = greedy(model, ids)
    assert len(new) == N_NEW
    steps = step_info(sl)
    stats["argmax"] &= [s["id"] for s in steps] == new
    stats["step0"] = max(stats["step0"], maxdiff(sl[0], lg))
    stats["scores"] = max(stats["scores"], maxdiff(sl, sc))
    with torch.no_grad():
        full_seq = torch.tensor([ids + new[:-1]])
        fl = model(input_ids=full_seq, attention_mask=torch.ones_like(full_seq), use_cache=False).logits[0]
    stats["kv"] = max(stats["kv"], maxdiff(fl[len(ids) - 1:], sl))
    v2, _ = torch.topk(lg, 2)
    r = {
        "top": top(lg),
        "logsumexp": lse(lg),
        "argmax": int(torch.argmax(lg)),
        "top1_minus_top2": float(v2[0] - v2[1]),
        "greedy_ids": new,
        "greedy_text": tok.decode(new, skip_special_tokens=False),
        "greedy_steps": steps,
        "eos_positions_in_greedy": [i for i, t in enumerate(new) if t == EOS],
        "near_tie_steps": [i for i, s in enumerate(steps) if s["margin"] < NEAR_TIE],
    }
    return r, sl, lg


def run_family(fam, tok):
    name = fam["name"]
    print(f"== {name}", flush=True)
    make_model(fam)
    for ad in fam["adapters"]:
        make_adapter(fam, ad)

    variants = ["base"] + [a["name"] for a in fam["adapters"]]
    checks = {}

    with open(os.path.join(model_dir(fam), "config.json")) as f:
        config_json = json.load(f)

    # ---- per-variant single-request results; each case's prompt is the first draw whose greedy
    # steps keep a top1-top2 margin >= MIN_MARGIN under every variant (no rounding-sensitive ties)
    models = {v: load_variant(fam, v) for v in variants}
    rng = np.random.default_rng(PROMPT_SEED)
    cases_ids, attempts = [], []
    results = {v: [] for v in variants}
    step_logits = {v: [] for v in variants}  # generate's raw logits per case, [16, vocab]
    last = {v: [] for v in variants}
    stats = dict(kv=0.0, step0=0.0, scores=0.0, rerun=0.0, argmax=True)
    for n in PROMPT_LENGTHS:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            ids = [int(x) for x in rng.integers(3, VOCAB, size=n)]
            got = {v: one_case(models[v], ids, tok, stats) for v in variants}
            worst = min(s["margin"] for r, _, _ in got.values() for s in r["greedy_steps"])
            if worst >= MIN_MARGIN or attempt == MAX_ATTEMPTS:
                break
        cases_ids.append(ids)
        attempts.append(attempt)
        for v in variants:
            r, sl, lg = got[v]
            results[v].append(r)
            step_logits[v].append(sl)
            last[v].append(lg)
    del models

    base_greedy = [r["greedy_ids"] for r in results["base"]]
    checks["all_base_greedy_single_repeated_token"] = all(len(set(g)) == 1 for g in base_greedy)
    checks["adapter_changes_greedy"] = {
        v: sum(results[v][i]["greedy_ids"] != base_greedy[i] for i in range(len(cases_ids))) for v in variants[1:]
    }
    checks["adapter_changes_last_logits_min_max_abs_diff"] = {
        v: min(maxdiff(last[v][i], last["base"][i]) for i in range(len(cases_ids))) for v in variants[1:]
    }
    checks["rerun_same_process_max_abs_diff_last_logits"] = stats["rerun"]
    checks["generate_step0_vs_full_forward_max_abs_diff"] = stats["step0"]
    checks["kv_cache_generate_vs_no_cache_forward_max_abs_diff"] = stats["kv"]
    checks["generate_scores_vs_raw_logits_max_abs_diff (0 = no logits processor was active)"] = stats["scores"]
    checks["greedy_ids_equal_argmax_of_step_logits"] = stats["argmax"]
    checks["prompt_draws_per_case"] = attempts
    ok, dtypes, keys = weights_are_bf16_exact(fam)
    checks["loaded_f32_weights_equal_bf16_file_values_upcast"] = ok
    checks["model_safetensors_dtypes"] = dtypes
    checks["model_safetensors_tensor_count"] = len(keys)

    # ---- sdpa vs eager (base)
    sd = no_eos(load_base(fam, attn="sdpa"))
    d, geq = 0.0, True
    for i, ids in enumerate(cases_ids):
        d = max(d, maxdiff(last_logits(sd, ids), last["base"][i]))
        geq &= greedy(sd, ids)[0] == base_greedy[i]
    checks["sdpa_vs_eager_max_abs_diff_last_logits"] = d
    checks["sdpa_vs_eager_greedy_equal"] = geq
    del sd

    # ---- merged vs unmerged LoRA
    d, geq = 0.0, True
    for v in variants[1:]:
        merged = no_eos(load_variant(fam, v).merge_and_unload().eval())
        for i, ids in enumerate(cases_ids):
            d = max(d, maxdiff(last_logits(merged, ids), last[v][i]))
            geq &= greedy(merged, ids)[0] == results[v][i]["greedy_ids"]
        del merged
    checks["lora_merged_vs_unmerged_max_abs_diff_last_logits"] = d
    checks["lora_merged_vs_unmerged_greedy_equal"] = geq

    # ---- one mixed-adapter, left-padded batch
    batch_adapters = ["base", variants[1], variants[2], variants[3], variants[1], "base"]
    base = load_base(fam)
    pm = None
    for ad in fam["adapters"]:
        if pm is None:
            pm = PeftModel.from_pretrained(base, adapter_dir(fam, ad), adapter_name=ad["name"])
        else:
            pm.load_adapter(adapter_dir(fam, ad), adapter_name=ad["name"])
    pm.eval()
    no_eos(pm.base_model.model)
    maxlen = max(len(p) for p in cases_ids)
    inp = torch.tensor([[PAD] * (maxlen - len(p)) + p for p in cases_ids])
    att = torch.tensor([[0] * (maxlen - len(p)) + [1] * len(p) for p in cases_ids])
    names = ["__base__" if a == "base" else a for a in batch_adapters]
    with torch.no_grad():
        out = pm.generate(
            input_ids=inp, attention_mask=att, adapter_names=names, do_sample=False, max_new_tokens=N_NEW,
            eos_token_id=None, pad_token_id=PAD, return_dict_in_generate=True, output_logits=True,
        )
    d_first, d_all, geq = 0.0, 0.0, True
    for i, a in enumerate(batch_adapters):
        got = out.sequences[i, maxlen:].tolist()
        geq &= got == results[a][i]["greedy_ids"]
        d_first = max(d_first, maxdiff(out.logits[0][i], step_logits[a][i][0]))
        if got == results[a][i]["greedy_ids"]:
            d_all = max(d_all, maxdiff(torch.stack([l[i] for l in out.logits]), step_logits[a][i]))
    checks["peft_mixed_adapter_left_padded_batch_vs_single_max_abs_diff_first_step_logits"] = d_first
    checks["peft_mixed_adapter_left_padded_batch_vs_single_max_abs_diff_all_step_logits"] = d_all
    checks["peft_mixed_adapter_left_padded_batch_greedy_equal"] = geq
    del pm, base

    # ---- figures
    checks["min_top1_top2_margin_over_all_greedy_steps"] = min(
        s["margin"] for v in variants for r in results[v] for s in r["greedy_steps"]
    )
    checks["max_abs_logit_base"] = max(float(l.abs().max()) for l in last["base"])
    checks["max_abs_logit_all_variants_last_position"] = max(float(l.abs().max()) for v in variants for l in last[v])

    # ---- what the tiny model would miss if an engine ignored it
    fam_checks = family_checks(fam, cases_ids, last["base"], base_greedy)
    checks.update(fam_checks)

    # ---- files
    cases = []
    for i, ids in enumerate(cases_ids):
        cases.append({
            "index": i,
            "input_ids": ids,
            "n_prompt_tokens": len(ids),
            "results": {v: results[v][i] for v in variants},
            "distinct_greedy_tokens_base": len(set(base_greedy[i])),
        })
    batch_case = {
        "description": "The 6 prompts as ONE batch with per-request adapters. Expected outputs are exactly the per-prompt "
                       "single-request results (cases[i].results[adapter]); copied here for convenience. 'base' means no "
                       "adapter. transformers ran it left-padded with pad id 2 and an attention mask, PEFT adapter_names "
                       "('__base__' for base).",
        "adapters": batch_adapters,
        "expected": [
            {
                "prompt_index": i,
                "adapter": a,
                "input_ids": cases_ids[i],
                "top": results[a][i]["top"],
                "logsumexp": results[a][i]["logsumexp"],
                "greedy_ids": results[a][i]["greedy_ids"],
                "greedy_text": results[a][i]["greedy_text"],
            }
            for i, a in enumerate(batch_adapters)
        ],
    }
    adapters = {}
    for ad in fam["adapters"]:
        with open(os.path.join(adapter_dir(fam, ad), "adapter_config.json")) as f:
            acfg = json.load(f)
        scale = ad["lora_alpha"] / (math.sqrt(ad["r"]) if ad["use_rslora"] else ad["r"])
        st = load_file(os.path.join(adapter_dir(fam, ad), "adapter_model.safetensors"))
        adapters[ad["name"]] = {
            "dir": rel(adapter_dir(fam, ad)),
            "r": acfg["r"],
            "lora_alpha": acfg["lora_alpha"],
            "use_rslora": acfg["use_rslora"],
            "target_modules": sorted(acfg["target_modules"]),
            "effective_scaling": scale,
            "init_seed": ad["seed"],
            "init": f"lora_A, lora_B ~ N(0, {LORA_STD}^2) (torch.Generator seed init_seed, in named_parameters order)",
            "tensors": {k: list(v.shape) for k, v in sorted(st.items())},
        }
    doc = {
        "description": (
            f"Goldens for the tiny random {fam['model_cls'].__name__} ({name}/) and its LoRA adapters ({name}-adapters/). "
            "Prompts are token ids drawn uniformly from [3, 49152) (one numpy default_rng(%d) stream, lengths %s); a "
            "draw is kept only if every variant's 16 greedy steps have top1-top2 margin >= %g, else the next draw is "
            "taken (checks.prompt_draws_per_case), so no greedy step is a near tie. No tokenizer is involved "
            "(greedy_text is decoded with ../tiny-llama/tokenizer.json, skip_special_tokens=False, for reading only). "
            "Weights are stored as bfloat16 and were loaded with dtype=torch.float32, so the reference is exactly the "
            "bf16 values upcast to f32 and run in f32 (eager attention, CPU). 'top' = top-20 [token_id, logit] at the "
            "LAST prompt position of a full-sequence (no cache) forward; 'logsumexp' over the full vocab (float64 from "
            "float32 logits). greedy_ids = model.generate(do_sample=False, max_new_tokens=16) with KV cache, "
            "eos_token_id=None so it never stops at EOS (eos_positions_in_greedy lists where id 2 appeared). "
            "greedy_steps[k] = argmax id, its logit, margin to runner-up, runner-up id at generation step k "
            "(generate's raw logits); near_tie_steps lists steps with margin < %g." % (PROMPT_SEED, PROMPT_LENGTHS, MIN_MARGIN, NEAR_TIE)
        ),
        "generator": {
            "script": "tests/golden/families/generate.py (via scripts/make-family-goldens.sh)",
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
            "dtype": "float32 (weights stored bfloat16, loaded with dtype=torch.float32)",
            "attn_implementation": "eager",
            "device": "cpu",
            "torch_num_threads": torch.get_num_threads(),
        },
        "model_dir": rel(model_dir(fam)),
        "architecture": fam["model_cls"].__name__,
        "features": fam["features"],
        "model_config": config_json,
        "init": (
            f"torch.manual_seed({MODEL_SEED}); {fam['model_cls'].__name__}(config) with initializer_range=0.2; then every "
            + ("Gemma3RMSNorm weight (computes x*(1+w)) set to 0.1*N(0,1)" if fam["gemma_norm"] else "RMSNorm weight set to 1 + 0.1*N(0,1)")
            + f" with torch.Generator seed {NORM_SEED} in named_modules order"
            + (f"; q/k/v biases set to 0.2*N(0,1) with torch.Generator seed {BIAS_SEED}" if fam.get("qkv_bias") else "")
            + "; saved as bfloat16 (model.to(torch.bfloat16).save_pretrained)."
        ),
        "adapters": adapters,
        "variants": variants,
        "cases": cases,
        "batch_case": batch_case,
        "checks": checks,
    }
    if WRITE_FULL_LOGITS:
        npy = os.path.join(HERE, f"{name}_last_logits.npy")
        arr = torch.stack(last["base"]).numpy().astype(np.float32)[None]
        np.save(npy, arr)
        doc["full_logits_file"] = {
            "file": rel(npy),
            "shape": list(arr.shape),
            "dtype": "float32",
            "index": "[variant index (only 0 = base is stored), case index, token id]",
        }
    write_json(os.path.join(HERE, f"{name}_cases.json"), doc)
    print(json.dumps(checks, indent=1), flush=True)


def family_checks(fam, cases_ids, base_last, base_greedy):
    """Figures showing that each family-specific feature changes transformers' output."""
    name = fam["name"]
    out = {}

    def diff_per_case(model):
        return [maxdiff(last_logits(model, ids), base_last[i]) for i, ids in enumerate(cases_ids)]

    # Norm weights matter (set every norm to neutral: 1, or 0 for Gemma's (1+w) norm).
    m = load_base(fam)
    with torch.no_grad():
        for _, nm in norm_modules(m):
            nm.weight.fill_(0.0 if fam["gemma_norm"] else 1.0)
    out["neutral_norm_weights_vs_perturbed_max_abs_diff_last_logits_per_case"] = diff_per_case(m)
    del m

    if name == "qwen2":
        m = load_base(fam)
        with torch.no_grad():
            for layer in m.model.layers:
                for p in ("q_proj", "k_proj", "v_proj"):
                    getattr(layer.self_attn, p).bias.zero_()
        out["qkv_bias_zeroed_vs_stored_max_abs_diff_last_logits_per_case"] = diff_per_case(m)
        m = load_base(fam)
        out["layer_types"] = list(m.config.layer_types)
        out["config_sliding_window_after_load"] = m.config.sliding_window
        # use_sliding_window=false wins over any sliding_window value
        m = load_base(fam, sliding_window=4)
        out["use_sliding_window_false_with_sliding_window_4_vs_stored_max_abs_diff_per_case"] = diff_per_case(m)
        out["lm_head_is_tied"] = m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    if name == "qwen3":
        m = load_base(fam)
        with torch.no_grad():
            for layer in m.model.layers:
                layer.self_attn.q_norm.weight.fill_(1.0)
                layer.self_attn.k_norm.weight.fill_(1.0)
        out["qk_norm_weights_set_to_one_vs_stored_max_abs_diff_per_case"] = diff_per_case(m)
        m = load_base(fam)
        out["lm_head_is_tied"] = m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    if name == "gemma3":
        m = load_base(fam, attn_logit_softcapping=5.0)
        out["attn_logit_softcapping_5_vs_null_max_abs_diff_per_case (0 = transformers ignores it)"] = diff_per_case(m)
        m = load_base(fam, attn="sdpa", attn_logit_softcapping=5.0)
        out["attn_logit_softcapping_5_sdpa_vs_null_eager_max_abs_diff_per_case"] = diff_per_case(m)
        m = load_base(fam, final_logit_softcapping=None)
        out["final_logit_softcapping_null_vs_10_max_abs_diff_per_case"] = diff_per_case(m)
        m = load_base(fam, sliding_window=4096)
        out["sliding_window_4096_vs_4_max_abs_diff_per_case (0 while prompt <= window)"] = diff_per_case(m)
        m = load_base(fam, layer_types=["full_attention"] * 4)
        out["all_layers_full_attention_vs_stored_max_abs_diff_per_case (also moves layers 0-2 to the global rope theta)"] = diff_per_case(m)
        for w in (3, 5):
            m = load_base(fam, sliding_window=w)
            out[f"sliding_window_{w}_vs_4_max_abs_diff_per_case"] = diff_per_case(m)
        m = load_base(fam)
        out["embed_scale_f32"] = float(m.model.embed_tokens.embed_scale)
        out["attention_scaling"] = float(m.model.layers[0].self_attn.scaling)
        out["layer_types"] = list(m.config.layer_types)
        out["lm_head_is_tied"] = m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
        # rope thetas per layer type actually used
        out["rope_theta_per_layer_type"] = {k: v["rope_theta"] for k, v in m.config.rope_parameters.items()}
        m = load_base(fam, rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        })
        out["local_rope_theta_1e6_vs_1e4_max_abs_diff_per_case"] = diff_per_case(m)
    if name == "mistral":
        m = load_base(fam, sliding_window=None)
        out["sliding_window_null_vs_4_max_abs_diff_per_case (0 while prompt <= window)"] = diff_per_case(m)
        m = load_base(fam, sliding_window=5)
        out["sliding_window_5_vs_4_max_abs_diff_per_case"] = diff_per_case(m)
        m = no_eos(load_base(fam, sliding_window=None))
        out["sliding_window_null_changes_greedy_cases"] = [
            i for i, ids in enumerate(cases_ids) if greedy(m, ids)[0] != base_greedy[i]
        ]
        m = load_base(fam)
        out["lm_head_is_tied"] = m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    if name == "phi3":
        out.update(phi3_split_checks(fam, cases_ids, base_last))
    return out


def phi3_to_llama(phi, cfg):
    """Split Phi3's fused qkv_proj / gate_up_proj rows into a LlamaForCausalLM with the same weights."""
    h, nq, nkv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    hd = h // nq
    lc = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=h, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=nq, num_key_value_heads=nkv, head_dim=hd,
        rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"]},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
    )
    lc._attn_implementation = "eager"
    llama = LlamaForCausalLM(lc).eval()
    sd = phi.state_dict()
    new = {}
    for k, v in sd.items():
        if k.endswith("qkv_proj.weight"):
            p = k[: -len("qkv_proj.weight")]
            new[p + "q_proj.weight"] = v[: nq * hd]
            new[p + "k_proj.weight"] = v[nq * hd: (nq + nkv) * hd]
            new[p + "v_proj.weight"] = v[(nq + nkv) * hd:]
        elif k.endswith("gate_up_proj.weight"):
            p = k[: -len("gate_up_proj.weight")]
            new[p + "gate_proj.weight"] = v[: cfg.intermediate_size]
            new[p + "up_proj.weight"] = v[cfg.intermediate_size:]
        else:
            new[k] = v
    missing, unexpected = llama.load_state_dict(new, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return llama


def phi3_split_checks(fam, cases_ids, base_last):
    out = {}
    phi = load_base(fam)
    llama = phi3_to_llama(phi, phi.config)
    out["split_into_llama_q|k|v_gate|up_vs_phi3_max_abs_diff_per_case"] = [
        maxdiff(last_logits(llama, ids), base_last[i]) for i, ids in enumerate(cases_ids)
    ]
    # LoRA on the fused modules = LoRA on each part with the same A and the rows of B split alike:
    # merge the all-module adapter into Phi3, split, and compare with PEFT's unmerged forward.
    ad = next(a for a in fam["adapters"] if a["name"] == "b-r16-all")
    pm = load_variant(fam, ad["name"])
    want = [last_logits(pm, ids) for ids in cases_ids]
    merged = pm.merge_and_unload().eval()
    llama = phi3_to_llama(merged, merged.config)
    out["b-r16-all_merged_then_split_into_llama_vs_phi3_peft_unmerged_max_abs_diff_per_case"] = [
        maxdiff(last_logits(llama, ids), want[i]) for i, ids in enumerate(cases_ids)
    ]
    # Swapping q|k|v order (here k and v) would be caught:
    phi2 = load_base(fam)
    with torch.no_grad():
        for layer in phi2.model.layers:
            w = layer.self_attn.qkv_proj.weight
            q, k, v = w[:32].clone(), w[32:48].clone(), w[48:].clone()
            w.copy_(torch.cat([q, v, k]))
    out["qkv_rows_as_q|v|k_vs_stored_max_abs_diff_per_case"] = [
        maxdiff(last_logits(phi2, ids), base_last[i]) for i, ids in enumerate(cases_ids)
    ]
    return out


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tok = Tokenizer.from_file(os.path.join(GOLDEN, "tiny-llama", "tokenizer.json"))
    only = sys.argv[1:]
    for fam in FAMILIES:
        if only and fam["name"] not in only:
            continue
        run_family(fam, tok)


if __name__ == "__main__":
    main()
