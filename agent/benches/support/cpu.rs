//! This thread's CPU time, for the agent's benchmark and its wake_floor and
//! statements_cost examples, and the store's frame_rows bench
//! (tests/benches/frame_rows.rs).

use std::time::Duration;

/// CPU time of this thread (user + system), from /proc/thread-self/schedstat.
/// The kernel adds a running thread's time there only when it is switched out
/// or ticks, so yield first: the figure is then up to this instant.
pub fn cpu() -> Duration {
    std::thread::yield_now();
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}
