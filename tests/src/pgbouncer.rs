//! A throwaway PgBouncer in front of a [`TempCluster`], for the pool tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgfleet_cli::sandbox::{TempCluster, free_port, running_as_root};

/// A PgBouncer on a free port of 127.0.0.1, with `trust` auth for `postgres`
/// (who is also its admin). Dropping it kills it and deletes its directory.
pub struct TempPgBouncer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl TempPgBouncer {
    /// Starts PgBouncer in front of `cluster` with `pool_size` server
    /// connections per pool, or says why it cannot.
    pub async fn start(cluster: &TempCluster, pool_size: u32) -> Result<Self, String> {
        Self::start_with(cluster, pool_size, &[]).await
    }

    /// As [`TempPgBouncer::start`], with extra `[pgbouncer]` settings
    /// (`client_tls_sslmode`, `client_tls_cert_file`, …).
    pub async fn start_with(
        cluster: &TempCluster,
        pool_size: u32,
        settings: &[(&str, &str)],
    ) -> Result<Self, String> {
        let binary = find_pgbouncer().ok_or(
            "PgBouncer is not installed (apt-get install pgbouncer; .ci/run does it)".to_owned(),
        )?;
        let dir = cluster.dir().join(format!(
            "pgbouncer-{}",
            free_port().map_err(|e| e.to_string())?
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let port = free_port().map_err(|e| e.to_string())?;
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={pg}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {dir}/userlist.txt\nadmin_users = postgres\npool_mode = session\ndefault_pool_size = {pool_size}\nmax_client_conn = 100\nlogfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
            pg = cluster.port(),
            dir = dir.display(),
        );
        let mut ini = ini;
        for (name, value) in settings {
            ini.push_str(&format!("{name} = {value}\n"));
        }
        std::fs::write(dir.join("pgbouncer.ini"), ini).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n")
            .map_err(|e| e.to_string())?;
        let mut command = if running_as_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status();
            if !chown.is_ok_and(|s| s.success()) {
                return Err(format!("cannot hand {} to postgres", dir.display()));
            }
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&binary);
            c
        } else {
            Command::new(&binary)
        };
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let bouncer = TempPgBouncer { child, dir, port };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(bouncer);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default();
        Err(format!(
            "PgBouncer did not listen within 5 s: {}",
            log.trim()
        ))
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its admin console, as the agent's `pgbouncer` setting takes it.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/pgbouncer", self.port)
    }

    /// Connection settings for `postgres` through PgBouncer to `dbname`.
    pub fn config(&self, dbname: &str, application_name: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(dbname)
            .application_name(application_name);
        c
    }
}

impl Drop for TempPgBouncer {
    fn drop(&mut self) {
        // runuser passes SIGKILL's effect on: the child is runuser, so kill the
        // pgbouncer it started through its pidfile as well.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_pgbouncer() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
}
