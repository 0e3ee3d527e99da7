//! Shadow scoring: how well a model (the base or an adapter) explains a completion another model
//! served, from one teacher-forced pass of prompt + completion. The endpoint
//! (`POST /v1/shadow/score`) and live shadows ([`ShadowQueue`]) both go through [`score_jobs`]
//! and [`summarize`], one code path, so a live shadow's score equals the endpoint's answer on
//! the same pair.

mod queue;
mod score;
mod summary;
pub mod wire;

pub use queue::{
    Generated, LiveMode, LiveShadowJob, ShadowConfig, ShadowCounts, ShadowInfo, ShadowOutcome,
    ShadowQueue, ShadowResult, ShadowSink,
};
pub use score::{live_priority, score_jobs, ScoreJob, SCORE_TOP_K};
pub use summary::{compare, edit_distance, kl_estimate, summarize, Comparison, Summary, KL_TOP_K};
