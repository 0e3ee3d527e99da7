//! The three record kinds written as JSON lines. A line carries `"schema"` (this version), `"kind"`
//! and `"ts"` (ISO 8601 UTC, derived from `ts_ms` when written) before the record's own fields, so
//! DuckDB's `read_json_auto` types `ts` as a TIMESTAMPTZ and `ts_ms` as a BIGINT without hints.
//! Readers ignore fields they do not know: adding a field is not a schema change, renaming or
//! changing the meaning of one is (bump [`SCHEMA_VERSION`]). The field table is in the README (Records).

use serde::{Deserialize, Serialize};

/// The `"schema"` every line carries.
pub const SCHEMA_VERSION: u32 = 1;

/// One request served on a route (an experiment), successful or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// When the request finished, unix milliseconds.
    pub ts_ms: u64,
    /// The id the client saw (`chatcmpl-…`/`cmpl-…`): what `POST /v1/feedback` names.
    pub request_id: String,
    /// The HTTP request id (`x-request-id`), to find the request in the logs.
    pub http_request_id: Option<String>,
    pub route: String,
    pub experiment_id: String,
    /// "single" | "segmented" | "ab" | "switchback".
    pub policy: String,
    pub arm: String,
    /// Hex of md5(salt ‖ unit); never the raw unit.
    pub unit_hash: Option<String>,
    /// "user" | "header" | "random" | "none".
    pub unit_source: String,
    pub segment: Option<String>,
    /// Switchback window index.
    pub window: Option<u64>,
    /// False in a switchback burn-in or while the experiment is paused: served, not analysed.
    pub in_analysis: bool,
    /// The arm's model string (`base`, `adapter` or `adapter@3`).
    pub model: String,
    pub adapter: Option<String>,
    pub adapter_version: Option<u64>,
    /// "chat" | "completions".
    pub endpoint: String,
    pub stream: bool,
    /// "ok" | "error" | "cancelled" (the client left).
    pub status: String,
    /// The error code when `status` is "error" (the OpenAI `code`, or the error kind).
    pub error: Option<String>,
    pub finish_reason: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Time to the first token; absent when none was produced.
    pub ttft_ms: Option<f64>,
    pub latency_ms: f64,
}

/// One shadow model's verdict on one primary response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowRecord {
    pub ts_ms: u64,
    /// The primary's request id (joins on [`RequestRecord::request_id`]).
    pub request_id: String,
    pub route: String,
    pub experiment_id: String,
    /// The arm that served the primary.
    pub arm: String,
    pub shadow_model: String,
    pub shadow_adapter_version: Option<u64>,
    /// "score" | "generate".
    pub mode: String,
    /// "scored" | "failed" | "dropped" (the shadow queue was full).
    pub status: String,
    pub error: Option<String>,
    /// Served tokens scored.
    pub tokens: u64,
    pub mean_logprob: Option<f64>,
    pub perplexity: Option<f64>,
    /// The primary's own mean logprob of the same tokens, when it was captured.
    pub primary_mean_logprob: Option<f64>,
    /// Shadow perplexity / primary perplexity.
    pub ppl_ratio: Option<f64>,
    /// Share of positions where the shadow's argmax is the served token.
    pub top1_agreement: Option<f64>,
    /// KL(primary ‖ shadow) estimated from both sides' top-k, mean per token.
    pub kl: Option<f64>,
    /// Generate mode: the shadow's own answer equals the served one.
    pub exact_match: Option<bool>,
    /// Generate mode: token edit distance between the two answers.
    pub edit_distance: Option<u64>,
    pub shadow_completion_tokens: Option<u64>,
    pub shadow_latency_ms: Option<f64>,
}

/// An outcome a client reported for a request (`POST /v1/feedback`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    pub ts_ms: u64,
    pub request_id: String,
    pub value: f64,
    pub label: Option<String>,
}

/// Anything the recorder writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Request(RequestRecord),
    Shadow(ShadowRecord),
    Feedback(FeedbackRecord),
}

/// The three kinds, each with its own file series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Shadow,
    Feedback,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Request, Kind::Shadow, Kind::Feedback];

    /// The `"kind"` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Shadow => "shadow",
            Kind::Feedback => "feedback",
        }
    }

    /// File names are `<prefix>-<start unix ms>.jsonl`.
    pub fn file_prefix(self) -> &'static str {
        match self {
            Kind::Request => "requests",
            Kind::Shadow => "shadows",
            Kind::Feedback => "feedback",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl Record {
    pub fn kind(&self) -> Kind {
        match self {
            Record::Request(_) => Kind::Request,
            Record::Shadow(_) => Kind::Shadow,
            Record::Feedback(_) => Kind::Feedback,
        }
    }

    fn ts_ms(&self) -> u64 {
        match self {
            Record::Request(r) => r.ts_ms,
            Record::Shadow(r) => r.ts_ms,
            Record::Feedback(r) => r.ts_ms,
        }
    }

    /// The JSON line, without its newline.
    pub fn to_line(&self) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Line<'a, T: Serialize> {
            schema: u32,
            kind: &'static str,
            ts: String,
            #[serde(flatten)]
            rec: &'a T,
        }
        let (schema, kind, ts) = (SCHEMA_VERSION, self.kind().name(), iso8601(self.ts_ms()));
        match self {
            Record::Request(rec) => serde_json::to_vec(&Line {
                schema,
                kind,
                ts,
                rec,
            }),
            Record::Shadow(rec) => serde_json::to_vec(&Line {
                schema,
                kind,
                ts,
                rec,
            }),
            Record::Feedback(rec) => serde_json::to_vec(&Line {
                schema,
                kind,
                ts,
                rec,
            }),
        }
    }
}

/// Unix milliseconds now: what `ts_ms` holds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-03-01T12:00:00.123Z` for unix milliseconds (proleptic Gregorian, UTC).
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        // 2024-12-31T23:59:59.999Z, a leap year's last millisecond.
        assert_eq!(iso8601(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(iso8601(1_772_366_400_123), "2026-03-01T12:00:00.123Z");
    }

    #[test]
    fn a_line_leads_with_schema_kind_and_ts() {
        let rec = Record::Feedback(FeedbackRecord {
            ts_ms: 1_000,
            request_id: "chatcmpl-1".into(),
            value: 1.0,
            label: None,
        });
        let line = String::from_utf8(rec.to_line().unwrap()).unwrap();
        assert!(
            line.starts_with(
                r#"{"schema":1,"kind":"feedback","ts":"1970-01-01T00:00:01.000Z","ts_ms":1000,"#
            ),
            "{line}"
        );
        let back: FeedbackRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(Record::Feedback(back), rec);
    }
}
