//! Tool calls read out of model output as it streams, in the format the prompt asks for and
//! the grammar enforces (`loraplex_models::chat_tools`):
//! `<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>`, calls separated by a
//! newline, optionally after some text.
//!
//! Text deltas go in; [`Piece`]s come out as soon as they are known: content (holding back only
//! what may be the start of `<tool_call>`), a call's id and name once its name is closed, then
//! its arguments fragment by fragment. Whitespace at the start of the output and after a call
//! is not content. Output that breaks the format (only a cut by `max_tokens` or a stop string can,
//! under the grammar) degrades: a call cut before its name is complete is content, a call cut
//! later keeps what its arguments got.

use loraplex_models::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use rand::distr::{Alphanumeric, SampleString};

/// What a stretch of output turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text of `content`.
    Content(String),
    /// A call begins: its index among the output's calls, its id, the function's name.
    Call {
        index: usize,
        id: String,
        name: String,
    },
    /// The next fragment of call `index`'s arguments (a JSON text, once all are joined).
    Arguments { index: usize, fragment: String },
}

/// A fresh OpenAI-style call id: `call_` and 24 random letters and digits.
pub fn call_id() -> String {
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

#[derive(Debug)]
enum State {
    /// Free text; `fresh` at the output's start or after a call (leading whitespace dropped).
    Text { fresh: bool },
    /// After `<tool_call>`, before the arguments; `started` once the call's name was sent.
    Head { started: bool },
    /// Inside the arguments.
    Args(JsonScan),
    /// After the arguments, before `</tool_call>`.
    Tail,
}

/// The streaming reader of one output.
#[derive(Debug)]
pub struct CallParser {
    state: State,
    /// Text not yet consumed by the current state.
    buf: String,
    calls: usize,
}

impl Default for CallParser {
    fn default() -> Self {
        Self {
            state: State::Text { fresh: true },
            buf: String::new(),
            calls: 0,
        }
    }
}

impl CallParser {
    /// Whether the output has called a tool.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    /// The pieces `text`, the next delta of the output, completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// The output ended: what was held back.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Text { fresh } => {
                content(&mut out, &rest, fresh);
            }
            State::Head { started: false } => {
                out.push(Piece::Content(format!("{TOOL_CALL_OPEN}{rest}")))
            }
            // A cut call keeps what it got.
            State::Head { started: true } | State::Args(_) | State::Tail => {}
        }
        self.state = State::Text { fresh: false };
        out
    }

    /// One move of the state machine; false when it needs more text.
    fn step(&mut self, out: &mut Vec<Piece>) -> bool {
        match &mut self.state {
            State::Text { fresh } => {
                let fresh = *fresh;
                if let Some(p) = self.buf.find(TOOL_CALL_OPEN) {
                    content(out, &self.buf[..p], fresh);
                    self.buf.drain(..p + TOOL_CALL_OPEN.len());
                    self.state = State::Head { started: false };
                    return true;
                }
                let end = self.buf.len() - partial_suffix(&self.buf, TOOL_CALL_OPEN);
                let sent = content(out, &self.buf[..end], fresh);
                self.buf.drain(..end);
                self.state = State::Text {
                    fresh: fresh && !sent,
                };
                false
            }
            State::Head { started } => match head(&self.buf) {
                Head::More(name) => {
                    if let (Some(name), false) = (name, *started) {
                        *started = true;
                        self.call(out, name);
                    }
                    false
                }
                Head::Args { name, at } => {
                    if !*started {
                        self.call(out, name);
                    }
                    self.buf.drain(..at);
                    self.state = State::Args(JsonScan::default());
                    true
                }
                Head::Bad => {
                    if !*started {
                        // Not a call after all: the tag is text; what follows is read again.
                        out.push(Piece::Content(TOOL_CALL_OPEN.into()));
                        self.state = State::Text { fresh: false };
                    } else {
                        self.state = State::Text { fresh: true };
                    }
                    true
                }
            },
            State::Args(scan) => {
                let (fragment, used, done) = scan.feed(&self.buf);
                if !fragment.is_empty() {
                    out.push(Piece::Arguments {
                        index: self.calls - 1,
                        fragment,
                    });
                }
                self.buf.drain(..used);
                if done {
                    self.state = State::Tail;
                }
                done
            }
            State::Tail => {
                let mut s = Scan::new(&self.buf);
                let r = (|| {
                    s.ws();
                    s.lit("}")?;
                    s.ws();
                    s.lit(TOOL_CALL_CLOSE)
                })();
                match r {
                    Err(Miss::More) => false,
                    Ok(()) => {
                        let at = s.at;
                        self.buf.drain(..at);
                        self.state = State::Text { fresh: true };
                        true
                    }
                    Err(Miss::Bad) => {
                        self.state = State::Text { fresh: true };
                        true
                    }
                }
            }
        }
    }

    fn call(&mut self, out: &mut Vec<Piece>, name: String) {
        out.push(Piece::Call {
            index: self.calls,
            id: call_id(),
            name,
        });
        self.calls += 1;
    }
}

