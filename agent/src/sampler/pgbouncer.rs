//! PgBouncer's admin console: SHOW POOLS and SHOW STATS, with the names and units
//! of pgbouncer_exporter.
//!
//! The console speaks only the simple query protocol and knows nothing of
//! `options`, so the agent keeps one plain connection to it, apart from its pool
//! to PostgreSQL, and opens it again (with backoff) when it breaks.

use std::time::Duration;

use pgfleet_proto::v1;
use tokio::time::Instant;
use tokio_postgres::SimpleQueryMessage;
use tracing::{info, warn};

use pgfleet_common::backoff::Backoff;
use pgfleet_common::error::chain;

use crate::target::Console;

/// The most pools (database, user pairs) one sample keeps.
const MAX_POOLS: usize = 1000;

/// One PgBouncer and the agent's connection to it.
pub struct PgBouncer {
    console: Console,
    timeout: Duration,
    client: Option<tokio_postgres::Client>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

impl PgBouncer {
    /// A reader of the console at `config`; every command gets `timeout`.
    pub fn new(console: Console, timeout: Duration) -> Self {
        PgBouncer {
            console,
            timeout,
            client: None,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            retry_at: None,
            last_error: None,
        }
    }

    /// Reads the pools and stats; a failure is reported in the sample (the
    /// PostgreSQL side of the target is not affected by it).
    pub async fn sample(&mut self) -> v1::PgBouncerSample {
        let result = match self.retry_at {
            Some(at) if Instant::now() < at => Err(self.last_error.clone().unwrap_or_default()),
            _ => tokio::time::timeout(self.timeout * 2, self.read())
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "PgBouncer did not answer within {}",
                        humantime::format_duration(self.timeout * 2)
                    ))
                }),
        };
        match result {
            Ok((pools, stats)) => {
                if self.last_error.take().is_some() {
                    info!("PgBouncer's admin console answers again.");
                }
                self.backoff.reset();
                self.retry_at = None;
                v1::PgBouncerSample {
                    up: true,
                    reason: String::new(),
                    pools,
                    stats,
                }
            }
            Err(reason) => {
                self.client = None;
                if self.retry_at.is_none_or(|at| Instant::now() >= at) {
                    let delay = self.backoff.next_delay();
                    if self.last_error.as_deref() != Some(reason.as_str()) {
                        warn!(reason = %reason, retry_in = ?delay, "Cannot read PgBouncer's admin console; retrying with backoff.");
                    }
                    self.retry_at = Some(Instant::now() + delay);
                    self.last_error = Some(reason.clone());
                }
                v1::PgBouncerSample {
                    up: false,
                    reason,
                    ..Default::default()
                }
            }
        }
    }

    async fn read(&mut self) -> Result<(Vec<v1::PgBouncerPool>, Vec<v1::PgBouncerStats>), String> {
        if self.client.is_none() {
            let console = &self.console;
            let (client, connection) = console
                .config
                .connect(console.tls.connector())
                .await
                .map_err(|e| {
                    let place = crate::target::default_server_id(&console.config);
                    format!(
                        "cannot connect to PgBouncer's admin console: {}",
                        console.tls.explain(&place, &e)
                    )
                })?;
            tokio::spawn(connection);
            self.client = Some(client);
        }
        let client = self.client.as_ref().expect("connected above");
        let show = |command: &'static str| async move {
            client
                .simple_query(command)
                .await
                .map_err(|e| format!("PgBouncer's {command} failed: {}", chain(&e)))
        };
        let pools = rows(show("SHOW POOLS").await?, pool);
        let stats = rows(show("SHOW STATS").await?, stats);
        Ok((pools, stats))
    }
}

/// A row's value by column name.
type Get<'a, 'f> = &'f dyn Fn(&str) -> Option<&'a str>;

