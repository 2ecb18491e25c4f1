//! The stream's size target, held by the same simulation that
//! `cargo bench --bench wire` reports: at most 16 bytes per session per sample
//! at steady state, after zstd, at 1,000 sessions with about 10% changing each
//! second. A byte count, not a timing: the same on every machine.

#[path = "../benches/support/wire_sim.rs"]
mod wire_sim;

#[test]
fn the_stream_stays_within_16_bytes_per_session_per_sample() {
    // Three keyframe cycles past the first.
    let r = wire_sim::run(240, false);
    let steady = r.steady.zstd_per();
    assert!(
        steady <= 16.0,
        "{steady:.2} B per session per sample at steady state"
    );
    // Deltas are what make it small: a keyframe costs many times a delta.
    assert!(r.keyframes.zstd_per() > 5.0 * r.deltas.zstd_per());
}
