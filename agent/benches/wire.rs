//! `cargo bench -p pgfleet-agent --bench wire`: the stream's bytes per session
//! per sample, after compression, at steady state.
//!
//! A server with 1,000 client sessions is simulated for 600 samples at 1 Hz;
//! each second about 10% of the sessions change (a query starts or ends, a
//! wait begins, a few clients reconnect). Every sample goes through the
//! agent's real encoder and batch encoding, and is compressed with zstd at
//! the agent's level, batch by batch, as the stream sends it. Beside it, the
//! same data sent as full protobuf snapshots (a keyframe every second) and as
//! JSON. Then the steady stream's batches compressed at three zstd levels
//! side by side (the agent's, and the levels either side of it), one context
//! each, as the agent keeps one: the time per batch, the median of rounds
//! that alternate which level goes first, and the bytes. `bench/stream_bytes.py` checks the figure against a real agent,
//! collector and PostgreSQL, counting the bytes on the socket.
//!
//! Prints a Markdown table; `bench/stream_bytes.py` writes it to BENCHMARKS.md.

#[path = "support/wire_sim.rs"]
mod wire_sim;
use wire_sim::*;

fn main() {
    let Results {
        steady,
        steady_messages,
        deltas,
        keyframes,
        full,
        json,
    } = run(SAMPLES, true);
    println!(
        "{SESSIONS} sessions, about {CHANGED_PER_SAMPLE} changed per sample ({RECONNECTS_PER_SAMPLE} of them new backends), {SAMPLES} samples at 1 Hz; \
         bytes per session per sample, with gRPC and HTTP/2 framing, zstd level {ZSTD_LEVEL} per batch as the agent sends it:\n"
    );
    println!("| what is sent | uncompressed | zstd |");
    println!("|---|---|---|");
    let row = |name: &str, t: &Tally| {
        println!("| {name} | {:.2} | {:.2} |", t.raw_per(), t.zstd_per());
    };
    row(
        "**pgfleet stream at steady state** (deltas, a keyframe every 60 samples)",
        &steady,
    );
    row("- its deltas alone", &deltas);
    row("- its keyframes alone", &keyframes);
    row("full protobuf snapshot every sample (no deltas)", &full);
    row("JSON of every session every sample", &json);
    println!(
        "\nsteady state: {:.2} B per session per sample after zstd (target: at most 16)",
        steady.zstd_per()
    );
    levels(&steady_messages);
}

/// The zstd levels compared, the agent's among them.
const LEVELS: [i32; 3] = [3, 1, -1];
/// Rounds of each level; each round compresses every message once.
const ROUNDS: usize = 21;

/// Prints the time and bytes of `messages` compressed at each of [`LEVELS`].
fn levels(messages: &[Vec<u8>]) {
    use std::time::Instant;
    let mut contexts: Vec<_> = LEVELS
        .iter()
        .map(|&l| zstd::bulk::Compressor::new(l).expect("a zstd context"))
        .collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); LEVELS.len()];
    let mut bytes = vec![0usize; LEVELS.len()];
    for round in 0..ROUNDS {
        for k in 0..LEVELS.len() {
            // Each round starts with the next level.
            let i = (round + k) % LEVELS.len();
            let start = Instant::now();
            let mut total = 0;
            for m in messages {
                total += contexts[i].compress(m).expect("compressed").len();
            }
            times[i].push(start.elapsed().as_secs_f64() * 1e6 / messages.len() as f64);
            bytes[i] = total;
        }
    }
    println!("\nzstd levels:\n");
    println!(
        "The steady stream's {} batches compressed at {} zstd levels, one context each, as the agent keeps one; \
         µs per batch is the median of {ROUNDS} rounds that alternate which level goes first \
         (time on a shared machine, so the ratios are the figures to read):\n",
        messages.len(),
        LEVELS.len()
    );
    let first = LEVELS[0];
    println!(
        "| zstd level | µs per batch | bytes per session per sample | × level {first}'s time | × level {first}'s bytes |"
    );
    println!("|---|---|---|---|---|");
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    for (i, level) in LEVELS.iter().enumerate() {
        let per = Tally::per_session(bytes[i] + FRAMING * messages.len(), messages.len());
        let mark = if *level == ZSTD_LEVEL {
            " (the agent's)"
        } else {
            ""
        };
        println!(
            "| {level}{mark} | {:.1} | {per:.2} | {:.2} | {:.3} |",
            medians[i],
            medians[i] / medians[0],
            bytes[i] as f64 / bytes[0] as f64
        );
    }
}
