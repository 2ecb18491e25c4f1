//! `pgfleet-collector`: parse settings, start, wait for a signal, stop.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use pgfleet_collector::config::{CollectorArgs, CollectorConfig};
use pgfleet_common::runtime;

/// mimalloc rather than glibc's malloc: ingest allocates and frees many small
/// session strings, and for an older agent's batches (gRPC's zstd) a zstd
/// context per message inside tonic, which glibc served with heavy
/// consolidation and fragmented arenas. BENCHMARKS.md has the figures of both.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args: CollectorArgs = runtime::parse_args();
    runtime::init_tracing("info");
    let config = match CollectorConfig::resolve(args) {
        Ok(c) => c,
        Err(e) => return runtime::usage_error("pgfleet-collector", &e),
    };
    pgfleet_collector::listen::raise_open_files_limit();
    let collector = match pgfleet_collector::server::start(config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgfleet-collector: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime::shutdown_signal().await;
    collector.stop().await;
    ExitCode::SUCCESS
}
