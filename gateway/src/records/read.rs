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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::schema::Record;
    use crate::records::testutil::{request, TempDir};

    fn line(rec: Record) -> String {
        String::from_utf8(rec.to_line().unwrap()).unwrap() + "\n"
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_counted() {
        let dir = TempDir::new();
        let (a, b, c) = (
            request("e1", "a", 1, 1.0),
            request("e1", "a", 2, 1.0),
            request("e1", "a", 3, 1.0),
        );
        let torn = line(Record::Request(c.clone()));
        let first = line(Record::Request(a.clone())) + "\n" + &torn[..torn.len() / 2];
        std::fs::write(dir.path().join("requests-100.jsonl"), first).unwrap();
        // A later file (by its name's time, not the listing order) holds the rest.
        std::fs::write(
            dir.path().join("requests-20.jsonl"),
            line(Record::Request(b.clone())),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("requests-300.jsonl"),
            line(Record::Request(c.clone())),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not records").unwrap();
        let back = read_all(dir.path()).unwrap();
        assert_eq!(back.requests, vec![b, a, c]);
        assert_eq!(back.skipped_lines, 1);
    }

    #[test]
    fn a_missing_folder_holds_no_records() {
        let dir = TempDir::new();
        assert_eq!(
            read_all(&dir.path().join("absent")).unwrap(),
            Records::default()
        );
    }

    #[test]
    fn one_experiment_with_the_feedback_on_its_requests() {
        let dir = TempDir::new();
        let mine = request("e1", "a", 1, 1.0);
        let other = request("e2", "a", 2, 1.0);
        let fb = |id: u64| FeedbackRecord {
            ts_ms: id,
            request_id: format!("chatcmpl-{id}"),
            value: 1.0,
            label: None,
        };
        let reqs = line(Record::Request(mine.clone())) + &line(Record::Request(other));
        std::fs::write(dir.path().join("requests-1.jsonl"), reqs).unwrap();
        let fbs = line(Record::Feedback(fb(1)))
            + &line(Record::Feedback(fb(2)))
            + &line(Record::Feedback(fb(9)));
        std::fs::write(dir.path().join("feedback-1.jsonl"), fbs).unwrap();
        let shadow = ShadowRecord {
            experiment_id: "e2".into(),
            ..ShadowRecord::default()
        };
        std::fs::write(
            dir.path().join("shadows-1.jsonl"),
            line(Record::Shadow(shadow)),
        )
        .unwrap();
        let back = read_experiment(dir.path(), "e1").unwrap();
        assert_eq!(back.requests, vec![mine]);
        assert_eq!(back.feedback, vec![fb(1)]);
        assert!(back.shadows.is_empty());
        let all = read_all(dir.path()).unwrap();
        assert_eq!(
            (all.requests.len(), all.shadows.len(), all.feedback.len()),
            (2, 1, 3)
        );
    }
}
