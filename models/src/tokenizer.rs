//! Text ↔ token ids, built from GGUF metadata or from a `tokenizer.json`.
//!
//! Prompts are encoded without added BOS/EOS unless the model asks for it (`add_bos_token`), and
//! special-token text such as `<|im_start|>` inside a prompt is parsed as that special token, as
//! transformers and llama.cpp (`parse_special=true`) do.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::error::{ModelError, Result};
use crate::gguf_spm::{add_typed_tokens, tok_err};
use crate::token_bytes::{incomplete_tail, TokenBytes};

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    stop_ids: Vec<u32>,
    add_bos: bool,
    bytes: Arc<TokenBytes>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

fn md_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    md.get(key).and_then(|v| {
        v.to_u32()
            .ok()
            .or_else(|| v.to_i32().ok().map(|x| x as u32))
    })
}

impl Tokenizer {
    /// From `tokenizer.ggml.*`: byte-level BPE (`gpt2`: tokens, merges, token types), or a
    /// SentencePiece-style vocabulary (`llama`: see `gguf_spm`).
    ///
    /// The `smollm` pre-tokenizer (and llama.cpp's handling of it) splits every numeric character
    /// on its own before the GPT-2 regex; candle's GGUF tokenizer treats it as plain GPT-2 with a
    /// prefix space and gets ids wrong, hence this builder.
    pub fn from_gguf(md: &HashMap<String, Value>, path: &Path) -> Result<Self> {
        let missing = |what: &str| ModelError::Missing {
            path: path.to_path_buf(),
            what: format!("tokenizer metadata {what}"),
        };
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" && model != "llama" {
            return Err(ModelError::Tokenizer(format!(
                "{}: GGUF tokenizer model {model:?} is not supported (byte-level BPE \"gpt2\" or \
                 SentencePiece-style \"llama\"); use the model's Hugging Face directory with its \
                 tokenizer.json instead",
                path.display()
            )));
        }
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("default");
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = md
                .get(key)
                .ok_or_else(|| missing(key))?
                .to_vec()
                .map_err(|_| missing(key))?;
            arr.iter()
                .map(|v| v.to_string().cloned().map_err(|_| missing(key)))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
        {
            Some(v) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let inner = if model == "llama" {
            let space_prefix = md
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(true);
            let unk = md_u32(md, "tokenizer.ggml.unknown_token_id");
            crate::gguf_spm::build(&tokens, &types, unk, space_prefix, path)?
        } else {
            Self::byte_level_bpe(&tokens, &types, strings("tokenizer.ggml.merges")?, pre)?
        };
        Self::from_gguf_parts(md, inner)
    }

