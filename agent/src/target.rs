//! A monitored PostgreSQL server: how to reach it, and the settings that keep the
//! agent harmless to it.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, Runtime};
use deadpool_postgres::{RecyclingMethod, TimeoutType};
use tokio_postgres::config::Host;

use pgfleet_common::pgtls::{self, PgTls};
use pgfleet_common::settings::SettingsError;

/// The `application_name` of every agent connection; samples exclude these sessions.
pub const APPLICATION_NAME: &str = "pgfleet-agent";

/// The most connections the agent opens to one target. Its samples run one after
/// another on one connection; the issue allows two, and one is kinder.
pub const MAX_CONNECTIONS: usize = 1;

/// How long to wait for a connection to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the connection settings from a libpq URL or key/value string, filling what
/// it leaves out from the libpq variables (`PGHOST`, `PGPORT`, `PGUSER`,
/// `PGPASSWORD`, `PGDATABASE`, and `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`,
/// `PGSSLKEY`) that `env` returns, then from libpq's defaults; and its TLS.
pub fn connection_config(
    target: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(tokio_postgres::Config, PgTls), SettingsError> {
    let (mut config, tls) = pgtls::parse("target", target.unwrap_or(""), &env)?;
    if config.get_hosts().is_empty() {
        match env("PGHOST").filter(|h| !h.is_empty()) {
            Some(hosts) => {
                for host in hosts.split(',') {
                    config.host(host.trim());
                }
            }
            None => {
                config.host("localhost");
            }
        }
    }
    if config.get_ports().is_empty() {
        let port = match env("PGPORT").filter(|p| !p.is_empty()) {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| SettingsError::Invalid {
                    key: "target",
                    message: format!("PGPORT={p:?} is not a port number"),
                })?,
            None => 5432,
        };
        config.port(port);
    }
    if config.get_user().is_none() {
        let user = env("PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".to_owned());
        config.user(user);
    }
    if config.get_password().is_none()
        && let Some(password) = env("PGPASSWORD")
    {
        config.password(password);
    }
    if config.get_dbname().is_none()
        && let Some(db) = env("PGDATABASE")
    {
        config.dbname(db);
    }
    Ok((config, tls))
}

/// A PgBouncer admin console: how to reach it, and its TLS.
#[derive(Debug, Clone)]
pub struct Console {
    /// Its connection settings.
    pub config: tokio_postgres::Config,
    /// Its TLS (`sslmode` and the files, as for a target).
    pub tls: PgTls,
}

/// The connection settings of a PgBouncer admin console, from a URL or key/value
/// string such as `postgres://pgbouncer@127.0.0.1:6432/pgbouncer?sslmode=require`.
/// The console knows nothing of `options`, so none are sent.
pub fn pgbouncer_config(dsn: &str) -> Result<Console, SettingsError> {
    if dsn.trim().is_empty() {
        return Err(SettingsError::Invalid {
            key: "pgbouncer",
            message: "write it like postgres://pgbouncer@127.0.0.1:6432/pgbouncer".to_owned(),
        });
    }
    let (mut config, tls) = pgtls::parse("pgbouncer", dsn, |k| std::env::var(k).ok())?;
    if config.get_hosts().is_empty() {
        config.host("localhost");
    }
    if config.get_ports().is_empty() {
        config.port(6432);
    }
    if config.get_dbname().is_none() {
        config.dbname("pgbouncer");
    }
    if config.get_user().is_none() {
        config.user("pgbouncer");
    }
    config
        .application_name(APPLICATION_NAME)
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(Console { config, tls })
}

/// The default `server_id` of a target: its first host and port ("db1:5432").
pub fn default_server_id(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Whether the target is on this host: every address it connects to is a
/// loopback one (`hostaddr`, which wins over `host` as libpq has it), or
/// else every host it names is a Unix socket, `localhost` or a loopback
/// address (none named is the default Unix socket).
pub fn is_local(config: &tokio_postgres::Config) -> bool {
    let addrs = config.get_hostaddrs();
    if !addrs.is_empty() {
        return addrs.iter().all(|ip| ip.is_loopback());
    }
    config.get_hosts().iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    })
}

/// This host's CPUs when the target is on it ([`is_local`]); None for a
/// target elsewhere.
pub fn local_cpus(config: &tokio_postgres::Config) -> Option<u32> {
    if is_local(config) { host_cpus() } else { None }
}

/// The CPUs this host has online (all of them, not the agent's own share
/// of them under a cgroup quota or an affinity mask: the server beside it
/// is not held to the agent's limits).
pub fn host_cpus() -> Option<u32> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok();
    online.as_deref().and_then(count_cpu_list).or_else(|| {
        std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok())
    })
}

/// The CPUs a kernel CPU list names ("0-3,6,8-9" is seven); None when it
/// is not one.
pub fn count_cpu_list(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.trim().split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        n = n.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    (n > 0).then_some(n)
}

