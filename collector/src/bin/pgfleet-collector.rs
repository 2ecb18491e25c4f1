//! `pgfleet-collector`: parse settings, start, wait for a signal, stop.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use pgfleet_agent::runtime;
use pgfleet_collector::config::{CollectorArgs, CollectorConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let args: CollectorArgs = runtime::parse_args();
    runtime::init_tracing("info");
    let config = match CollectorConfig::resolve(args) {
        Ok(c) => c,
        Err(e) => return runtime::usage_error("pgfleet-collector", &e),
    };
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
