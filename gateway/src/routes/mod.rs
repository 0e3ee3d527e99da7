//! The handlers, one module per resource. Inference handlers read top to bottom as resolve →
//! validate → register → submit → render; nothing here is imported by what it uses.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod experiments;
pub mod models;
pub mod ops;
pub mod outcomes;
pub mod shadow_score;
