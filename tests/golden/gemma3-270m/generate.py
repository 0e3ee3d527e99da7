"""Reference data for weights/gemma-3-270m-q4_k_m.gguf (see README.md beside this file).

Run through scripts/make-gemma3-goldens.sh, which sets up the virtual environment and finds
llama-server. Writes, next to this file:

  tokenizer_cases.json     transformers' and llama.cpp's tokenization of ~50 strings, plus a
                           "converter" section: how transformers builds its tokenizer from the GGUF
  tokenizer_skeleton.json  transformers' backend tokenizer.json without vocab and merges
  llamacpp_cases.json      llama.cpp's greedy continuations with pre-sampling top-2 logprobs

Environment: GGUF (the model file), LLAMA_SERVER (the llama-server binary), LLAMA_PORT (8791).
`--tokenizer-only` skips llama.cpp (the llama.cpp fields are then left out).
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
GGUF = Path(os.environ.get("GGUF", ROOT / "weights" / "gemma-3-270m-q4_k_m.gguf")).resolve()
LLAMA_SERVER = os.environ.get(
    "LLAMA_SERVER", str(Path.home() / ".cache/loraplex/llama.cpp/build-avx2/bin/llama-server")
)
PORT = int(os.environ.get("LLAMA_PORT", "8791"))
BASE = f"http://127.0.0.1:{PORT}"

# GGUF tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
TOKEN_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}

# (name, text). Names are stable keys for tests.
STRINGS = [
    ("plain_hello", "Hello world"),
    ("plain_sentence", "The quick brown fox jumps over the lazy dog."),
    ("empty", ""),
    ("single_space", " "),
    ("leading_space", " leading space"),
    ("trailing_space", "trailing space "),
    ("two_leading_spaces", "  two leading spaces"),
    ("multiple_spaces", "multiple   spaces    between"),
    ("ten_spaces", "          "),
    ("forty_spaces", " " * 40),
    ("thirty_three_spaces", " " * 33),
    ("spaces_32_between", "a" + " " * 32 + "b"),
    ("spaces_newline_spaces", "x" + " " * 20 + "\n" + " " * 17 + "y"),
    ("forty_newlines", "\n" * 40),
    ("forty_tabs", "\t" * 40),
    ("tabs", "tab\tseparated\tvalues"),
    ("leading_tabs", "\t\t\t\tindented with tabs"),
    ("newlines", "line one\nline two\n"),
    ("leading_newlines", "\n\nleading newlines"),
    ("many_newlines", "a\n\n\n\n\nb"),
    ("crlf", "windows\r\nline\r\n"),
    ("mixed_whitespace", "mixed \t \n  whitespace \n\t "),
    ("space_newline_space", "end. \n Next"),
    ("code", "    def foo(x):\n        return x * 42\n"),
    ("digits", "1234567890"),
    ("long_number", "3.14159265358979323846264338327950288"),
    ("numbers_in_text", "In 2024 there were 366 days and 1,000,000 visitors."),
    ("punctuation", "Hello, world! How's it going? (fine) [ok] {yes} @#$%^&*_+=~`|\\/"),
    ("contractions", "I'm sure they'll say we can't, won't, shouldn't."),
    ("url", "https://example.com/path?q=1&r=2#frag"),
    ("repeated_chars", "a" * 40 + " " + "!" * 20),
    ("accents", "café naïve résumé Zürich Ångström"),
    ("combining_marks", "e\u0301 vs \u00e9, a\u0308 vs \u00e4, n\u0303"),
    ("greek_cyrillic", "Ζωή Ελληνικά — Привет, мир!"),
    ("japanese", "日本語のテキストです。"),
    ("chinese", "中文分词测试，你好世界"),
    ("korean", "한국어 문장입니다"),
    ("arabic", "مرحبا بالعالم"),
    ("devanagari", "नमस्ते दुनिया"),
    ("emoji", "🙂🎉 👩\u200d💻 🇫🇷 emoji"),
    ("fullwidth_ligature", "ﬁ ligature, ① circled, Ｆｕｌｌｗｉｄｔｈ"),
    ("nbsp_zwsp", "a\u00a0b zero\u200bwidth"),
    ("metaspace_literal", "\u2581literal\u2581lower block"),
    ("byte_fallback_rare_cjk", "rare \U00020bb7\U0002a6a5 ideographs"),
    ("byte_fallback_private_use", "private \ue000\U000f0000 use"),
    ("byte_fallback_controls", "ctrl \x00\x07\x1b[0m end"),
    ("chat_turn", "<start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n"),
    ("start_of_turn_user", "<start_of_turn>user\n"),
    ("end_of_turn", "<end_of_turn>"),
    ("bos_in_text", "<bos>text after bos"),
    ("bos_mid_text", "text <bos> in the middle"),
    ("special_run", "<eos><pad><unk><mask><unused0>"),
    ("partial_special", "<start_of_turn <end_of_turn"),
    ("image_tags", "<start_of_image><end_of_image> [multimodal]"),
    ("html_user_defined", "<b>bold</b> <table><tr><td>x</td></tr></table>"),
    ("html_in_word", "a<b>c</b>d<s>e"),
]

# Prompts for llama.cpp's greedy continuations.
PROMPTS = [
    ("plain_capital", "The capital of France is"),
    ("plain_story", "Once upon a time, in a small village by the sea,"),
    ("plain_code", "def fibonacci(n):\n"),
    (
        "chat_poem",
        "<start_of_turn>user\nWrite a long poem about the sea.<end_of_turn>\n<start_of_turn>model\n",
    ),
    (
        "chat_explain",
        "<start_of_turn>user\nExplain in detail what a neural network is.<end_of_turn>\n"
        "<start_of_turn>model\n",
    ),
    (
        "chat_multi_turn",
        "<start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\nHello! How can I help you today?"
        "<end_of_turn>\n<start_of_turn>user\nList five fruits and describe each one.<end_of_turn>\n"
        "<start_of_turn>model\n",
    ),
]

COMPLETION_PARAMS = {
    "n_predict": 32,
    "temperature": 0,
    "top_k": 1,
    "n_probs": 2,
    "post_sampling_probs": False,
    "cache_prompt": False,
    "return_tokens": True,
    "stream": False,
    "seed": 0,
}


def dump(path, obj, indent=1):
    text = json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=False)
    # Keep id lists on one line: they make up most of the file.
    if indent is not None:
        # (A JSON string holds no raw newline, so this only touches arrays of numbers.)
        text = re.sub(
            r"\[\n\s*(-?\d[\d,.eE+\s-]*?)\n\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text
        )
    path.write_text(text + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------


def load_gguf_vocab():
    import gguf

    reader = gguf.GGUFReader(str(GGUF))
    fields = reader.fields
    meta = {}
    for key, field in fields.items():
        if key.startswith("tokenizer.") and key not in (
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
        ):
            meta[key] = field.contents()
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    return meta, tokens, types, scores


def id_ranges(ids):
    """[[first, last], ...] for a sorted id list."""
    out = []
    for i in ids:
        if out and out[-1][1] + 1 == i:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def converter_section(tok, meta, gguf_tokens, gguf_types, gguf_scores):
    backend = json.loads(tok.backend_tokenizer.to_str())
    model = backend["model"]
    vocab = model["vocab"]
    merges = model["merges"]
    merges_text = "\n".join(m if isinstance(m, str) else " ".join(m) for m in merges)

    respelled = {
        i: (t, vocab_t)
        for i, t in enumerate(gguf_tokens)
        for vocab_t in ["\u2581" * len(t)]
        if " " in t and not t.strip()
    }
    inv_vocab = {v: k for k, v in vocab.items()}
    vocab_diffs = [
        {"id": i, "gguf": gguf_tokens[i], "transformers": inv_vocab.get(i)}
        for i in range(len(gguf_tokens))
        if inv_vocab.get(i) != gguf_tokens[i]
    ]

    added = backend["added_tokens"]
    added_ids = {a["id"] for a in added}
    by_type = {}
    for type_id, name in TOKEN_TYPES.items():
        ids = [i for i, t in enumerate(gguf_types) if t == type_id]
        if not ids:
            continue
        reg = [a for a in added if gguf_types[a["id"]] == type_id]
        flags = Counter(
            json.dumps({k: a[k] for k in ("special", "normalized", "lstrip", "rstrip", "single_word")}, sort_keys=True)
            for a in reg
        )
        not_reg = [i for i in ids if i not in added_ids]
        by_type[name] = {
            "gguf_token_type": type_id,
            "count_in_gguf": len(ids),
            "registered_as_added_tokens": len(reg),
            "flags_of_registered": {k: v for k, v in flags.items()},
            "not_registered_ids": id_ranges(not_reg) if len(not_reg) < len(ids) else "all",
        }
    named_specials = {
        name: {"token": getattr(tok, name), "id": getattr(tok, name + "_id")}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")
        if getattr(tok, name, None) is not None
    }
    non_unused_added = [
        dict(a, gguf_token_type=TOKEN_TYPES[gguf_types[a["id"]]])
        for a in added
        if not re.fullmatch(r"<unused\d+>", a["content"])
    ]
    unused = [a for a in added if re.fullmatch(r"<unused\d+>", a["content"])]

    return {
        "source": (
            "transformers/integrations/gguf/gguf_tokenizer_mapping.py: get_gguf_tokenizer() reads the "
            "tokenizer.* metadata; convert_gguf_tokenizer() picks GGUF_SENTENCEPIECE_BUILDERS['gemma3'] = "
            "gemma_tokenizer (tokenizer.ggml.model == 'llama' and general.architecture == 'gemma3'), then "
            "add_gguf_special_tokens(), then set_split_regex() (a no-op: tokenizer.ggml.pre = 'default' is not "
            "in GGUF_PRE_TOKENIZER_SPLITS). The class is models/gemma/tokenization_gemma.py: GemmaTokenizer."
        ),
        "tokenizer_class": type(tok).__name__,
        "model": {
            "type": model["type"],
            "note": (
                "BPE, not Unigram. GGUF scores are NOT used by the model: merges are derived from the vocabulary "
                "by transformers.tokenization_utils_base.generate_merges(vocab, vocab_scores={token: -index}); "
                "for every token t (in file order) and every split t = l + r with both l and r in the vocabulary, "
                "the pair (l, r) gets rank key -index(t); pairs of one token are ordered by (id(l), id(r)); all "
                "pairs are then sorted by (key, len(l), len(r)) descending (Python's stable sort), i.e. by the "
                "merged token's id ascending, then longer l first, then longer r first. Pairs for the 3-byte "
                "pieces etc. included; special/added tokens are NOT skipped."
            ),
            "unk_token": model["unk_token"],
            "unk_id": vocab.get(model["unk_token"]),
            "byte_fallback": model["byte_fallback"],
            "fuse_unk": model["fuse_unk"],
            "ignore_merges": model["ignore_merges"],
            "dropout": model["dropout"],
            "continuing_subword_prefix": model["continuing_subword_prefix"],
            "end_of_word_suffix": model["end_of_word_suffix"],
            "vocab_size": len(vocab),
            "vocab": (
                "token -> id for every GGUF token, id = position in tokenizer.ggml.tokens, except that a token made "
                "only of ' ' (2..31 spaces, ids 138..167) is respelled as the same number of U+2581, so that the "
                "merges built from it match the normalized text"
            ),
            "vocab_differences_from_gguf": vocab_diffs,
            "respelled_ids": id_ranges(sorted(respelled)),
            "n_merges": len(merges),
            "merges_sha256": hashlib.sha256(merges_text.encode("utf-8")).hexdigest(),
            "merges_sha256_of": "'\\n'.join(left + ' ' + right for each merge, in rank order), UTF-8",
            "first_merges": [m if isinstance(m, str) else " ".join(m) for m in merges[:20]],
            "last_merges": [m if isinstance(m, str) else " ".join(m) for m in merges[-5:]],
        },
        "gguf_scores": {
            "used": False,
            "min": min(gguf_scores),
            "max": max(gguf_scores),
            "note": (
                "control (3) and user_defined (4) tokens score -1000, byte (6) tokens 0, normal (1) tokens "
                "-(id - 494) for ids 494..236742 and -(id - 463) for ids 236743..255967 (the single characters, "
                "from U+2581 on): strictly decreasing with id, so ranking normal tokens by score (llama.cpp's SPM "
                "merge order) and by position (transformers' merge ranks) agree"
            ),
        },
        "normalizer": backend["normalizer"],
        "pre_tokenizer": backend["pre_tokenizer"],
        "pre_tokenizer_note": (
            "Split on ' ' runs after the normalizer has replaced every ' ' with U+2581, so it never splits: "
            "the whole text (between added tokens) is one BPE word. No prefix space is added "
            "(add_space_prefix = false and no Prepend/Metaspace)."
        ),
        "decoder": backend["decoder"],
        "post_processor": backend["post_processor"],
        "post_processor_note": (
            "add_bos_token = true (from tokenizer.ggml.add_bos_token), add_eos_token = false: encode(text) = "
            "[2] + encode(text, add_special_tokens=False). No BOS de-duplication: text starting with '<bos>' "
            "gets two 2s."
        ),
        "add_bos_token": tok.add_bos_token,
        "add_eos_token": tok.add_eos_token,
        "named_special_tokens": named_specials,
        "added_tokens": {
            "how": (
                "add_gguf_special_tokens(): every GGUF token of type 3 (control) becomes "
                "AddedToken(normalized=False, special=True) via add_special_tokens(additional_special_tokens); "
                "every type 4 (user_defined) token whose spelling is in the (respelled) vocabulary becomes "
                "AddedToken(normalized=False, special=False) via add_tokens(). The 30 all-space user_defined "
                "tokens (ids 138..167) are therefore NOT added tokens (their spelling was respelled to U+2581 "
                "runs); they are reached through BPE instead. Byte (6) and normal (1) tokens are not added. "
                "Added tokens are matched in the raw text before normalization (leftmost-longest); special ones "
                "are dropped by decode(skip_special_tokens=True)."
            ),
            "count": len(added),
            "by_gguf_token_type": by_type,
            "unused_tokens": {
                "pattern": "<unusedN>",
                "count": len(unused),
                "id_ranges": id_ranges(sorted(a["id"] for a in unused)),
                "flags": sorted(
                    {json.dumps({k: a[k] for k in ("special", "normalized", "lstrip", "rstrip", "single_word")}) for a in unused}
                ),
            },
            "others": non_unused_added,
        },
        "encode_special_tokens": tok.backend_tokenizer.encode_special_tokens,
        "gguf_metadata": {k: v for k, v in meta.items()},
    }


def skeleton(tok):
    backend = json.loads(tok.backend_tokenizer.to_str())
    backend["model"]["vocab"] = (
        f"<removed: {len(backend['model']['vocab'])} entries: token -> its GGUF index, with the all-space tokens "
        "(ids 138..167) respelled as U+2581 runs; see tokenizer_cases.json converter.model>"
    )
    backend["model"]["merges"] = f"<removed: {len(backend['model']['merges'])} merges, see converter.model>"
    added = backend["added_tokens"]
    keep = [a for a in added if not re.fullmatch(r"<unused\d+>", a["content"])]
    unused = [a for a in added if re.fullmatch(r"<unused\d+>", a["content"])]
    backend["added_tokens"] = keep
    backend["added_tokens_unused_collapsed"] = {
        "note": "removed from added_tokens: '<unusedN>' entries, all with the flags below",
        "count": len(unused),
        "id_ranges": id_ranges(sorted(a["id"] for a in unused)),
        "flags": {k: unused[0][k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special")},
    }
    return backend


def hf_cases(tok):
    out = []
    for name, text in STRINGS:
        ids = tok.encode(text, add_special_tokens=False)
        ids_bos = tok.encode(text)
        out.append(
            {
                "name": name,
                "text": text,
                "hf_ids": ids,
                "hf_ids_with_bos": ids_bos,
                "hf_tokens": tok.convert_ids_to_tokens(ids),
                "hf_decode": tok.decode(ids, skip_special_tokens=False),
                "hf_decode_with_bos": tok.decode(ids_bos, skip_special_tokens=False),
                "hf_decode_roundtrips": tok.decode(ids, skip_special_tokens=False) == text,
                "has_byte_fallback": any(re.fullmatch(r"<0x[0-9A-F]{2}>", t) for t in tok.convert_ids_to_tokens(ids)),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# llama.cpp
# --------------------------------------------------------------------------------------------


def http(method, path, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(BASE + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


class LlamaServer:
    def __init__(self):
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"loraplex-gemma3-goldens-llama-server-{PORT}.log"
        self.proc = None

    def __enter__(self):
        cmd = [
            LLAMA_SERVER,
            "-m", str(GGUF),
            "-t", "1", "-tb", "1",
            "-c", "2048", "-np", "1",
            "--host", "127.0.0.1", "--port", str(PORT),
        ]
        self.cmd = cmd
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if http("GET", "/health", timeout=5).get("status") == "ok":
                    return self
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError(f"llama-server did not become healthy; see {self.log_path}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def llama_tokenize(text, add_special=False):
    return http("POST", "/tokenize", {"content": text, "add_special": add_special, "parse_special": True})["tokens"]


def llama_version(server):
    props = http("GET", "/props")
    info = {"props_build_info": props.get("build_info")}
    try:
        v = subprocess.run([LLAMA_SERVER, "--version"], capture_output=True, text=True, timeout=60)
        info["llama_server_version_output"] = (v.stdout + v.stderr).strip().splitlines()
    except Exception as e:  # noqa: BLE001
        info["llama_server_version_output"] = f"failed: {e}"
    src = Path(LLAMA_SERVER).resolve().parents[2] / "src"
    cmake = src / "ggml" / "CMakeLists.txt"
    if cmake.exists():
        parts = dict(re.findall(r"set\(GGML_VERSION_(MAJOR|MINOR|PATCH)\s+(\d+)\)", cmake.read_text()))
        if parts:
            info["ggml_version"] = f"{parts.get('MAJOR')}.{parts.get('MINOR')}.{parts.get('PATCH')}"
    info["source"] = (
        "llama.cpp vendored in the PyPI sdist llama-cpp-python==0.3.36 (benches/llamacpp.sh), built "
        "with GGML_NATIVE=OFF + AVX2/FMA/F16C; the sdist carries no git metadata, so the commit is unknown"
    )
    info["server_args"] = [rel(a) for a in server.cmd[1:]]
    info["n_ctx"] = props.get("default_generation_settings", {}).get("n_ctx")
    return info


def rel(arg):
    """A path under the repository as a relative one, so that the output does not name the checkout."""
    if not os.path.isabs(arg):
        return arg
    try:
        return str(Path(arg).resolve().relative_to(ROOT))
    except ValueError:
        return arg


def llama_completion(prompt_ids):
    body = dict(COMPLETION_PARAMS, prompt=prompt_ids)
    res = http("POST", "/completion", body)
    probs = res["completion_probabilities"]
    steps = []
    for p in probs:
        top = p["top_logprobs"]
        steps.append(
            {
                "id": p["id"],
                "logprob": p["logprob"],
                "top_ids": [t["id"] for t in top],
                "top_logprobs": [t["logprob"] for t in top],
                "margin": top[0]["logprob"] - top[1]["logprob"] if len(top) > 1 else None,
            }
        )
    return res, steps


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    tokenizer_only = "--tokenizer-only" in sys.argv[1:]
    from transformers import AutoTokenizer

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    print(f"transformers tokenizer loaded in {time.time() - t0:.1f} s", file=sys.stderr)
    meta, gguf_tokens, gguf_types, gguf_scores = load_gguf_vocab()

    cases = hf_cases(tok)
    converter = converter_section(tok, meta, gguf_tokens, gguf_types, gguf_scores)
    dump(HERE / "tokenizer_skeleton.json", skeleton(tok), indent=1)

    versions = {
        "transformers": version("transformers"),
        "tokenizers": version("tokenizers"),
        "gguf": version("gguf"),
        "python": sys.version.split()[0],
    }
    llama_info = None
    llama_cases = None
    if not tokenizer_only:
        with LlamaServer() as server:
            llama_info = llama_version(server)
            for case in cases:
                ids = llama_tokenize(case["text"])
                ids_bos = llama_tokenize(case["text"], add_special=True)
                case["llamacpp_ids"] = ids
                case["llamacpp_ids_with_bos"] = ids_bos
                case["llamacpp_tokens"] = [gguf_tokens[i] for i in ids]
                case["llamacpp_detokenize"] = http("POST", "/detokenize", {"tokens": ids})["content"]
                case["agree"] = ids == case["hf_ids"]
                case["agree_with_bos"] = ids_bos == case["hf_ids_with_bos"]
            llama_cases = []
            for name, text in PROMPTS:
                prompt_ids = [2] + llama_tokenize(text)
                res, steps = llama_completion(prompt_ids)
                gen = res.get("tokens") or [s["id"] for s in steps]
                hf_prompt = tok.encode(text)
                llama_cases.append(
                    {
                        "name": name,
                        "text": text,
                        "prompt_ids": prompt_ids,
                        "hf_prompt_ids_agree": hf_prompt == prompt_ids,
                        "tokens_evaluated": res.get("tokens_evaluated"),
                        "generated_ids": gen,
                        "n_generated": len(gen),
                        "stop_type": res.get("stop_type"),
                        "stopping_word": res.get("stopping_word"),
                        "content": res.get("content"),
                        "hf_decode_generated": tok.decode(gen, skip_special_tokens=False),
                        "steps": steps,
                        "min_margin": min((s["margin"] for s in steps if s["margin"] is not None), default=None),
                    }
                )
                print(f"{name}: {len(gen)} tokens, stop {res.get('stop_type')}: {res.get('content')!r}", file=sys.stderr)

    disagreements = [c["name"] for c in cases if "agree" in c and not c["agree"]]
    doc = {
        "model": "weights/gemma-3-270m-q4_k_m.gguf",
        "versions": versions,
        "llamacpp": llama_info,
        "llamacpp_tokenize_request": {"add_special": False, "parse_special": True} if llama_info else None,
        "summary": {
            "n_cases": len(cases),
            "n_disagree": len(disagreements) if llama_info else None,
            "disagree": disagreements if llama_info else None,
            "n_disagree_with_bos": (
                sum(1 for c in cases if not c["agree_with_bos"]) if llama_info else None
            ),
        },
        "converter": converter,
        "cases": cases,
    }
    dump(HERE / "tokenizer_cases.json", doc)
    if llama_cases is not None:
        dump(
            HERE / "llamacpp_cases.json",
            {
                "model": "weights/gemma-3-270m-q4_k_m.gguf",
                "model_sha256": file_sha256(GGUF),
                "llamacpp": llama_info,
                "request": dict(COMPLETION_PARAMS, prompt="<token id array, BOS 2 first>"),
                "endpoint": "POST /completion",
                "probs_note": (
                    "post_sampling_probs=false (the default): completion_probabilities[i].top_logprobs are "
                    "log-softmax over the full vocabulary of the raw logits at step i, so logprob1 - logprob2 "
                    "is the logit margin. The prompt goes in as a token id array; llama.cpp adds no BOS to it."
                ),
                "cases": llama_cases,
            },
        )
    print(f"tokenizer cases: {len(cases)}; llama.cpp disagreements: {disagreements}", file=sys.stderr)


if __name__ == "__main__":
    main()