    fn byte_level_bpe(
        tokens: &[String],
        types: &[i32],
        merges: Vec<String>,
        pre: &str,
    ) -> Result<tokenizers::Tokenizer> {
        let merges: Vec<(String, String)> = merges
            .into_iter()
            .map(|m| {
                let (a, b) = m
                    .split_once(' ')
                    .ok_or_else(|| tok_err(format!("malformed merge {m:?}")))?;
                Ok((a.to_string(), b.to_string()))
            })
            .collect::<Result<_>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
        let pre_tok = match pre {
            "smollm" | "starcoder" | "refact" => {
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Split(
                        Split::new(
                            SplitPattern::Regex(r"\p{N}".into()),
                            SplitDelimiterBehavior::Isolated,
                            false,
                        )
                        .map_err(tok_err)?,
                    ),
                    byte_level,
                ]))
            }
            _ => byte_level,
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(
            ByteLevel::default(),
        )));
        add_typed_tokens(&mut inner, tokens, types, |_| true);
        Ok(inner)
    }

    /// The special ids and flags of a GGUF tokenizer, around its `inner` model.
    fn from_gguf_parts(md: &HashMap<String, Value>, inner: tokenizers::Tokenizer) -> Result<Self> {
        let bos = md_u32(md, "tokenizer.ggml.bos_token_id");
        let eos = md_u32(md, "tokenizer.ggml.eos_token_id");
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = md_u32(md, key) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(Self {
            bytes: Arc::new(TokenBytes::new(&inner)),
            inner,
            bos,
            eos,
            stop_ids,
            add_bos,
        })
    }

    /// From `tokenizer.json`; special tokens and the stop set come from the caller (who read
    /// `tokenizer_config.json` / `generation_config.json`).
    pub fn from_file(path: &Path, special: SpecialTokens) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::corrupt(path, format!("not a valid tokenizer.json: {e}")))?;
        let id = |t: &Option<String>| t.as_deref().and_then(|t| inner.token_to_id(t));
        let bos = id(&special.bos_token);
        let eos = id(&special.eos_token);
        let mut stop_ids = special.extra_stop_ids;
        if let Some(e) = eos {
            if !stop_ids.contains(&e) {
                stop_ids.insert(0, e);
            }
        }
        Ok(Self {
            bos,
            eos,
            stop_ids,
            add_bos: special.add_bos_token,
            bytes: Arc::new(TokenBytes::new(&inner)),
            inner,
        })
    }

    /// Text → ids. Special-token text is always parsed as special tokens. With `add_special`
    /// (raw completion prompts) the model's own rule for BOS applies: the `tokenizer.json`
    /// post-processor, or the GGUF `add_bos_token` flag. Rendered chat prompts pass `false`: the
    /// template already wrote whatever the model needs.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                // A `tokenizer.json` post-processor may have added it already; without one (a
                // GGUF vocabulary) it is added even before a `<bos>` written in the text, as
                // transformers and llama.cpp do.
                let post = self.inner.get_post_processor().is_some();
                if !post || enc.get_ids().first() != Some(&b) {
                    ids.push(b);
                }
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The text of a single token as it appears in the output (for logprobs).
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }

    /// The bytes a token stands for (part of a character, for some byte-level tokens); empty
    /// outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id)
    }

    /// Special (control) tokens such as `<|im_end|>`, which skip-special decoding drops.
    pub fn is_special(&self, id: u32) -> bool {
        self.bytes.is_special(id)
    }

    /// The raw vocabulary string of a token (`Ġworld`).
    pub fn token_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Ids that end generation (EOS, end-of-turn).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Text of a special token id (for the chat template's `bos_token`/`eos_token`).
    pub fn id_text(&self, id: Option<u32>) -> String {
        id.and_then(|i| self.inner.id_to_token(i))
            .unwrap_or_default()
    }

    pub fn incremental(&self, skip_special: bool) -> IncrementalDecoder {
        IncrementalDecoder {
            skip_special,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }
}

/// Special tokens read from `tokenizer_config.json` and `generation_config.json`.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos_token: bool,
    pub extra_stop_ids: Vec<u32>,
}

/// Turns a stream of ids into text deltas that never split a UTF-8 character or a merge that
/// decodes differently once its neighbour arrives.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    skip_special: bool,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl IncrementalDecoder {
    /// Adds one id; returns the new text, if any is complete.
    pub fn step(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        tokenizers::tokenizer::step_decode_stream(
            &tok.inner,
            vec![id],
            self.skip_special,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(tok_err)
    }

    /// Text still held back when generation ends. An incomplete character at the very end is
    /// dropped (the model never finished it), rather than written as U+FFFD.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let all = tok.decode(&self.ids, self.skip_special)?;
        let mut rest = all.get(self.prefix.len()..).unwrap_or("").to_string();
        let held: Vec<u8> = self
            .ids
            .get(self.prefix_index..)
            .unwrap_or(&[])
            .iter()
            .filter(|&&id| !(self.skip_special && tok.is_special(id)))
            .flat_map(|&id| tok.token_bytes(id).iter().copied())
            .collect();
        // Lossy decoding turns an incomplete tail into exactly one U+FFFD.
        if incomplete_tail(&held) > 0 && rest.ends_with('\u{FFFD}') {
            rest.pop();
        }
        self.ids.clear();
        self.prefix.clear();
        self.prefix_index = 0;
        Ok(rest)
    }
}