/// Applies `parse` to each row, through a lookup of its columns by name.
fn rows<T>(messages: Vec<SimpleQueryMessage>, parse: for<'a> fn(Get<'a, '_>) -> T) -> Vec<T> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .take(MAX_POOLS)
        .map(|row| {
            let get = |name: &str| -> Option<&str> {
                row.columns()
                    .iter()
                    .position(|c| c.name() == name)
                    .and_then(|i| row.get(i))
            };
            parse(&get)
        })
        .collect()
}

fn int(get: Get<'_, '_>, name: &str) -> u64 {
    get(name).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn small(get: Get<'_, '_>, name: &str) -> u32 {
    u32::try_from(int(get, name)).unwrap_or(u32::MAX)
}

fn micros_as_seconds(get: Get<'_, '_>, name: &str) -> f64 {
    int(get, name) as f64 / 1e6
}

/// One row of SHOW POOLS. Columns that an older PgBouncer lacks read as 0.
fn pool(get: Get<'_, '_>) -> v1::PgBouncerPool {
    v1::PgBouncerPool {
        database: get("database").unwrap_or("").to_owned(),
        user: get("user").unwrap_or("").to_owned(),
        client_active_connections: small(get, "cl_active"),
        client_waiting_connections: small(get, "cl_waiting"),
        server_active_connections: small(get, "sv_active"),
        server_idle_connections: small(get, "sv_idle"),
        server_used_connections: small(get, "sv_used"),
        server_testing_connections: small(get, "sv_tested"),
        server_login_connections: small(get, "sv_login"),
        client_maxwait_seconds: int(get, "maxwait") as f64 + micros_as_seconds(get, "maxwait_us"),
        pool_mode: get("pool_mode").unwrap_or("").to_owned(),
    }
}

/// One row of SHOW STATS; PgBouncer counts times in microseconds.
fn stats(get: Get<'_, '_>) -> v1::PgBouncerStats {
    v1::PgBouncerStats {
        database: get("database").unwrap_or("").to_owned(),
        queries_pooled_total: int(get, "total_query_count"),
        sql_transactions_pooled_total: int(get, "total_xact_count"),
        received_bytes_total: int(get, "total_received"),
        sent_bytes_total: int(get, "total_sent"),
        queries_duration_seconds_total: micros_as_seconds(get, "total_query_time"),
        sql_transactions_duration_seconds_total: micros_as_seconds(get, "total_xact_time"),
        client_wait_seconds_total: micros_as_seconds(get, "total_wait_time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn pools_follow_pgbouncer_exporter_names_and_units() {
        let row = [
            ("database", "app"),
            ("user", "alice"),
            ("cl_active", "2"),
            ("cl_waiting", "5"),
            ("sv_active", "2"),
            ("sv_idle", "0"),
            ("sv_used", "1"),
            ("sv_tested", "0"),
            ("sv_login", "0"),
            ("maxwait", "3"),
            ("maxwait_us", "250000"),
            ("pool_mode", "transaction"),
        ];
        let p = pool(&lookup(&row));
        assert_eq!((p.database.as_str(), p.user.as_str()), ("app", "alice"));
        assert_eq!(p.client_waiting_connections, 5);
        assert_eq!(p.server_used_connections, 1);
        assert!((p.client_maxwait_seconds - 3.25).abs() < 1e-9);
        assert_eq!(p.pool_mode, "transaction");
    }

    #[test]
    fn stats_convert_microseconds_and_tolerate_missing_columns() {
        let row = [
            ("database", "app"),
            ("total_query_count", "10"),
            ("total_query_time", "1500000"),
            ("total_wait_time", "not a number"),
        ];
        let s = stats(&lookup(&row));
        assert_eq!(s.queries_pooled_total, 10);
        assert!((s.queries_duration_seconds_total - 1.5).abs() < 1e-9);
        assert_eq!(s.client_wait_seconds_total, 0.0);
        assert_eq!(s.sql_transactions_pooled_total, 0);
    }
}
