//! Every file under deploy/ is parsed, validated or run: the systemd units by
//! systemd-analyze, the Kubernetes manifests by tests/scripts/check_kubernetes.py,
//! the Dockerfiles against the workspace, and every command line they hold by
//! the binaries' own flag parsers. (The example configs are parsed by the
//! crates' unit tests, the Python examples run in their own tests, and the
//! Grafana dashboard's queries run against a real Prometheus in prometheus.rs.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use pgfleet_agent::AgentArgs;
use pgfleet_cli::Cli;
use pgfleet_collector::config::CollectorArgs;
use pgfleet_tests::workspace_binary;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// Parses a command line with the flags of the binary it names.
fn parses(argv: &[String]) -> Result<(), String> {
    let name = argv[0].rsplit('/').next().unwrap_or_default();
    let result = match name {
        "pgfleet-agent" => AgentArgs::try_parse_from(argv).map(|_| ()),
        "pgfleet-collector" => CollectorArgs::try_parse_from(argv).map(|_| ()),
        "pgfleet" => Cli::try_parse_from(argv).map(|_| ()),
        other => return Err(format!("{other} is not a pgfleet binary")),
    };
    result.map_err(|e| format!("{argv:?}: {e}"))
}

/// The words of a shell-free command line (systemd's ExecStart).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_systemd_units_pass_systemd_analyze_and_their_commands_parse() {
    let dir = root().join("deploy/systemd");
    let scratch = tempfile_dir("units");
    let mut units = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{}: no ExecStart", path.display()));
        let argv = words(exec);
        parses(&argv).unwrap();
        for hardening in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "MemoryMax=",
        ] {
            assert!(text.contains(hardening), "{}: {hardening}", path.display());
        }
        // systemd-analyze checks the unit, the binary included: point it at
        // the binary this build made.
        let binary = argv[0].rsplit('/').next().unwrap();
        let local = text.replace(&argv[0], &workspace_binary(binary).display().to_string());
        let copy = scratch.join(path.file_name().unwrap());
        std::fs::write(&copy, local).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze runs (package systemd)");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{}: {said}",
            path.display()
        );
        units += 1;
    }
    assert_eq!(units, 2);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn systemd_analyze_finds_a_broken_unit() {
    // The check above can fail: a key systemd does not know is reported.
    let scratch = tempfile_dir("broken-unit");
    let copy = scratch.join("broken.service");
    std::fs::write(
        &copy,
        format!(
            "[Service]\nExecStart={}\nProtectSystem=strictest\n",
            workspace_binary("pgfleet").display()
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("strictest"));
    let _ = std::fs::remove_dir_all(scratch);
}

fn check_kubernetes(folder: &Path) -> std::process::Output {
    Command::new("python3")
        .arg(root().join("tests/scripts/check_kubernetes.py"))
        .arg(folder)
        .arg(root().join("deploy/docker"))
        .output()
        .expect("python3 runs")
}

#[test]
fn the_kubernetes_manifests_are_consistent_and_their_commands_parse() {
    let out = check_kubernetes(&root().join("deploy/kubernetes"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commands: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut binaries = BTreeSet::new();
    for c in &commands {
        let argv: Vec<String> = c["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        parses(&argv).unwrap_or_else(|e| panic!("{}: {e}", c["where"]));
        binaries.insert(argv[0].clone());
    }
    assert_eq!(
        binaries,
        BTreeSet::from(["pgfleet-agent".to_owned(), "pgfleet-collector".to_owned()])
    );

    // And the check can fail: a mount of a volume the pod lacks, a Secret
    // key that does not exist.
    let broken = tempfile_dir("kubernetes");
    for entry in std::fs::read_dir(root().join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "- name: tls\n              mountPath",
                "- name: tlz\n              mountPath",
            )
            .replace("key: pgpassword", "key: pg-password");
        std::fs::write(broken.join(path.file_name().unwrap()), text).unwrap();
    }
    let out = check_kubernetes(&broken);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the broken copy passed");
    assert!(
        said.contains("tlz") && said.contains("pg-password"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(broken);
}

#[test]
fn the_dockerfiles_build_the_workspace_binaries_and_run_them_unprivileged() {
    let dir = root().join("deploy/docker");
    let defaults = [
        ("agent.Dockerfile", vec!["7602"]),
        ("collector.Dockerfile", vec!["7600", "7601"]),
        ("pgfleet.Dockerfile", vec![]),
    ];
    for (file, ports) in defaults {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(from.len(), 2, "{file}: a build stage and a run stage");
        // The binary runs on the Debian release it was linked on.
        assert!(
            from.iter().all(|f| f.contains("bookworm")),
            "{file}: {from:?}"
        );
        let build = text
            .lines()
            .find(|l| l.contains("cargo build"))
            .expect("a cargo build");
        assert!(
            build.contains("--release") && build.contains("--locked"),
            "{build}"
        );
        let copied: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("COPY --from=build /src/target/release/"))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert!(!copied.is_empty(), "{file}");
        for binary in &copied {
            assert!(
                build.contains(&format!("--bin {binary}")),
                "{file}: {binary}"
            );
            // Built from the package that has it (cargo refuses otherwise).
            let package = package_of(binary);
            assert!(
                build.contains(&format!("-p {package}")),
                "{file}: {binary} is built by {package}: {build}"
            );
            // A binary of the workspace, by that name.
            assert!(workspace_binary(binary).is_file());
        }
        let user = text
            .lines()
            .find_map(|l| l.strip_prefix("USER "))
            .expect("a USER");
        assert!(
            !["0", "root"].contains(&user.trim()),
            "{file}: runs as {user}"
        );
        let exposed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("EXPOSE "))
            .flat_map(str::split_whitespace)
            .collect();
        assert_eq!(exposed, ports, "{file}");
        let entry = text
            .lines()
            .find_map(|l| l.strip_prefix("ENTRYPOINT "))
            .expect("an ENTRYPOINT");
        let mut argv: Vec<String> = serde_json::from_str(entry).unwrap();
        if let Some(cmd) = text.lines().find_map(|l| l.strip_prefix("CMD ")) {
            argv.extend(serde_json::from_str::<Vec<String>>(cmd).unwrap());
        }
        parses(&argv).unwrap();
        assert!(copied.contains(&argv[0].rsplit('/').next().unwrap()));
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// Every flag of `command`, but those that make no sense in a file, must have
/// its key (or its key commented out) in `file`.
fn every_flag_has_a_key(command: clap::Command, file: &str, skip: &[&str]) {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let keys: BTreeSet<String> = text
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, _)| k.trim().to_owned())
                .or_else(|| {
                    l.strip_prefix('[')
                        .map(|t| t.trim_matches(['[', ']']).to_owned())
                })
        })
        .collect();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if skip.contains(&long) || ["help", "version", "config"].contains(&long) {
            continue;
        }
        let key = long.replace('-', "_");
        assert!(
            keys.contains(&key) || keys.contains(&format!("{key}s")),
            "{file} does not document {key} (--{long})"
        );
    }
}

