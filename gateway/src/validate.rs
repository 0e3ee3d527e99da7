//! Wire requests → the runtime's validated types. Every rejection names the offending field.

use std::num::NonZeroUsize;

use loraplex_models::ChatMessage;
use loraplex_runtime::{GenerationParams, LogitBias, MinP, Penalties, Sampling, Temperature, TopP};

use crate::error::ApiError;
use crate::wire::{Content, Message, SamplingFields, StringOrList};

/// Largest `n` accepted.
pub const MAX_N: usize = 16;
/// Largest number of alternatives per token in logprobs.
pub const MAX_TOP_LOGPROBS: usize = 20;
const MAX_STOPS: usize = 16;

/// Parameters common to both endpoints, validated; `max_tokens` is resolved per prompt.
#[derive(Debug, Clone)]
pub struct Validated {
    pub params: GenerationParams,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Explicit `max_tokens`, if the client gave one.
    pub max_tokens: Option<usize>,
}

fn range(param: &str, v: f64, lo: f64, hi: f64) -> Result<f32, ApiError> {
    if !(v.is_finite() && v >= lo && v <= hi) {
        return Err(ApiError::invalid(
            param,
            format!("{param} must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(v as f32)
}

pub fn sampling(
    f: &SamplingFields,
    max_tokens: Option<i64>,
    logprobs: Option<usize>,
    vocab: usize,
) -> Result<Validated, ApiError> {
    let n = match f.n {
        None => 1,
        Some(n) if n >= 1 && n as usize <= MAX_N => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {MAX_N}, got {n}"),
            ))
        }
    };
    let max_tokens = match max_tokens {
        None => None,
        Some(m) if m >= 0 => Some(m as usize),
        Some(m) => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens must be at least 0, got {m}"),
            ))
        }
    };
    let temperature = range("temperature", f.temperature.unwrap_or(1.0), 0.0, 2.0)?;
    let top_p = f.top_p.map(|p| range("top_p", p, 0.0, 1.0)).transpose()?;
    if top_p == Some(0.0) {
        return Err(ApiError::invalid("top_p", "top_p must be greater than 0"));
    }
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k > 0 => NonZeroUsize::new(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1 (off) or positive, got {k}"),
            ))
        }
    };
    let min_p = match f.min_p.map(|p| range("min_p", p, 0.0, 1.0)).transpose()? {
        None => None,
        Some(0.0) => None,
        Some(p) => Some(MinP::new(p).map_err(|e| ApiError::invalid("min_p", e.to_string()))?),
    };
    let seed = f.seed.map(|s| s as u64).unwrap_or_else(rand::random);
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Random {
            temperature: Temperature::new(temperature)
                .map_err(|e| ApiError::invalid("temperature", e.to_string()))?,
            top_k,
            top_p: match top_p {
                Some(p) if p < 1.0 => {
                    Some(TopP::new(p).map_err(|e| ApiError::invalid("top_p", e.to_string()))?)
                }
                _ => None,
            },
            min_p,
            seed,
        }
    };
    let presence = range(
        "presence_penalty",
        f.presence_penalty.unwrap_or(0.0),
        -2.0,
        2.0,
    )?;
    let frequency = range(
        "frequency_penalty",
        f.frequency_penalty.unwrap_or(0.0),
        -2.0,
        2.0,
    )?;
    let repetition = f.repetition_penalty.unwrap_or(1.0);
    if !(repetition.is_finite() && repetition > 0.0) {
        return Err(ApiError::invalid(
            "repetition_penalty",
            "repetition_penalty must be greater than 0",
        ));
    }
    let penalties = Penalties::new(repetition as f32, presence, frequency)?;
    let mut bias = Vec::new();
    for (k, v) in f.logit_bias.iter().flatten() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("logit_bias key {k:?} is not a token id"),
            )
        })?;
        bias.push((id, *v as f32));
    }
    let logit_bias =
        LogitBias::new(bias, vocab).map_err(|e| ApiError::invalid("logit_bias", e.to_string()))?;
    let stop = match &f.stop {
        None => Vec::new(),
        Some(StringOrList::One(s)) => vec![s.clone()],
        Some(StringOrList::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} stop sequences"),
        ));
    }
    let include_usage = f.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if f.stream_options.is_some() && !f.stream {
        return Err(ApiError::invalid(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    Ok(Validated {
        params: GenerationParams {
            sampling,
            penalties,
            logit_bias,
            max_tokens: 0, // resolved per prompt
            stop,
            stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: f.ignore_eos,
            logprobs,
        },
        n,
        stream: f.stream,
        include_usage,
        max_tokens,
    })
}

/// The seed of choice `i`: choices of one request differ, yet a fixed seed reproduces all of them.
pub fn params_for_choice(p: &GenerationParams, i: usize) -> GenerationParams {
    let mut p = p.clone();
    if let Sampling::Random { seed, .. } = &mut p.sampling {
        *seed = seed.wrapping_add(i as u64);
    }
    p
}

/// Chat messages → the template's input; text parts are joined, other parts refused.
pub fn messages(msgs: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!(
                            "unsupported role {other:?} (system, developer, user or assistant)"
                        ),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content[{j}]"),
                                    "only text content parts are supported",
                                ))
                            }
                        }
                    }
                    s
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}
