use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::records::testutil::{request, TempDir};
use crate::records::{files, read_all};

fn config(dir: &std::path::Path) -> RecorderConfig {
    RecorderConfig {
        // Only explicit flushes (and drop) in tests, so what a test sees is what it asked for.
        flush_interval: Duration::from_secs(3600),
        ..RecorderConfig::new(dir)
    }
}

fn shadow(id: u64) -> ShadowRecord {
    ShadowRecord {
        ts_ms: 1_700_000_000_000 + id,
        request_id: format!("chatcmpl-{id}"),
        experiment_id: "e1".into(),
        arm: "a".into(),
        shadow_model: "ad-v3".into(),
        mode: "score".into(),
        status: "scored".into(),
        tokens: 5,
        mean_logprob: Some(-1.25),
        ..ShadowRecord::default()
    }
}

#[test]
fn records_round_trip_through_files() {
    let dir = TempDir::new();
    let rec = Recorder::start(config(dir.path()));
    assert_eq!(rec.dir(), Some(dir.path()));
    let requests: Vec<_> = (0..50)
        .map(|i| request("e1", "a", i, 10.0 + i as f64))
        .collect();
    for r in &requests {
        rec.request(r.clone());
    }
    rec.shadow(shadow(3));
    let fb = FeedbackRecord {
        ts_ms: 5,
        request_id: "chatcmpl-3".into(),
        value: 0.5,
        label: Some("thumbs".into()),
    };
    rec.feedback(fb.clone());
    rec.flush_blocking();
    assert_eq!(
        rec.stats(),
        RecorderStats {
            written: 52,
            dropped: 0,
            failed: 0
        }
    );
    let back = read_all(dir.path()).unwrap();
    assert_eq!(back.requests, requests);
    assert_eq!(back.shadows, vec![shadow(3)]);
    assert_eq!(back.feedback, vec![fb]);
    assert_eq!(back.skipped_lines, 0);
    for kind in Kind::ALL {
        assert_eq!(files::list(dir.path(), kind).unwrap().len(), 1, "{kind:?}");
    }
}

#[test]
fn files_rotate_by_size_and_by_age() {
    let dir = TempDir::new();
    let rec = Recorder::start(RecorderConfig {
        max_file_bytes: 1000,
        ..config(dir.path())
    });
    let requests: Vec<_> = (0..10).map(|i| request("e1", "a", i, 1.0)).collect();
    for r in &requests {
        rec.request(r.clone());
    }
    rec.flush_blocking();
    // A request line is ~520 bytes: a file takes two before it passes 1,000 bytes.
    assert_eq!(files::list(dir.path(), Kind::Request).unwrap().len(), 5);
    assert_eq!(
        read_all(dir.path()).unwrap().requests,
        requests,
        "order kept"
    );

    let dir = TempDir::new();
    let rec = Recorder::start(RecorderConfig {
        max_file_age: Duration::ZERO,
        ..config(dir.path())
    });
    for i in 0..3 {
        rec.feedback(FeedbackRecord {
            ts_ms: i,
            request_id: format!("r{i}"),
            value: 1.0,
            label: None,
        });
    }
    rec.flush_blocking();
    assert_eq!(files::list(dir.path(), Kind::Feedback).unwrap().len(), 3);
    assert_eq!(rec.stats().written, 3);
}

#[test]
fn an_unwritable_dir_is_counted_and_retried() {
    let dir = TempDir::new();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let rec = Recorder::start(RecorderConfig {
        retry_after: Duration::ZERO,
        ..config(&blocker.join("records"))
    });
    for i in 0..3 {
        rec.request(request("e1", "a", i, 1.0));
    }
    rec.flush_blocking();
    assert_eq!(
        rec.stats(),
        RecorderStats {
            written: 0,
            dropped: 0,
            failed: 3
        }
    );
    // The folder becomes creatable: the next record opens a file.
    std::fs::remove_file(&blocker).unwrap();
    rec.request(request("e1", "a", 9, 1.0));
    rec.flush_blocking();
    assert_eq!(rec.stats().written, 1);
    let back = read_all(&blocker.join("records")).unwrap();
    assert_eq!(back.requests, vec![request("e1", "a", 9, 1.0)]);
}

