//! A PostgreSQL cluster in a temporary directory, on a free port, always torn down.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::process::Command;
use tokio_postgres::NoTls;

use super::{SandboxError, free_port, running_as_root};

/// Members of this role must log in with a password over TCP; everyone else is
/// trusted. Tests use it to check what a wrong password looks like.
pub const PASSWORD_GROUP: &str = "password_users";

/// Settings that make a throwaway cluster quick and small. Durability is not
/// wanted here: the cluster is deleted at the end.
const FAST_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "32MB"),
    ("max_wal_size", "256MB"),
    ("log_min_messages", "warning"),
];

/// A running PostgreSQL cluster in a temporary directory. Dropping it stops the
/// server and deletes the directory; [`TempCluster::destroy`] does the same and
/// waits for it.
pub struct TempCluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    settings: Vec<(String, String)>,
    as_postgres: bool,
    destroyed: bool,
}

impl TempCluster {
    /// initdb into a new temporary directory and start the server on a free port.
    pub async fn start() -> Result<TempCluster, SandboxError> {
        Self::start_with(&[]).await
    }

    /// As [`TempCluster::start`], with extra server settings (`max_connections`, …).
    pub async fn start_with(settings: &[(&str, &str)]) -> Result<TempCluster, SandboxError> {
        let bindir = find_bindir().await.ok_or(SandboxError::NoPostgres)?;
        let dir = make_temp_dir()?;
        let mut cluster = TempCluster {
            dir,
            bindir,
            port: 0,
            settings: FAST_SETTINGS
                .iter()
                .chain(settings)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            as_postgres: running_as_root(),
            destroyed: false,
        };
        cluster.init().await?;
        // Another process may take the free port before the server binds it.
        let mut last = None;
        for _ in 0..3 {
            cluster.port = free_port()?;
            match cluster.start_server().await {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(SandboxError::NoPostgres))
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory that holds everything of this cluster.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A URL for the superuser `postgres` on database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Connection settings for the superuser, as a given `application_name`.
    pub fn config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .application_name(application_name);
        c
    }

    /// Connects as the superuser; the connection is driven by a spawned task.
    pub async fn connect(
        &self,
        application_name: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config(application_name).connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub async fn stop_server(&self) -> Result<(), SandboxError> {
        let data = self.data_dir();
        self.run(
            "stopping PostgreSQL",
            "pg_ctl",
            &["stop", "-D", &data, "-m", "fast", "-w", "-t", "30"],
        )
        .await
    }

    /// Starts the server again on the same port.
    pub async fn start_server(&self) -> Result<(), SandboxError> {
        let data = self.data_dir();
        let log = self.dir.join("postgres.log").display().to_string();
        let mut options = format!("-p {} -k {}", self.port, self.dir.display());
        for (k, v) in &self.settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        let started = self
            .run(
                "starting PostgreSQL",
                "pg_ctl",
                &[
                    "start", "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "30",
                ],
            )
            .await;
        started.map_err(|e| match e {
            SandboxError::Command { what, detail } => SandboxError::Command {
                what,
                detail: format!(
                    "{detail}; server log: {}",
                    tail(&std::fs::read_to_string(&log).unwrap_or_default())
                ),
            },
            other => other,
        })
    }

    /// Stops the server and deletes the directory.
    pub async fn destroy(mut self) {
        self.destroyed = true;
        let data = self.data_dir();
        let _ = self
            .run(
                "stopping PostgreSQL",
                "pg_ctl",
                &["stop", "-D", &data, "-m", "immediate", "-w"],
            )
            .await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    async fn init(&self) -> Result<(), SandboxError> {
        if self.as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres", &self.dir.display().to_string()])
                .status()
                .await;
            if !status.is_ok_and(|s| s.success()) {
                return Err(SandboxError::Command {
                    what: "handing the temporary directory to the postgres user".into(),
                    detail: "chown failed; running as root needs a `postgres` user (installed with PostgreSQL)".into(),
                });
            }
        }
        let data = self.data_dir();
        self.run(
            "initdb",
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        )
        .await?;
        let hba = format!(
            "local all all trust\nhost all +{PASSWORD_GROUP} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n"
        );
        std::fs::write(self.dir.join("data/pg_hba.conf"), hba).map_err(|source| SandboxError::Io {
            what: "writing pg_hba.conf".into(),
            source,
        })
    }

    /// Where the server's programs are (pgbench, psql, …).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// One of the server's programs, as `postgres` when we are root, in the
    /// cluster's directory, with no input.
    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bindir.join(program);
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        command.current_dir(&self.dir).stdin(Stdio::null());
        command
    }

    /// Runs one of the server's programs and waits for it.
    async fn run(&self, what: &str, program: &str, args: &[&str]) -> Result<(), SandboxError> {
        let output = Command::from(self.command(program))
            .args(args)
            .output()
            .await
            .map_err(|source| SandboxError::Io {
                what: format!("cannot run {}", self.bindir.join(program).display()),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        Err(SandboxError::Command {
            what: what.to_owned(),
            detail: format!("{} ({})", tail(&text), output.status),
        })
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        let data = self.data_dir();
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-D", &data, "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last few lines of a command's output or a log, on one line.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

fn make_temp_dir() -> Result<PathBuf, SandboxError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "pgfleet-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).map_err(|source| SandboxError::Io {
        what: format!("cannot create {}", dir.display()),
        source,
    })?;
    Ok(dir)
}

/// Where initdb and pg_ctl are: `$PGFLEET_PG_BINDIR`, `pg_config --bindir`, or the
/// newest /usr/lib/postgresql/*/bin.
async fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PGFLEET_PG_BINDIR").map(PathBuf::from) {
        return has_initdb(&dir).then_some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output().await {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_initdb(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
