//! llguidance's view of our tokenizer: a token trie over every id's raw bytes, and tokenization
//! by the model's own tokenizer (so forced text is tokenized as the model would see it).

use loraplex_models::Tokenizer;
use toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

pub(crate) struct TokenizerView {
    trie: TokTrie,
    tok: Tokenizer,
}

impl TokenizerView {
    /// `vocab` is the width of the model's logits, which may exceed the tokenizer's ids: the
    /// ids beyond it have no bytes and are never allowed.
    pub(crate) fn new(tok: &Tokenizer, vocab: usize) -> Self {
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                let b = tok.token_bytes(id);
                if tok.is_special(id) && !b.is_empty() {
                    // The trie keeps special tokens apart from text behind a marker byte.
                    let mut w = Vec::with_capacity(b.len() + 1);
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(b);
                    w
                } else {
                    b.to_vec()
                }
            })
            .collect();
        let eos = tok
            .eos_id()
            .or_else(|| tok.stop_ids().first().copied())
            .unwrap_or(0);
        let info = TokRxInfo {
            vocab_size: vocab as u32,
            tok_eos: eos,
            tok_bos: tok.bos_id(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        Self {
            trie: TokTrie::from(&info, &words),
            tok: tok.clone(),
        }
    }
}

impl TokenizerEnv for TokenizerView {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tok
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            // Bytes that are not text (part of a character) have no canonical tokenization.
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}
