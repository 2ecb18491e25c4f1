//! What every pgfleet binary does at its edge: parse flags with one-line errors,
//! set up logging, and wait for a stop signal.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Exit code for a usage or configuration error (as sysexits' EX_USAGE uses 64,
/// and clap uses 2).
pub const EXIT_USAGE: u8 = 2;

/// Parses the command line; `--help` and `--version` print and exit 0, and any
/// other problem prints one line that names it, then exits with [`EXIT_USAGE`].
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                std::process::exit(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        EXIT_USAGE.into()
                    } else {
                        0
                    },
                );
            }
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            // The choices, where clap lists them, say what to give instead.
            let choices = text
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("[possible values:"))
                .map(|l| format!(" {l}"))
                .unwrap_or_default();
            eprintln!("{}: {first}{choices} (see --help)", T::command().get_name());
            std::process::exit(EXIT_USAGE.into());
        }
    }
}

/// Prints a configuration error as one line and returns the usage exit code.
pub fn usage_error(bin: &str, err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{bin}: {err}");
    ExitCode::from(EXIT_USAGE)
}

/// Logs to stderr at the level in `PGFLEET_LOG` (in the `RUST_LOG` syntax), or at
/// `default` ("info" for daemons; "warn" for commands whose output is the point).
pub fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_env("PGFLEET_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Resolves on the first SIGINT or SIGTERM. A second one exits at once.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("Stopping; a second signal exits at once.");
    tokio::spawn(async {
        wait_for_signal().await;
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
