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
}
