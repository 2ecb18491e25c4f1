//! docs/configuration.md is generated from the binaries' own flag
//! definitions, and this test fails when the two differ. To bring the file
//! up to date after changing a flag:
//!
//!     PGFLEET_WRITE_DOCS=1 cargo test -p pgfleet-tests --test docs

use std::fmt::Write;

use clap::CommandFactory;
use pgfleet_agent::AgentArgs;
use pgfleet_cli::Cli;
use pgfleet_collector::config::CollectorArgs;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");

/// A cell of a Markdown table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// One table: every argument of `command`, with its variable and file key.
fn table(out: &mut String, command: &clap::Command, file_keys: bool) {
    let args: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| !["help", "version"].contains(&a.get_id().as_str()))
        .collect();
    if args.is_empty() {
        return;
    }
    if file_keys {
        out.push_str("| flag | variable | file key | what it does |\n|---|---|---|---|\n");
    } else {
        out.push_str("| argument | variable | what it does |\n|---|---|---|\n");
    }
    for a in args {
        let value = a
            .get_value_names()
            .map(|v| format!(" <{}>", v.join(" ")))
            .unwrap_or_default();
        let name = match a.get_long() {
            Some(long) => {
                let short = a
                    .get_short()
                    .map(|s| format!("`-{s}`, "))
                    .unwrap_or_default();
                let takes = if a.get_action().takes_values() {
                    value
                } else {
                    String::new()
                };
                format!("{short}`--{long}{takes}`")
            }
            None => format!("`{}`", value.trim().to_uppercase()),
        };
        let env = a
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        let mut help = cell(&help);
        let possible: Vec<String> = a
            .get_possible_values()
            .iter()
            .filter(|p| !p.is_hide_set())
            .map(|p| format!("`{}`", p.get_name()))
            .collect();
        if !possible.is_empty() && a.get_action().takes_values() {
            let _ = write!(help, " (one of {})", possible.join(", "));
        }
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() {
            let _ = write!(help, " [default: {}]", defaults.join(", "));
        }
        if file_keys {
            let key = match a.get_long() {
                Some("config") | Some("once") | None => String::new(),
                Some("label") => "`[labels]`".to_owned(),
                Some(long) => format!("`{}`", long.replace('-', "_")),
            };
            let _ = writeln!(out, "| {name} | {env} | {key} | {help} |");
        } else {
            let _ = writeln!(out, "| {name} | {env} | {help} |");
        }
    }
    out.push('\n');
}

fn render() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the binaries' flag definitions by `tests/tests/docs.rs`, which fails\n\
         when this file and the code differ; do not edit it by hand.\n\n\
         Every setting comes from a flag, its `PGFLEET_*` variable, or a key of the TOML file\n\
         named by `--config`, in that order of precedence, then its default. The examples in\n\
         `deploy/` (`agent.toml`, `agent-multi.toml`, `collector.toml`, `pgfleet.toml`) show\n\
         every key with a comment.\n\n",
    );
    let agent = AgentArgs::command();
    let _ = writeln!(
        out,
        "## pgfleet-agent\n\n{}\n",
        agent.get_about().map(|a| a.to_string()).unwrap_or_default()
    );
    table(&mut out, &agent, true);
    out.push_str(
        "In the file only, `[[targets]]` gives several servers, each with its own `target`,\n\
         `server_id`, `databases`, `pgbouncer`, `server_cpus` and `[targets.labels]` (which\n\
         win over the agent's `[labels]`); those five keys may then not appear at the top or\n\
         as flags. At most 64 targets. See `deploy/agent-multi.toml`.\n\n",
    );
    let collector = CollectorArgs::command();
    let _ = writeln!(
        out,
        "## pgfleet-collector\n\n{}\n",
        collector
            .get_about()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    table(&mut out, &collector, true);
    let cli = Cli::command();
    let _ = writeln!(
        out,
        "## pgfleet\n\n{}\n",
        cli.get_about().map(|a| a.to_string()).unwrap_or_default()
    );
    out.push_str("These flags apply to every command:\n\n");
    table(&mut out, &cli, true);
    for sub in cli.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let _ = writeln!(
            out,
            "### pgfleet {}\n\n{}\n",
            sub.get_name(),
            cell(&sub.get_about().map(|a| a.to_string()).unwrap_or_default())
        );
        table(&mut out, sub, false);
    }
    out
}

#[test]
fn the_configuration_reference_matches_the_code() {
    let fresh = render();
    if std::env::var_os("PGFLEET_WRITE_DOCS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(PATH).parent().unwrap()).unwrap();
        std::fs::write(PATH, &fresh).unwrap();
    }
    let kept = std::fs::read_to_string(PATH).unwrap_or_default();
    if kept != fresh {
        let line = kept
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .map_or(kept.lines().count().min(fresh.lines().count()), |i| i)
            + 1;
        panic!(
            "docs/configuration.md differs from the flags in the code (from line {line}); \
             run `PGFLEET_WRITE_DOCS=1 cargo test -p pgfleet-tests --test docs` and commit it"
        );
    }
    // Each binary's every flag is in it.
    for command in [
        AgentArgs::command(),
        CollectorArgs::command(),
        Cli::command(),
    ] {
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(kept.contains(&format!("`--{long}")), "--{long}");
            }
        }
    }
}