/// "user@host:port/db", for logs; never shows the password.
pub fn display(config: &tokio_postgres::Config) -> String {
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or(""),
        default_server_id(config),
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
    )
}

/// A small pool with the settings that keep the agent harmless: its own
/// `application_name`, a `statement_timeout` and `lock_timeout` on every
/// statement, read-only transactions, and at most [`MAX_CONNECTIONS`] connections.
pub fn pool(
    mut config: tokio_postgres::Config,
    tls: &PgTls,
    statement_timeout: Duration,
) -> Result<Pool, SettingsError> {
    let ms = statement_timeout.as_millis().max(1);
    let safety = format!(
        "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={} -c default_transaction_read_only=on",
        ms * 5
    );
    let options = match config.get_options() {
        Some(existing) if !existing.trim().is_empty() => format!("{existing} {safety}"),
        _ => safety,
    };
    config
        .application_name(APPLICATION_NAME)
        .options(&options)
        .connect_timeout(CONNECT_TIMEOUT);
    let manager = Manager::from_config(
        config,
        tls.connector(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(MAX_CONNECTIONS)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(1)))
        .wait_timeout(Some(statement_timeout))
        .recycle_timeout(Some(statement_timeout))
        .build()
        .map_err(|e| SettingsError::Invalid {
            key: "target",
            message: e.to_string(),
        })
}

/// Why the pool could not give a connection to `place`, in one sentence:
/// the server's or the network's words, a TLS handshake explained, never
/// the pool library's.
pub fn pool_error(e: &PoolError, place: &str, tls: &PgTls) -> String {
    match e {
        PoolError::Backend(e) => tls.explain(place, e),
        PoolError::Timeout(TimeoutType::Create) => format!(
            "cannot connect to {place} within {}",
            humantime::format_duration(CONNECT_TIMEOUT + Duration::from_secs(1))
        ),
        PoolError::Timeout(_) => {
            format!("the agent's connection to {place} stayed busy past its timeout")
        }
        other => format!(
            "cannot connect to {place}: {}",
            pgfleet_common::error::chain(other)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_url_wins_over_the_libpq_variables() {
        let (c, _) = connection_config(
            Some("postgres://alice:pw@db1:6432/orders"),
            env(&[("PGHOST", "other"), ("PGUSER", "bob"), ("PGPORT", "1")]),
        )
        .unwrap();
        assert_eq!(default_server_id(&c), "db1:6432");
        assert_eq!(c.get_user(), Some("alice"));
        assert_eq!(c.get_dbname(), Some("orders"));
    }

    #[test]
    fn the_libpq_variables_fill_what_the_target_leaves_out() {
        let (c, _) = connection_config(
            Some("dbname=orders"),
            env(&[
                ("PGHOST", "db2"),
                ("PGPORT", "5433"),
                ("PGUSER", "mon"),
                ("PGPASSWORD", "s3cret"),
                ("PGDATABASE", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(default_server_id(&c), "db2:5433");
        assert_eq!(c.get_user(), Some("mon"));
        assert_eq!(c.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(c.get_dbname(), Some("orders"));
        assert_eq!(display(&c), "mon@db2:5433/orders");
    }

    #[test]
    fn no_target_at_all_means_libpq_defaults() {
        let (c, _) = connection_config(None, env(&[("USER", "carol")])).unwrap();
        assert_eq!(default_server_id(&c), "localhost:5432");
        assert_eq!(c.get_user(), Some("carol"));
    }

    #[test]
    fn bad_targets_and_ports_are_named() {
        let err = connection_config(Some("postgres://db:notaport/x"), env(&[])).unwrap_err();
        assert!(err.to_string().starts_with("invalid `target`"), "{err}");
        let err = connection_config(None, env(&[("PGPORT", "abc")])).unwrap_err();
        assert!(err.to_string().contains("PGPORT"), "{err}");
    }

    #[test]
    fn a_target_on_this_host_has_its_cpus_and_one_elsewhere_has_none() {
        let here = host_cpus();
        assert!(here.is_some_and(|n| n > 0), "{here:?}");
        let cpus = |target: &str| local_cpus(&target.parse::<tokio_postgres::Config>().unwrap());
        for local in [
            "host=/run/postgresql",
            "postgresql://localhost:5433/x",
            "host=127.0.0.1",
            "host=::1",
            "host=db1.example hostaddr=127.0.0.1",
        ] {
            assert_eq!(cpus(local), here, "{local}");
        }
        for remote in [
            "host=db1.example",
            "host=10.0.0.5",
            "host=localhost,db2.example",
            "host=localhost hostaddr=10.0.0.5",
        ] {
            assert_eq!(cpus(remote), None, "{remote}");
        }
        for (list, n) in [
            ("0-3,6,8-9", Some(7)),
            ("0", Some(1)),
            ("0-63\n", Some(64)),
            ("", None),
            ("3-1", None),
            ("x", None),
        ] {
            assert_eq!(count_cpu_list(list), n, "{list:?}");
        }
    }
}
