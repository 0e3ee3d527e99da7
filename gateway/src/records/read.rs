//! Reading records back for reports: every file of each kind, oldest first. A line that does not
//! parse (the torn last line of a file after a crash, a hand edit) is skipped and counted, never
//! an error: one bad line must not hide an experiment's report.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::de::DeserializeOwned;

use super::files;
use super::schema::{FeedbackRecord, Kind, RequestRecord, ShadowRecord};

/// Records read back, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    pub requests: Vec<RequestRecord>,
    pub shadows: Vec<ShadowRecord>,
    pub feedback: Vec<FeedbackRecord>,
    /// Lines that did not parse as their file's kind.
    pub skipped_lines: u64,
}

/// Everything in `dir`; a folder that does not exist yet holds no records.
pub fn read_all(dir: &Path) -> io::Result<Records> {
    read_filtered(dir, None)
}

/// One experiment's requests and shadow records, and the feedback on those requests: what its
/// report needs, without holding every other experiment's records in memory.
pub fn read_experiment(dir: &Path, experiment_id: &str) -> io::Result<Records> {
    read_filtered(dir, Some(experiment_id))
}

/// `experiment`: keep only its records (`None`: everything, orphan feedback included).
fn read_filtered(dir: &Path, experiment: Option<&str>) -> io::Result<Records> {
    let keep = |id: &str| experiment.is_none_or(|e| e == id);
    let mut out = Records::default();
    let mut skipped = 0;
    read_kind(dir, Kind::Request, &mut skipped, |r: RequestRecord| {
        if keep(&r.experiment_id) {
            out.requests.push(r)
        }
    })?;
    read_kind(dir, Kind::Shadow, &mut skipped, |r: ShadowRecord| {
        if keep(&r.experiment_id) {
            out.shadows.push(r)
        }
    })?;
    let ids: HashSet<&str> = out.requests.iter().map(|r| r.request_id.as_str()).collect();
    let mut feedback = Vec::new();
    read_kind(dir, Kind::Feedback, &mut skipped, |r: FeedbackRecord| {
        if experiment.is_none() || ids.contains(r.request_id.as_str()) {
            feedback.push(r)
        }
    })?;
    drop(ids);
    out.feedback = feedback;
    out.skipped_lines = skipped;
    Ok(out)
}

fn read_kind<T: DeserializeOwned>(
    dir: &Path,
    kind: Kind,
    skipped: &mut u64,
    mut each: impl FnMut(T),
) -> io::Result<()> {
    for path in files::list(dir, kind)? {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Removed between listing and opening (an operator pruning old files).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<T>(text) {
                Ok(rec) => each(rec),
                Err(_) => *skipped += 1,
            }
        }
    }
    Ok(())
}
