//! Constrained decoding: what a request's output must match (JSON Schema, regex, a choice, a
//! Lark grammar), compiled once per distinct spec by llguidance over the model's tokenizer, and
//! followed per sequence by a [`Constraint`] that gives each step's allowed tokens.
//!
//! The trie of token bytes and llguidance's parser factory are built once per tokenizer
//! ([`Grammars`]); a compiled grammar is cached by its spec and cloned, with its lexer caches, into
//! each sequence, so concurrent sequences never share mutable parser state and their masks can be
//! computed in parallel.

mod matcher;
mod tokenv;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use loraplex_models::Tokenizer;
use serde::Serialize;
use serde_json::{json, Value};
use toktrie::TokEnv;

use crate::error::{Result, RuntimeError};

pub use matcher::Constraint;

/// Distinct compiled grammars kept; past it the cache starts over (specs are client input).
const CACHE_ENTRIES: usize = 512;

/// What an output must match. Built by the gateway from a request's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum GrammarSpec {
    /// A JSON Schema (the subset llguidance supports; anything else is refused at compile).
    JsonSchema(Value),
    /// Any JSON object.
    JsonObject,
    /// A regular expression the whole output matches.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar as llguidance takes it (it may embed `%json { ... }` schemas).
    Lark(String),
}

/// `schema` with the runtime's JSON style unless it has its own `x-guidance`: JSON as people
/// write it (`{"a": 1, "b": 2}`) and no free whitespace, since a small model given a choice of
/// whitespace can spend its whole budget on newlines. A JSON Schema spec compiles with it, and a
/// Lark grammar embedding a schema (`%json`) takes it from here so that both write JSON alike.
/// Schemas that are not objects are returned as they are.
pub fn styled_schema(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(m) = &mut schema {
        m.entry("x-guidance").or_insert_with(|| {
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

impl GrammarSpec {
    fn top_level(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            GrammarSpec::JsonSchema(schema) => {
                // `true` / `false` schemas: llguidance takes them as they are.
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(RuntimeError::Grammar("a JSON Schema is an object".into()));
                }
                TopLevelGrammar::from_json_schema(styled_schema(schema))
            }
            GrammarSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(styled_schema(&json!({"type": "object"})))
            }
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GrammarSpec::Choice(options) => {
                if options.is_empty() {
                    return Err(RuntimeError::Grammar("the choice list is empty".into()));
                }
                // Lark string literals are JSON strings.
                let alts: Vec<String> = options
                    .iter()
                    .map(|o| serde_json::to_string(o).expect("strings serialize"))
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            GrammarSpec::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        })
    }
}

/// A grammar ready to follow: llguidance's parser in its start state, cloned per sequence.
pub struct CompiledGrammar {
    start: Mutex<Matcher>,
    eos: u32,
}

impl std::fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledGrammar").finish_non_exhaustive()
    }
}

impl PartialEq for CompiledGrammar {
    /// Compiled grammars are compared by identity (the cache hands out one per spec).
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl CompiledGrammar {
    /// A fresh follower for one sequence.
    pub fn start(&self) -> Constraint {
        let m = self.start.lock().expect("never poisoned").deep_clone();
        Constraint::new(m, self.eos)
    }
}

/// Counters of grammar compilation (for `/metrics` and benchmarks).
#[derive(Debug, Default)]
pub struct GrammarStats {
    pub compiled: AtomicU64,
    pub cache_hits: AtomicU64,
    pub compile_us_total: AtomicU64,
}

/// The grammar compiler of one tokenizer, with its cache.
pub struct Grammars {
    factory: ParserFactory,
    eos: u32,
    cache: Mutex<HashMap<String, Arc<CompiledGrammar>>>,
    stats: GrammarStats,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("cached", &self.cache.lock().map(|c| c.len()).unwrap_or(0))
            .finish()
    }
}

impl Grammars {
    /// `vocab`: the width of the model's logits.
    pub fn new(tok: &Tokenizer, vocab: usize) -> Result<Self> {
        let view = tokenv::TokenizerView::new(tok, vocab);
        let env: TokEnv = Arc::new(view);
        let eos = env.tok_trie().eos_token();
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| RuntimeError::Grammar(format!("cannot index the tokenizer: {e}")))?;
        // Errors go to the client in the response; llguidance's own logging stays quiet.
        factory.quiet();
        Ok(Self {
            factory,
            eos,
            cache: Mutex::new(HashMap::new()),
            stats: GrammarStats::default(),
        })
    }

    pub fn stats(&self) -> &GrammarStats {
        &self.stats
    }

    /// The compiled grammar of `spec`, from the cache or compiled now. A schema or grammar that
    /// does not compile is [`RuntimeError::Grammar`] with llguidance's reason (which names the
    /// keyword or the rule).
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Arc<CompiledGrammar>> {
        let key = serde_json::to_string(spec).expect("specs serialize");
        if let Some(g) = self.cache.lock().expect("never poisoned").get(&key) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(g.clone());
        }
        let t0 = Instant::now();
        let parser = self
            .factory
            .create_parser(spec.top_level()?)
            .map_err(|e| RuntimeError::Grammar(e.to_string()))?;
        let mut m = Matcher::new(Ok(parser));
        // A grammar can compile and still accept nothing (an unsatisfiable schema): the first
        // mask tells, before a request is queued on it.
        let first = m
            .compute_mask()
            .map_err(|e| RuntimeError::Grammar(e.to_string()))?;
        if first.is_zero() {
            return Err(RuntimeError::Grammar(
                "the grammar accepts no output".into(),
            ));
        }
        let g = Arc::new(CompiledGrammar {
            start: Mutex::new(m),
            eos: self.eos,
        });
        self.note_compile(t0.elapsed());
        let mut cache = self.cache.lock().expect("never poisoned");
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, g.clone());
        Ok(g)
    }

    fn note_compile(&self, took: Duration) {
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        self.stats
            .compile_us_total
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}
