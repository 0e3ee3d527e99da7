//! Shared by the bench binaries.

/// As `main` does: candle re-derives the thread count on every matmul unless this is set.
pub fn pin_thread_count() {
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
