//! The recorder: a bounded channel to one writer thread that appends JSON lines, so recording
//! never blocks or fails a request. A full channel drops the record (counted); a directory that
//! cannot be written, or a full disk, loses the records it refuses (counted, logged at most every
//! 10 s) and is retried after a short backoff — the server keeps serving either way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::files::Sink;
use super::schema::{FeedbackRecord, Kind, Record, RequestRecord, ShadowRecord};

/// Where and how records are written (`serve --records-dir` and friends).
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    /// Records waiting for the writer; past this they are dropped.
    pub capacity: usize,
    /// A file is closed and a new one started past this size …
    pub max_file_bytes: u64,
    /// … or this age.
    pub max_file_age: Duration,
    /// Buffered lines reach the file at least this often.
    pub flush_interval: Duration,
    /// After a failed open or write, how long records are refused before the next attempt.
    pub retry_after: Duration,
}

impl RecorderConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            capacity: 65_536,
            max_file_bytes: 64 << 20,
            max_file_age: Duration::from_secs(3600),
            flush_interval: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// What the recorder has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecorderStats {
    /// Records flushed to a file.
    pub written: u64,
    /// Records refused because the channel was full (or the writer gone).
    pub dropped: u64,
    /// Records lost to an I/O error (unwritable directory, full disk).
    pub failed: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) written: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) failed: AtomicU64,
}

enum Msg {
    Record(Box<Record>),
    Flush(Box<dyn FnOnce() + Send>),
}

struct Inner {
    dir: PathBuf,
    tx: Option<SyncSender<Msg>>,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A cheap-to-clone handle; `Recorder::disabled()` records nothing.
#[derive(Clone)]
pub struct Recorder {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("enabled", &self.is_enabled())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Recorder {
    /// Starts the writer thread. Nothing is created on disk until the first record, and a
    /// directory that cannot be created is a counted degradation, not an error here.
    pub fn start(cfg: RecorderConfig) -> Self {
        let (tx, rx) = mpsc::sync_channel(cfg.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let dir = cfg.dir.clone();
        let writer = Writer::new(cfg, counters.clone());
        let thread = std::thread::Builder::new()
            .name("loraplex-records".into())
            .spawn(move || writer.run(rx));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the records writer; records are dropped");
                None
            }
        };
        let tx = thread.as_ref().map(|_| tx);
        Self {
            inner: Some(Arc::new(Inner {
                dir,
                tx,
                counters,
                thread: Mutex::new(thread),
            })),
        }
    }

    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The records folder (what a report reads back); `None` when disabled.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.inner.as_ref().map(|i| i.dir.as_path())
    }