#[test]
fn records_are_refused_while_waiting_to_retry() {
    let dir = TempDir::new();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let rec = Recorder::start(RecorderConfig {
        retry_after: Duration::from_secs(3600),
        ..config(&blocker.join("records"))
    });
    rec.request(request("e1", "a", 0, 1.0));
    rec.flush_blocking();
    std::fs::remove_file(&blocker).unwrap();
    // Writable again, but within the backoff: refused without touching the disk.
    rec.request(request("e1", "a", 1, 1.0));
    rec.flush_blocking();
    assert_eq!((rec.stats().written, rec.stats().failed), (0, 2));
    assert!(!blocker.exists());
}

#[test]
fn a_full_queue_drops_and_counts() {
    let dir = TempDir::new();
    let rec = Recorder::start(RecorderConfig {
        capacity: 4,
        ..config(dir.path())
    });
    // Park the writer inside a barrier so nothing drains the queue.
    let (started_tx, started) = mpsc::channel();
    let (release, parked) = mpsc::channel::<()>();
    let tx = rec.inner.as_ref().unwrap().tx.as_ref().unwrap();
    tx.send(Msg::Flush(Box::new(move || {
        started_tx.send(()).unwrap();
        let _ = parked.recv();
    })))
    .unwrap();
    started.recv().unwrap();
    for i in 0..10 {
        rec.request(request("e1", "a", i, 1.0));
    }
    assert_eq!(rec.stats().dropped, 6);
    release.send(()).unwrap();
    rec.flush_blocking();
    assert_eq!(rec.stats().written, 4);
    let ids: Vec<_> = read_all(dir.path())
        .unwrap()
        .requests
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(
        ids,
        ["chatcmpl-0", "chatcmpl-1", "chatcmpl-2", "chatcmpl-3"]
    );
}

#[tokio::test]
async fn flush_makes_records_readable_and_drop_flushes() {
    let dir = TempDir::new();
    let rec = Recorder::start(config(dir.path()));
    rec.request(request("e1", "a", 1, 1.0));
    rec.flush().await;
    assert_eq!(read_all(dir.path()).unwrap().requests.len(), 1);
    assert_eq!(rec.stats().written, 1);

    rec.request(request("e1", "a", 2, 1.0));
    let clone = rec.clone();
    drop(rec);
    clone.request(request("e1", "a", 3, 1.0));
    drop(clone);
    assert_eq!(read_all(dir.path()).unwrap().requests.len(), 3);
}

#[tokio::test]
async fn a_disabled_recorder_records_nothing() {
    let rec = Recorder::disabled();
    rec.request(request("e1", "a", 1, 1.0));
    rec.flush().await;
    rec.flush_blocking();
    assert!(!rec.is_enabled());
    assert_eq!(rec.dir(), None);
    assert_eq!(rec.stats(), RecorderStats::default());
}

#[test]
fn idle_records_reach_the_file_within_the_flush_interval() {
    let dir = TempDir::new();
    let rec = Recorder::start(RecorderConfig {
        flush_interval: Duration::from_millis(20),
        ..RecorderConfig::new(dir.path())
    });
    rec.request(request("e1", "a", 1, 1.0));
    // Bounded wait for the timer-driven flush; no explicit flush.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rec.stats().written == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(rec.stats().written, 1);
    assert_eq!(read_all(dir.path()).unwrap().requests.len(), 1);
}

#[test]
fn a_full_disk_loses_the_buffered_records_counted() {
    let dir = TempDir::new();
    let counters = Arc::new(Counters::default());
    let mut writer = Writer::new(
        RecorderConfig {
            retry_after: Duration::from_secs(3600),
            ..config(dir.path())
        },
        counters.clone(),
    );
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    writer.sinks[Kind::Request.index()] = Some(files::Sink::over("/dev/full".into(), full));
    writer.write(&Record::Request(request("e1", "a", 1, 1.0)));
    writer.write(&Record::Request(request("e1", "a", 2, 1.0)));
    writer.flush_all();
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!((count(&counters.written), count(&counters.failed)), (0, 2));
    assert!(
        writer.sinks[Kind::Request.index()].is_none(),
        "the failed file is let go"
    );
    // Within the backoff the next record is refused without a new file.
    writer.write(&Record::Request(request("e1", "a", 3, 1.0)));
    assert_eq!(count(&counters.failed), 3);
    assert!(files::list(dir.path(), Kind::Request).unwrap().is_empty());
}
