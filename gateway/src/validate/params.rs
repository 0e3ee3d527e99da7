//! The sampling fields both endpoints share → the runtime's validated parameter types.

use std::num::NonZeroUsize;

use loraplex_runtime::{
    GenerationParams, GenerationRequest, LogitBias, MinP, Penalties, Sampling, Temperature, TopP,
};

use super::Reply;
use crate::error::ApiError;
use crate::wire::{SamplingFields, StringOrList};

/// Largest `n` accepted.
pub const MAX_N: usize = 16;
/// Largest number of alternatives per token in logprobs.
pub const MAX_TOP_LOGPROBS: usize = 20;
const MAX_STOPS: usize = 16;

/// A request's sampling fields, validated: all of `GenerationParams` but the completion length,
/// which the chat endpoint derives from the prompt's.
#[derive(Debug, Clone)]
pub struct Sampled {
    sampling: Sampling,
    penalties: Penalties,
    logit_bias: LogitBias,
    stop: Vec<String>,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    logprobs: Option<usize>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Explicit `max_tokens`, if the client gave one.
    pub max_tokens: Option<usize>,
}

impl Sampled {
    /// How the reply to a request with these fields is written.
    pub fn reply(&self, model: String, f: &SamplingFields) -> Reply {
        Reply {
            model,
            stream: self.stream,
            include_usage: self.include_usage,
            logprobs: self.logprobs.is_some(),
            top_logprobs: self.logprobs.unwrap_or(0),
            tokens_as_ids: f.return_tokens_as_token_ids,
        }
    }

    /// The engine requests of one prompt's `n` choices. Each choice's seed is offset by its
    /// index: the choices of one request differ, yet a fixed seed reproduces all of them.
    pub fn choices<'a>(
        &'a self,
        prompt: &'a [u32],
        max_tokens: usize,
        adapter: Option<&'a str>,
        prompt_logprobs: Option<usize>,
    ) -> impl Iterator<Item = GenerationRequest> + 'a {
        (0..self.n).map(move |i| {
            let mut sampling = self.sampling;
            if let Sampling::Random { seed, .. } = &mut sampling {
                *seed = seed.wrapping_add(i as u64);
            }
            let params = GenerationParams {
                sampling,
                penalties: self.penalties,
                logit_bias: self.logit_bias.clone(),
                max_tokens,
                stop: self.stop.clone(),
                stop_token_ids: self.stop_token_ids.clone(),
                ignore_eos: self.ignore_eos,
                logprobs: self.logprobs,
                constraint: None,
            };
            GenerationRequest {
                adapter: adapter.map(String::from),
                prompt_logprobs,
                ..GenerationRequest::new(prompt.to_vec(), params)
            }
        })
    }
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

/// Chat's `logprobs` flag and `top_logprobs` → alternatives per token, if logprobs are wanted.
pub fn chat_logprobs(logprobs: bool, top: Option<i64>) -> Result<Option<usize>, ApiError> {
    match (logprobs, top) {
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs requires logprobs=true",
        )),
        (false, None) => Ok(None),
        (true, None) => Ok(Some(0)),
        (true, Some(k)) => top_logprobs("top_logprobs", k).map(Some),
    }
}

/// The legacy endpoint's `logprobs`: alternatives per token.
pub fn completion_logprobs(logprobs: Option<i64>) -> Result<Option<usize>, ApiError> {
    logprobs.map(|k| top_logprobs("logprobs", k)).transpose()
}

fn top_logprobs(param: &str, k: i64) -> Result<usize, ApiError> {
    if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
        Ok(k as usize)
    } else {
        Err(ApiError::invalid(
            param,
            format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        ))
    }
}

pub fn sampling(
    f: &SamplingFields,
    max_tokens: Option<i64>,
    logprobs: Option<usize>,
    vocab: usize,
) -> Result<Sampled, ApiError> {
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
    let sampling = sampler(f)?;
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
    // The runtime's error names the penalty it refuses.
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
    Ok(Sampled {
        sampling,
        penalties,
        logit_bias,
        stop,
        stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
        ignore_eos: f.ignore_eos,
        logprobs,
        n,
        stream: f.stream,
        include_usage,
        max_tokens,
    })
}

/// Temperature 0 is greedy; otherwise the truncations asked for, each off at its neutral value.
fn sampler(f: &SamplingFields) -> Result<Sampling, ApiError> {
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
    if temperature == 0.0 {
        return Ok(Sampling::Greedy);
    }
    Ok(Sampling::Random {
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
    })
}