/// Pushes `s` as content (without leading whitespace when `fresh`); whether anything was sent.
fn content(out: &mut Vec<Piece>, s: &str, fresh: bool) -> bool {
    let s = if fresh { s.trim_start() } else { s };
    if s.is_empty() {
        return false;
    }
    match out.last_mut() {
        Some(Piece::Content(c)) => c.push_str(s),
        _ => out.push(Piece::Content(s.to_string())),
    }
    true
}

/// Length of the longest proper prefix of `tag` that `s` ends with.
fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&k| s.ends_with(&tag[..k]))
        .unwrap_or(0)
}

enum Miss {
    /// The text so far fits; more is needed.
    More,
    /// The text does not fit.
    Bad,
}

/// A cursor over a call's text.
struct Scan<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn new(s: &'a str) -> Self {
        Self { s, at: 0 }
    }

    fn ws(&mut self) {
        let rest = &self.s[self.at..];
        self.at += rest.len() - rest.trim_start().len();
    }

    fn lit(&mut self, l: &str) -> Result<(), Miss> {
        let rest = &self.s[self.at..];
        if rest.starts_with(l) {
            self.at += l.len();
            Ok(())
        } else if l.starts_with(rest) {
            Err(Miss::More)
        } else {
            Err(Miss::Bad)
        }
    }

    /// A JSON string, decoded.
    fn string(&mut self) -> Result<String, Miss> {
        self.lit("\"")?;
        let start = self.at - 1;
        let mut escaped = false;
        for (i, b) in self.s.bytes().enumerate().skip(self.at) {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    self.at = i + 1;
                    return serde_json::from_str(&self.s[start..self.at]).map_err(|_| Miss::Bad);
                }
                _ => {}
            }
        }
        Err(Miss::More)
    }
}

enum Head {
    /// Fits so far; the name once it is closed.
    More(Option<String>),
    /// The arguments start at byte `at`.
    Args {
        name: String,
        at: usize,
    },
    Bad,
}

/// Reads `{"name": "NAME", "arguments": ` (any whitespace between tokens).
fn head(s: &str) -> Head {
    let mut sc = Scan::new(s);
    let name = (|| {
        sc.ws();
        sc.lit("{")?;
        sc.ws();
        sc.lit("\"name\"")?;
        sc.ws();
        sc.lit(":")?;
        sc.ws();
        sc.string()
    })();
    let name = match name {
        Ok(n) => n,
        Err(Miss::More) => return Head::More(None),
        Err(Miss::Bad) => return Head::Bad,
    };
    let rest = (|| {
        sc.ws();
        sc.lit(",")?;
        sc.ws();
        sc.lit("\"arguments\"")?;
        sc.ws();
        sc.lit(":")
    })();
    match rest {
        Ok(()) => Head::Args { name, at: sc.at },
        Err(Miss::More) => Head::More(Some(name)),
        Err(Miss::Bad) => Head::Bad,
    }
}

/// Finds where one JSON value ends, fed piece by piece; whitespace before it is skipped.
#[derive(Debug, Default)]
struct JsonScan {
    started: bool,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonScan {
    /// Consumes from `s`: (the value's text in it, bytes used, whether the value ended).
    fn feed(&mut self, s: &str) -> (String, usize, bool) {
        let mut from = 0;
        for (i, c) in s.char_indices() {
            if !self.started {
                if c.is_whitespace() {
                    from = i + c.len_utf8();
                    continue;
                }
                self.started = true;
            }
            if self.in_string {
                match c {
                    _ if self.escaped => self.escaped = false,
                    '\\' => self.escaped = true,
                    '"' => {
                        self.in_string = false;
                        if self.depth == 0 {
                            return (s[from..=i].to_string(), i + 1, true);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return (s[from..=i].to_string(), i + 1, true);
                    }
                }
                c if self.depth == 0 && (c.is_whitespace() || matches!(c, ',' | '}' | ']')) => {
                    // A top-level number or literal ends before its delimiter.
                    return (s[from..i].to_string(), i, true);
                }
                _ => {}
            }
        }
        (s[from..].to_string(), s.len(), false)
    }
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
