//! `pgfleet-agent`: parse settings, start, wait for a signal, drain.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use pgfleet_agent::{AgentArgs, AgentConfig};
use pgfleet_common::runtime;

fn main() -> ExitCode {
    let args: AgentArgs = runtime::parse_args();
    let once = args.once;
    runtime::init_tracing(if once { "warn" } else { "info" });
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
    if once {
        return rt.block_on(async {
            match pgfleet_agent::once::sample_all(&config).await {
                Ok((json, all_up)) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json).unwrap_or_default()
                    );
                    if all_up {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => runtime::usage_error("pgfleet-agent", &e),
            }
        });
    }
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
