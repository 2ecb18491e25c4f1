//! `pgfleet-collector`: parse settings, start, wait for a signal, stop.
#![deny(unsafe_code)]

use std::process::ExitCode;

use pgfleet_collector::config::{CollectorArgs, CollectorConfig};
use pgfleet_common::runtime;

/// mimalloc rather than glibc's malloc: ingest allocates and frees many small
/// session strings, and for an older agent's batches (gRPC's zstd) a zstd
/// context per message inside tonic, which glibc served with heavy
/// consolidation and fragmented arenas. BENCHMARKS.md has the figures of both.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option that sets how long memory freed goes unused before it
/// is given back to the system, in ms (`mi_option_purge_delay` of its v3).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed is kept for reuse rather than given back to the system,
/// unless `MIMALLOC_PURGE_DELAY` says otherwise.
///
/// The collector's memory cycles every second (batches) and every minute
/// (every server's minute of load ends at once), so what mimalloc gave back
/// after its default second unused, the next minute faulted in and zeroed
/// again. Side by side at 1,250 servers (`bench/collector_ab.py`,
/// BENCHMARKS.md "Collector side by side"): 141 against 154 µs of CPU per
/// batch, for 250–268 against 188–194 KiB of RSS per server, which then
/// stays at its peak.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores an option's value, which mimalloc
        // reads when it next considers purging; any value is valid, and -1
        // means never.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let args: CollectorArgs = runtime::parse_args();
    runtime::init_tracing("info");
    let config = match CollectorConfig::resolve(args) {
        Ok(c) => c,
        Err(e) => return runtime::usage_error("pgfleet-collector", &e),
    };
    // The runtime that takes the agents' streams; the aggregator, the
    // history's writer and the readers have threads of their own.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.ingest_threads)
        .thread_name("pgfleet-ingest")
        .on_thread_stop(pgfleet_collector::threads::thread_ends)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "pgfleet-collector: cannot start the runtime of {} ingest threads: {e}; give fewer with --ingest-threads",
                config.ingest_threads
            );
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(config))
}

async fn run(config: CollectorConfig) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn freed_memory_is_kept_through_mimallocs_purge_delay() {
        // SAFETY: reading an option's value.
        let get = || unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        // The option named is the purge delay: mimalloc v3's default is a
        // second (unless the environment set it).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1000);
            keep_freed_memory();
            assert_eq!(get(), -1);
        }
    }
}
