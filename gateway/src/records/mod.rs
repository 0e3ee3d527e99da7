//! Records of what experiments served and how it went: request, shadow and feedback records as
//! JSON lines (`schema`), written off the request path by one thread (`writer`, `files`), read
//! back (`read`) and summarised into an experiment's report (`report`, `compare`,
//! `shadow_report`, `stats`, `timeline`, `svg`). Nothing here knows HTTP or the experiment
//! types: callers pass plain records and an [`ExperimentInfo`]. The line format is in the README (Records).

mod compare;
mod files;
mod read;
mod report;
mod schema;
mod shadow_report;
mod stats;
mod svg;
mod timeline;
mod writer;

pub use compare::{ArmDifference, Unit};
pub use read::{read_all, read_experiment, Records};
pub use report::{report, ArmReport, ExperimentInfo, FeedbackSummary, Report, Summary};
pub use schema::{
    iso8601, now_ms, FeedbackRecord, Kind, Record, RequestRecord, ShadowRecord, SCHEMA_VERSION,
};
pub use shadow_report::{Scores, ShadowArm, ShadowReport};
pub use stats::{Difference, MeanInterval, Quantiles};
pub use svg::report_svg;
pub use timeline::{Timeline, TimelinePoint};
pub use writer::{Recorder, RecorderConfig, RecorderStats};

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::RequestRecord;

    /// A fresh folder under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let name = format!(
                "loraplex-records-{}-{}-{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// An ok, in-analysis request of experiment `exp`, arm `arm`.
    pub(crate) fn request(exp: &str, arm: &str, id: u64, latency_ms: f64) -> RequestRecord {
        RequestRecord {
            ts_ms: 1_700_000_000_000 + id * 1000,
            request_id: format!("chatcmpl-{id}"),
            http_request_id: Some(format!("req-{id}")),
            route: "support".into(),
            experiment_id: exp.into(),
            policy: "ab".into(),
            arm: arm.into(),
            unit_hash: Some(format!("{id:032x}")),
            unit_source: "user".into(),
            segment: None,
            window: None,
            in_analysis: true,
            model: format!("ad-{arm}"),
            adapter: Some(format!("ad-{arm}")),
            adapter_version: Some(1),
            endpoint: "chat".into(),
            stream: false,
            status: "ok".into(),
            error: None,
            finish_reason: Some("stop".into()),
            prompt_tokens: 10,
            completion_tokens: 5,
            ttft_ms: Some(latency_ms / 4.0),
            latency_ms,
        }
    }
}