#[test]
fn every_binary_has_examples_in_its_help() {
    for binary in ["pgfleet-agent", "pgfleet-collector", "pgfleet"] {
        let out = Command::new(workspace_binary(binary))
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Examples:"),
            "{binary}: {text}"
        );
    }
}

#[test]
fn the_example_configs_document_every_key() {
    every_flag_has_a_key(AgentArgs::command(), "deploy/agent.toml", &["once"]);
    every_flag_has_a_key(CollectorArgs::command(), "deploy/collector.toml", &[]);
    every_flag_has_a_key(Cli::command(), "deploy/pgfleet.toml", &[]);
}

fn tempfile_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pgfleet-deploy-{what}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The workspace package whose Cargo.toml declares the binary `name`.
fn package_of(name: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = workspace
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("the workspace lists its members");
    for member in members.split('"').skip(1).step_by(2) {
        let manifest = std::fs::read_to_string(root.join(member).join("Cargo.toml")).unwrap();
        let package = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .map(|n| n.trim_end_matches('"').to_owned())
            .unwrap();
        let bins = manifest.split("[[bin]]").skip(1);
        if bins
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = \"")))
            .any(|n| n.trim_end_matches('"') == name)
        {
            return package;
        }
    }
    panic!("no workspace package declares the binary {name}");
}
