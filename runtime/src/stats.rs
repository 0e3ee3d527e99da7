//! Gauges and counters the engine publishes for metrics and health, and the guard that keeps
//! the waiting count: a request counts as waiting from the moment `submit` reserves its slot
//! until the slot is dropped — when its sequence starts, or however it leaves the engine
//! before that — so no path can forget to give it back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Written by the engine thread (and the waiting count by [`QueueSlot`]s); read by anyone.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub resident_adapters: AtomicUsize,
    pub resident_adapter_bytes: AtomicUsize,
    pub adapter_loads: AtomicU64,
    pub adapter_evictions: AtomicU64,
    pub steps: AtomicU64,
    /// Time to compute one constrained row's allowed tokens, per token.
    pub mask_time: MaskTimes,
}

/// Upper bounds (µs) of the mask-time buckets; a last bucket takes the rest.
pub const MASK_BUCKETS_US: [u64; 16] = [
    5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
    500_000,
];

/// A histogram of mask times: counts per bucket of [`MASK_BUCKETS_US`] (plus one over the
/// last), their sum and the largest.
#[derive(Debug, Default)]
pub struct MaskTimes {
    buckets: [AtomicU64; MASK_BUCKETS_US.len() + 1],
    pub count: AtomicU64,
    pub sum_us: AtomicU64,
    pub max_us: AtomicU64,
}

impl MaskTimes {
    pub fn record(&self, took: std::time::Duration) {
        let us = took.as_micros() as u64;
        let i = MASK_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(MASK_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Counts per bucket, not cumulative; the last is beyond every bound.
    pub fn buckets(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The bucket bound under which fraction `q` of the times fall (the maximum for the last).
    pub fn quantile_us(&self, q: f64) -> u64 {
        let counts = self.buckets();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        for (i, c) in counts.iter().enumerate() {
            acc += c;
            if acc >= want {
                return MASK_BUCKETS_US
                    .get(i)
                    .copied()
                    .unwrap_or_else(|| self.max_us.load(Ordering::Relaxed));
            }
        }
        self.max_us.load(Ordering::Relaxed)
    }
}

/// One reserved place in the waiting queue; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct QueueSlot {
    stats: Arc<EngineStats>,
}

impl QueueSlot {
    /// Reserves a place unless `max` are already taken.
    pub(crate) fn reserve(stats: &Arc<EngineStats>, max: usize) -> Option<QueueSlot> {
        stats
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| QueueSlot {
                stats: stats.clone(),
            })
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back_on_drop() {
        let stats = Arc::new(EngineStats::default());
        let a = QueueSlot::reserve(&stats, 2).unwrap();
        let b = QueueSlot::reserve(&stats, 2).unwrap();
        assert!(QueueSlot::reserve(&stats, 2).is_none());
        assert_eq!(stats.waiting.load(Ordering::SeqCst), 2);
        drop(a);
        let c = QueueSlot::reserve(&stats, 2).unwrap();
        drop((b, c));
        assert_eq!(stats.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn mask_times_fall_in_their_buckets() {
        let m = MaskTimes::default();
        for us in [3, 7, 7, 40, 900_000] {
            m.record(std::time::Duration::from_micros(us));
        }
        let b = m.buckets();
        assert_eq!((b[0], b[1], b[3], b[MASK_BUCKETS_US.len()]), (1, 2, 1, 1));
        assert_eq!(m.count.load(Ordering::Relaxed), 5);
        assert_eq!(m.max_us.load(Ordering::Relaxed), 900_000);
        assert_eq!(m.quantile_us(0.5), 10);
        assert_eq!(m.quantile_us(1.0), 900_000);
    }
}
