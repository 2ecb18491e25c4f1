//! `pgfleet`: the command line for the fleet.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use pgfleet_agent::runtime;
use pgfleet_collector::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Cli = runtime::parse_args();
    cli::run(args).await
}
