#!/usr/bin/env python3
"""Runs llama.cpp's own convert_hf_to_gguf.py on one tiny family model, with two tokenizer-only
work-arounds (see GGUF.md). Weights, tensor names and architecture metadata are untouched: they are
whatever the converter writes for that architecture.

Usage: gguf_convert.py LLAMA_CPP_SRC MODEL_DIR OUTFILE [converter option ...]
(--outtype bf16 unless a later --outtype in the options overrides it)

Why the work-arounds: every family model here carries the SmolLM2 tokenizer (symlinks to
../tiny-llama/), not its family's own one.

1. AutoTokenizer -> PreTrainedTokenizerFast. The converter identifies the BPE pre-tokenizer by
   hashing AutoTokenizer's ids for a fixed text. transformers 5 picks the tokenizer class from
   config.json's model_type, and for model_type "qwen2" its Qwen2Tokenizer replaces the
   tokenizer.json pre-tokenizer with Qwen2's own split regex, so the hash is one the converter
   does not know (a70b913f...) and it refuses. Loading tokenizer.json as written (what
   PreTrainedTokenizerFast does, and what AutoTokenizer already does for qwen3/phi3) gives the
   SmolLM hash 855059..., which the converter maps to tokenizer.ggml.pre = "smollm". The token list,
   added tokens and merges are identical either way (checked in gguf_check.py against tokenizer.json).
2. Phi-3: Phi3MiniModel.set_vocab wants a SentencePiece tokenizer.model (Phi-3's Llama vocab)
   unless tokenizer_config.json says GPT2Tokenizer (its Phi-4 branch). The SmolLM2 tokenizer is
   byte-level BPE, so set_vocab is pointed at the converter's own _set_vocab_gpt2, exactly the
   Phi-4 branch. Nothing else of Phi3MiniModel (set_gguf_parameters, tensors) changes.
"""
import os
import runpy
import sys
from pathlib import Path


def main() -> None:
    src, model_dir, outfile = sys.argv[1:4]
    extra = sys.argv[4:]
    src = os.path.abspath(src)
    sys.path.insert(0, os.path.join(src, "gguf-py"))
    sys.path.insert(0, src)

    import transformers
    from transformers import PreTrainedTokenizerFast

    model_dir_resolved = Path(model_dir).resolve()
    orig_auto = transformers.AutoTokenizer.from_pretrained

    def auto_tokenizer(path, *args, **kwargs):
        if Path(path).resolve() == model_dir_resolved:
            return PreTrainedTokenizerFast.from_pretrained(path, *args, **kwargs)
        return orig_auto(path, *args, **kwargs)

    transformers.AutoTokenizer.from_pretrained = auto_tokenizer

    from conversion.base import TextModel
    from conversion.phi import Phi3MiniModel

    Phi3MiniModel.set_vocab = TextModel._set_vocab_gpt2

    sys.argv = [os.path.join(src, "convert_hf_to_gguf.py"), model_dir,
                "--outtype", "bf16", "--outfile", outfile, *extra]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
