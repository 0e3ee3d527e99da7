//! Tool calling on chat completions: the request's tools validated ([`spec`]), the grammar
//! that holds the output to calls of them ([`grammar`]), and the reader that turns the output
//! back into content and calls ([`parser`]). The format the model is asked for and held to is
//! `loraplex_models::chat_tools`'s (Hermes style), whatever the chat template: templates that
//! render tools themselves get them, and the grammar still decides what is written.

mod grammar;
mod parser;
mod reply;
mod spec;

use std::sync::Arc;

use loraplex_runtime::{CompiledGrammar, GrammarSpec, Grammars, RuntimeError};

pub use parser::{CallParser, Piece};
pub use reply::{delta, finish_reason, message};
pub use spec::{tools, Tools};

use crate::error::ApiError;

/// A whole output, read at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ParsedCall>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub id: String,
    pub name: String,
    /// The arguments' JSON text as the model wrote it.
    pub arguments: String,
}

impl Parsed {
    /// Pieces joined: content concatenated, each call's fragments concatenated.
    pub fn of(pieces: impl IntoIterator<Item = Piece>) -> Self {
        let mut p = Parsed::default();
        for piece in pieces {
            match piece {
                Piece::Content(s) => p.content.push_str(&s),
                Piece::Call { id, name, .. } => p.calls.push(ParsedCall {
                    id,
                    name,
                    arguments: String::new(),
                }),
                Piece::Arguments { index, fragment } => {
                    p.calls[index].arguments.push_str(&fragment)
                }
            }
        }
        p
    }
}

/// Reads a whole output (a reply that is not streamed): the same pieces as streaming gives.
pub fn parse(text: &str) -> Parsed {
    let mut p = CallParser::default();
    let mut pieces = p.push(text);
    pieces.extend(p.finish());
    Parsed::of(pieces)
}

/// The constraint a chat's output follows, with the field a refusal to compile it names:
/// the tools' grammar when calls are possible (with `format`, the response format's
/// constraint, as the alternative to calls under `auto`; under `required` or a named function
/// the output is calls only and `format` has no say), else `format` alone.
pub fn constraint(
    tools: Option<&Tools>,
    format: Option<(GrammarSpec, String)>,
) -> Option<(GrammarSpec, String)> {
    let Some(t) = tools.filter(|t| t.calls_possible()) else {
        return format;
    };
    let lark = grammar::lark(t, format.as_ref().map(|(spec, _)| spec)).expect("calls are possible");
    let param = format.map(|(_, p)| p).unwrap_or_else(|| "tools".into());
    Some((GrammarSpec::Lark(lark), param))
}

/// Compiles a chat's constraint. When the tools' grammar does not compile, the refusal names
/// the first function whose parameters do not compile alone (`tools[i].function.parameters`),
/// else `param`.
pub fn compile(
    grammars: &Grammars,
    tools: Option<&Tools>,
    spec: &GrammarSpec,
    param: &str,
) -> Result<Arc<CompiledGrammar>, ApiError> {
    let message = |e: RuntimeError| match e {
        RuntimeError::Grammar(m) => m,
        other => other.to_string(),
    };
    grammars.compile(spec).map_err(|e| {
        let culprit = tools
            .into_iter()
            .flat_map(|t| &t.functions)
            .enumerate()
            .find_map(|(i, f)| {
                grammars
                    .compile(&GrammarSpec::JsonSchema(f.parameters.clone()))
                    .err()
                    .map(|e| (i, e))
            });
        let (param, m) = match culprit {
            Some((i, e)) => (format!("tools[{i}].function.parameters"), message(e)),
            None => (param.to_string(), message(e)),
        };
        ApiError::invalid(&param, format!("{param}: {m}"))
    })
}