    /// Queues a record; never blocks. A full queue drops it and counts the drop.
    pub fn record(&self, rec: Record) {
        let Some(inner) = &self.inner else { return };
        let sent = inner
            .tx
            .as_ref()
            .is_some_and(|tx| tx.try_send(Msg::Record(Box::new(rec))).is_ok());
        if !sent {
            inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn request(&self, rec: RequestRecord) {
        self.record(Record::Request(rec))
    }

    pub fn shadow(&self, rec: ShadowRecord) {
        self.record(Record::Shadow(rec))
    }

    pub fn feedback(&self, rec: FeedbackRecord) {
        self.record(Record::Feedback(rec))
    }

    pub fn stats(&self) -> RecorderStats {
        let Some(inner) = &self.inner else {
            return RecorderStats::default();
        };
        let c = &inner.counters;
        RecorderStats {
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Waits until everything recorded before the call is in its file (or counted as failed),
    /// so a reader sees it. Gives up after 10 s (a writer stuck on a slow disk).
    pub async fn flush(&self) {
        let Some(tx) = self.inner.as_ref().and_then(|i| i.tx.as_ref()) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + FLUSH_WAIT;
        let (done, wait) = tokio::sync::oneshot::channel::<()>();
        let mut msg = Msg::Flush(Box::new(move || {
            let _ = done.send(());
        }));
        // A barrier is never dropped: while the queue is full it waits for room (the writer
        // drains thousands of records per millisecond), without blocking a runtime thread.
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if tokio::time::Instant::now() < deadline => {
                    msg = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(_) => return,
            }
        }
        let _ = tokio::time::timeout_at(deadline, wait).await;
    }

    /// [`Recorder::flush`] for code outside the runtime (shutdown, tests).
    pub fn flush_blocking(&self) {
        let Some(tx) = self.inner.as_ref().and_then(|i| i.tx.as_ref()) else {
            return;
        };
        let (done, wait) = mpsc::channel::<()>();
        if tx
            .send(Msg::Flush(Box::new(move || {
                let _ = done.send(());
            })))
            .is_ok()
        {
            let _ = wait.recv_timeout(FLUSH_WAIT);
        }
    }
}

/// The longest a flush waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

impl Drop for Inner {
    /// The last handle closes the channel; the writer drains it, flushes and exits.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// The writer thread's state: one open file per kind.
struct Writer {
    cfg: RecorderConfig,
    counters: Arc<Counters>,
    sinks: [Option<Sink>; 3],
    /// No open attempt before this instant (after a failure).
    retry_at: Option<Instant>,
    last_flush: Instant,
    /// Failures since the last log line, and when that was.
    unlogged: u64,
    last_log: Option<Instant>,
}

impl Writer {
    fn new(cfg: RecorderConfig, counters: Arc<Counters>) -> Self {
        Self {
            cfg,
            counters,
            sinks: [None, None, None],
            retry_at: None,
            last_flush: Instant::now(),
            unlogged: 0,
            last_log: None,
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = self
                .cfg
                .flush_interval
                .saturating_sub(self.last_flush.elapsed());
            match rx.recv_timeout(wait) {
                Ok(Msg::Record(rec)) => self.write(&rec),
                Ok(Msg::Flush(done)) => {
                    self.flush_all();
                    done();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.last_flush.elapsed() >= self.cfg.flush_interval {
                self.flush_all();
            }
        }
        self.flush_all();
        for kind in Kind::ALL {
            self.close(kind);
        }
    }

    fn write(&mut self, rec: &Record) {
        let line = match rec.to_line() {
            Ok(line) => line,
            Err(e) => return self.fail(1, &format!("cannot serialise a record: {e}")),
        };
        let kind = rec.kind();
        let rotate = self.sinks[kind.index()]
            .as_ref()
            .is_some_and(|s| s.full(self.cfg.max_file_bytes, self.cfg.max_file_age));
        if rotate {
            self.close(kind);
        }
        if self.sinks[kind.index()].is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return self.fail(1, "waiting to retry");
            }
            match Sink::create(&self.cfg.dir, kind) {
                Ok(sink) => {
                    self.retry_at = None;
                    self.sinks[kind.index()] = Some(sink);
                }
                Err(e) => {
                    self.retry_at = Some(Instant::now() + self.cfg.retry_after);
                    return self.fail(1, &format!("cannot open a records file: {e}"));
                }
            }
        }
        let sink = self.sinks[kind.index()].as_mut().expect("opened above");
        if let Err(e) = sink.append(line) {
            let lost = sink.unflushed();
            self.sinks[kind.index()] = None;
            self.retry_at = Some(Instant::now() + self.cfg.retry_after);
            self.fail(lost, &format!("cannot write a records file: {e}"));
        }
    }

    fn flush_all(&mut self) {
        self.last_flush = Instant::now();
        for kind in Kind::ALL {
            let Some(sink) = self.sinks[kind.index()].as_mut() else {
                continue;
            };
            match sink.flush() {
                Ok(n) => {
                    self.counters.written.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    let lost = sink.unflushed();
                    self.sinks[kind.index()] = None;
                    self.retry_at = Some(Instant::now() + self.cfg.retry_after);
                    self.fail(lost, &format!("cannot flush a records file: {e}"));
                }
            }
        }
    }

    fn close(&mut self, kind: Kind) {
        if let Some(mut sink) = self.sinks[kind.index()].take() {
            match sink.flush() {
                Ok(n) => {
                    self.counters.written.fetch_add(n, Ordering::Relaxed);
                    sink.finish();
                }
                Err(e) => {
                    let lost = sink.unflushed();
                    self.fail(lost, &format!("cannot flush a records file: {e}"));
                }
            }
        }
    }

    /// Counts lost records and logs, at most once every 10 s, how many were lost since.
    fn fail(&mut self, lost: u64, why: &str) {
        self.counters.failed.fetch_add(lost, Ordering::Relaxed);
        self.unlogged += lost;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                dir = %self.cfg.dir.display(),
                lost = self.unlogged,
                reason = why,
                "records are being lost; requests are unaffected"
            );
            self.unlogged = 0;
            self.last_log = Some(Instant::now());
        }
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
