//! The one integration-test binary (as ripgrep's `tests/tests.rs`): every module below is a
//! boundary of the system tested from outside.

mod adapter_fixtures;
mod util;

mod adapter_cache;
mod adapter_store;
mod adapters;
mod admin;
mod cli;
mod engine;
mod gateway;
mod golden_smollm2;
mod golden_tiny;
mod hub;
mod load_errors;
mod tokenizer;
