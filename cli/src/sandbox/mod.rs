//! Throwaway PostgreSQL clusters and activity to show in them, for `pgfleet demo`
//! and the end-to-end tests, which share this code rather than copy it.

mod cluster;
mod fleet;
mod workload;

pub use cluster::{PASSWORD_GROUP, TempCluster};
pub use fleet::Fleet;
pub use workload::DemoWorkload;

/// Why a sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server found (looked at $PGFLEET_PG_BINDIR, `pg_config --bindir` and /usr/lib/postgresql/*/bin); install it (apt-get install postgresql) or set PGFLEET_PG_BINDIR"
    )]
    NoPostgres,
    /// A command failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What was being done.
        what: String,
        /// Its exit status and the end of its output or log.
        detail: String,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The collector or agent of a sandbox fleet could not start.
    #[error("cannot start the fleet: {0}")]
    Fleet(String),
    /// The demo's sessions could not be set up.
    #[error("cannot set up the demo's sessions: {0}")]
    Workload(String),
}

/// A TCP port on 127.0.0.1 that nothing listens on at the moment of asking.
pub fn free_port() -> Result<u16, SandboxError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| SandboxError::Io {
            what: "cannot find a free port".to_owned(),
            source,
        })
}

/// True when this process runs with effective uid 0, where PostgreSQL refuses to
/// run and must be started as the `postgres` user.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
