//! `pgfleet`: the command line for the fleet.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use pgfleet_cli::{self as cli, Cli};
use pgfleet_common::runtime;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Cli = runtime::parse_args();
    cli::run(args).await
}
