//! `pgfleet-agent`: parse settings, start, wait for a signal, drain.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use pgfleet_agent::{AgentArgs, AgentConfig, runtime};

fn main() -> ExitCode {
    let args: AgentArgs = runtime::parse_args();
    runtime::init_tracing("info");
    let config = match AgentConfig::resolve(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => return runtime::usage_error("pgfleet-agent", &e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgfleet-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let agent = match pgfleet_agent::start(config) {
            Ok(a) => a,
            Err(e) => return runtime::usage_error("pgfleet-agent", &e),
        };
        runtime::shutdown_signal().await;
        agent.stop().await;
        ExitCode::SUCCESS
    })
}
