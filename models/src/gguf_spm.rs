//! SentencePiece-style GGUF tokenizers (`tokenizer.ggml.model = "llama"`, Gemma's), built as
//! transformers builds them when it reads the same file: a byte-fallback BPE whose merges are
//! derived from the vocabulary, spaces normalized to `▁`, no prefix space. llama.cpp merges by
//! the pieces' scores instead; for this vocabulary the two agree except on runs of more than
//! 31 spaces (llama.cpp matches its space pieces whole), where transformers is followed.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use crate::error::{ModelError, Result};

/// GGUF `tokenizer.ggml.token_type` of control tokens (`<start_of_turn>` …).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// User-defined tokens: matched whole in the text, but not special.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

const SPACE: char = '\u{2581}';

pub(crate) fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// A piece made only of spaces: the file spells it with real spaces, the normalized text (and
/// so the vocabulary BPE matches against) with `▁`.
fn is_space_run(t: &str) -> bool {
    !t.is_empty() && t.chars().all(|c| c == ' ')
}

/// Each piece's id: its position.
fn piece_ids(pieces: &[String]) -> HashMap<&str, u32> {
    pieces
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect()
}

/// transformers' `generate_merges`: every split `t = l + r` of a piece whose halves are both
/// pieces is a merge, ranked by `t`'s id, then the longer `l` first (lengths in characters).
fn derive_merges(pieces: &[String], ids: &HashMap<&str, u32>) -> Vec<(String, String)> {
    let mut merges = Vec::new();
    for t in pieces {
        let cuts: Vec<usize> = t.char_indices().map(|(i, _)| i).skip(1).collect();
        for &cut in cuts.iter().rev() {
            let (l, r) = t.split_at(cut);
            if ids.contains_key(l) && ids.contains_key(r) {
                merges.push((l.to_string(), r.to_string()));
            }
        }
    }
    merges
}

/// The tokenizer of a SentencePiece-style GGUF vocabulary (`tokens`, with GGUF token types).
pub(crate) fn build(
    tokens: &[String],
    types: &[i32],
    unk: Option<u32>,
    add_space_prefix: bool,
    path: &Path,
) -> Result<tokenizers::Tokenizer> {
    if add_space_prefix {
        return Err(ModelError::Tokenizer(format!(
            "{}: SentencePiece GGUF tokenizers with add_space_prefix (Llama 2 style) are not \
             supported; use the model's Hugging Face directory with its tokenizer.json instead",
            path.display()
        )));
    }
    let pieces: Vec<String> = tokens
        .iter()
        .map(|t| {
            if is_space_run(t) {
                SPACE.to_string().repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    let ids = piece_ids(&pieces);
    let merges = derive_merges(&pieces, &ids);
    let vocab: tokenizers::models::bpe::Vocab =
        ids.iter().map(|(t, &i)| (t.to_string(), i)).collect();
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = unk.and_then(|u| pieces.get(u as usize)) {
        bpe = bpe.unk_token(u.clone());
    }
    let mut inner = tokenizers::Tokenizer::new(bpe.build().map_err(tok_err)?);
    inner.with_normalizer(Some(NormalizerWrapper::Replace(
        Replace::new(" ", SPACE.to_string()).map_err(tok_err)?,
    )));
    inner.with_decoder(Some(DecoderWrapper::Sequence(Sequence::new(vec![
        DecoderWrapper::Replace(Replace::new(SPACE.to_string(), " ").map_err(tok_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ]))));
    // The space runs are left to BPE, which reaches them through the normalized `▁`s.
    add_typed_tokens(&mut inner, tokens, types, |t| !is_space_run(t));
    Ok(inner)
}

/// Registers a GGUF vocabulary's control pieces as special tokens and its user-defined ones
/// (those `keep` accepts) as text matched whole, both unnormalized.
pub(crate) fn add_typed_tokens(
    inner: &mut tokenizers::Tokenizer,
    tokens: &[String],
    types: &[i32],
    keep: impl Fn(&str) -> bool,
) {
    let added = |ty: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|&(t, &k)| k == ty && keep(t))
            .map(|(t, _)| AddedToken::from(t.clone(), special).normalized(false))
            .collect()
    };
    inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
    inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_merged_pieces_ids_then_the_longer_left_half() {
        let pieces: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = derive_merges(&pieces, &piece_ids(&pieces));
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            m,
            [
                pair("a", "b"),
                pair("ab", "c"),
                pair("a", "bc"),
                pair("b", "c")
            ]
        );
    }
}
