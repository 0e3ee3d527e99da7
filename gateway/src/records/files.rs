//! Record files: `<prefix>-<start unix ms>.jsonl` in the records folder, one series per kind.
//! A file is only ever appended to by the writer that created it (`create_new`), so a line torn
//! by a crash stays the last line of its file and two replicas sharing a folder never interleave.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::schema::Kind;

/// One open file of one kind.
pub(super) struct Sink {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    /// Bytes appended (buffered or not).
    bytes: u64,
    opened: Instant,
    /// Lines appended since the last successful flush.
    unflushed: u64,
}

impl Sink {
    /// Creates the folder if needed and a new file named after the current time (the next free
    /// millisecond if that name is taken).
    pub(super) fn create(dir: &Path, kind: Kind) -> io::Result<Sink> {
        std::fs::create_dir_all(dir)?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for ms in now_ms..now_ms + 10_000 {
            let path = dir.join(file_name(kind, ms));
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Sink {
                        path,
                        out: Some(BufWriter::with_capacity(256 << 10, file)),
                        bytes: 0,
                        opened: Instant::now(),
                        unflushed: 0,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free records file name",
        ))
    }

    /// A sink over an open file (tests: `/dev/full` stands for a full disk).
    #[cfg(test)]
    pub(super) fn over(path: PathBuf, file: File) -> Sink {
        Sink {
            path,
            out: Some(BufWriter::new(file)),
            bytes: 0,
            opened: Instant::now(),
            unflushed: 0,
        }
    }

    /// Past its size or age (an empty file is never rotated).
    pub(super) fn full(&self, max_bytes: u64, max_age: std::time::Duration) -> bool {
        self.bytes > 0 && (self.bytes >= max_bytes || self.opened.elapsed() >= max_age)
    }

    /// Appends a line (newline added) in one write, so a buffer flush never splits it from its
    /// newline and a reader never sees half a line except after a crash.
    pub(super) fn append(&mut self, mut line: Vec<u8>) -> io::Result<()> {
        let out = self.out.as_mut().ok_or_else(closed)?;
        self.unflushed += 1;
        line.push(b'\n');
        out.write_all(&line)?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Hands buffered lines to the OS; returns how many lines that made durable to readers.
    pub(super) fn flush(&mut self) -> io::Result<u64> {
        self.out.as_mut().ok_or_else(closed)?.flush()?;
        Ok(std::mem::take(&mut self.unflushed))
    }

    /// Lines appended but not flushed: what a failure loses.
    pub(super) fn unflushed(&self) -> u64 {
        self.unflushed
    }

    /// Closes a flushed file; an empty one is removed (a failed first write leaves no litter).
    pub(super) fn finish(mut self) {
        drop(self.out.take());
        if self.bytes == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Sink {
    /// A sink dropped without `finish` failed: its buffer is discarded, not retried, so the
    /// records counted as lost stay lost (at most a torn last line, which readers skip).
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            let _ = out.into_parts();
        }
    }
}

fn closed() -> io::Error {
    io::Error::other("records file already closed")
}

pub(super) fn file_name(kind: Kind, start_ms: u64) -> String {
    format!("{}-{start_ms}.jsonl", kind.file_prefix())
}

/// The start time in a file name of this kind, or `None` for any other file.
pub(super) fn parse_name(kind: Kind, name: &str) -> Option<u64> {
    let rest = name.strip_prefix(kind.file_prefix())?.strip_prefix('-')?;
    rest.strip_suffix(".jsonl")?.parse().ok()
}

/// This kind's files in the folder, oldest first; a missing folder has none.
pub(super) fn list(dir: &Path, kind: Kind) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(ms) = name.to_str().and_then(|n| parse_name(kind, n)) {
            found.push((ms, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_other_files_are_ignored() {
        assert_eq!(file_name(Kind::Shadow, 42), "shadows-42.jsonl");
        assert_eq!(parse_name(Kind::Shadow, "shadows-42.jsonl"), Some(42));
        assert_eq!(parse_name(Kind::Request, "shadows-42.jsonl"), None);
        assert_eq!(parse_name(Kind::Request, "requests-42.jsonl.tmp"), None);
        assert_eq!(parse_name(Kind::Request, "requests-x.jsonl"), None);
        assert_eq!(parse_name(Kind::Feedback, "feedback-7.jsonl"), Some(7));
    }
}
