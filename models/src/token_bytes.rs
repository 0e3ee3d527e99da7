//! The raw bytes each token id stands for. A token's decoded text is not enough: byte-level BPE
//! tokens may hold part of a UTF-8 character (their text alone is U+FFFD), and constrained
//! decoding matches grammars against bytes. Built once per tokenizer.

use std::collections::HashMap;

use tokenizers::DecoderWrapper;

/// Bytes and specialness of every id below the tokenizer's vocabulary size.
#[derive(Debug, Clone, Default)]
pub struct TokenBytes {
    bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
}

/// GPT-2's byte ↔ printable-character table: bytes that are printable Latin-1 map to
/// themselves, the rest to U+0100 onwards in byte order.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    let mut map = HashMap::with_capacity(256);
    for b in 0..=255u8 {
        let c = if printable(b) {
            b as char
        } else {
            let c = char::from_u32(next).expect("below the surrogates");
            next += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// `<0x41>` → 0x41: SentencePiece's byte-fallback pieces.
fn fallback_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() == 2 {
        u8::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

impl TokenBytes {
    pub fn new(tok: &tokenizers::Tokenizer) -> Self {
        let n = tok.get_vocab_size(true);
        let byte_level = matches!(tok.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let chars = byte_level_chars();
        let added = tok.get_added_tokens_decoder();
        let mut bytes = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        for id in 0..n as u32 {
            if let Some(t) = added.get(&id) {
                bytes.push(t.content.as_bytes().to_vec());
                special.push(t.special);
                continue;
            }
            special.push(false);
            let Some(piece) = tok.id_to_token(id) else {
                bytes.push(Vec::new());
                continue;
            };
            let b = if let Some(b) = fallback_byte(&piece) {
                vec![b]
            } else if byte_level {
                piece
                    .chars()
                    .map(|c| chars.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| piece.as_bytes().to_vec())
            } else {
                // Metaspace vocabularies write a leading space as U+2581.
                piece.replace('\u{2581}', " ").into_bytes()
            };
            bytes.push(b);
        }
        Self { bytes, special }
    }

    /// Empty for ids outside the vocabulary.
    pub fn get(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that is not complete.
pub fn incomplete_tail(bytes: &[u8]) -> usize {
    // An incomplete character is at most 3 bytes long: find where the last one starts.
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 != 0x80 {
            let need = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if back < need { back } else { 0 };
        }
    }
    0
}

/// `bytes` decoded without an incomplete final character (invalid sequences before the end
/// become U+FFFD, as the model produced them).
pub fn complete_utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len() - incomplete_tail(bytes)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_a_bijection() {
        let m = byte_level_chars();
        assert_eq!(m.len(), 256);
        let mut seen: Vec<u8> = m.values().copied().collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'A'], b'A');
    }

    #[test]
    fn incomplete_characters_are_dropped_and_nothing_else() {
        let e = "é".as_bytes(); // 2 bytes
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(complete_utf8(b"ab"), "ab");
        assert_eq!(complete_utf8(&[b'a', e[0]]), "a");
        assert_eq!(complete_utf8(&[b'a', euro[0], euro[1]]), "a");
        assert_eq!(complete_utf8(&[b'a', e[0], e[1]]), "aé");
        assert_eq!(complete_utf8("😀".as_bytes()), "😀");
        assert_eq!(complete_utf8(&"😀".as_bytes()[..3]), "");
        // An invalid byte the model produced mid-text stays visible.
        assert_eq!(complete_utf8(&[0xFF, b'a']), "\u{FFFD}a");
        assert_eq!(complete_utf8(&[]), "");
    }

    #[test]
    fn fallback_pieces_are_bytes() {
        assert_eq!(fallback_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(fallback_byte("<0x0>"), None);
        assert_eq!(fallback_byte("hello"), None);
    }
}
