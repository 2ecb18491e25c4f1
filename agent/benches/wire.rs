//! `cargo bench -p pgfleet-agent --bench wire`: the stream's bytes per session
//! per sample, after compression, at steady state.
//!
//! A server with 1,000 client sessions is simulated for 600 samples at 1 Hz;
//! each second about 10% of the sessions change (a query starts or ends, a
//! wait begins, a few clients reconnect). Every sample goes through the
//! agent's real encoder and batch encoding, and is compressed with zstd at
//! tonic's level, message by message, as the stream sends it. Beside it, the
//! same data sent as full protobuf snapshots (a keyframe every second) and as
//! JSON. `bench/stream_bytes.py` checks the figure against a real agent,
//! collector and PostgreSQL, counting the bytes on the socket.
//!
//! Prints a Markdown table; `bench/stream_bytes.py` writes it to BENCHMARKS.md.

#[path = "support/wire_sim.rs"]
mod wire_sim;
use wire_sim::*;

fn main() {
    let Results {
        steady,
        deltas,
        keyframes,
        full,
        json,
    } = run(SAMPLES, true);
    println!(
        "{SESSIONS} sessions, about {CHANGED_PER_SAMPLE} changed per sample ({RECONNECTS_PER_SAMPLE} of them new backends), {SAMPLES} samples at 1 Hz; \
         bytes per session per sample, with gRPC and HTTP/2 framing, zstd level {ZSTD_LEVEL} per message as tonic sends it:\n"
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
}
