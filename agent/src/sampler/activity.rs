//! pg_stat_activity: every session but the agent's own.

use std::time::SystemTime;

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::system_time_to_micros;
use tokio_postgres::Row;

use crate::target::APPLICATION_NAME;

/// One cheap read of pg_stat_activity in autocommit (so each sample sees a fresh
/// statistics snapshot). pg_blocking_pids runs only for sessions waiting on a Lock.
/// The agent's own sessions, marked by their application_name and role, are left out.
const ACTIVITY_SQL: &str = "\
SELECT pid, backend_start, datname, usename, application_name,
       host(client_addr) AS client_host, client_port, state,
       xact_start, query_start, state_change, wait_event_type, wait_event, query,
       backend_type,
       CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocked_by
  FROM pg_stat_activity
 WHERE pid <> pg_backend_pid()
   AND (application_name IS DISTINCT FROM $1 OR usename IS DISTINCT FROM current_user)";

/// Reads every visible session of the server.
pub async fn sample_activity(
    client: &deadpool_postgres::Client,
) -> Result<Vec<Session>, tokio_postgres::Error> {
    let statement = client.prepare_cached(ACTIVITY_SQL).await?;
    let rows = client.query(&statement, &[&APPLICATION_NAME]).await?;
    rows.iter().map(session).collect()
}

fn micros(t: Option<SystemTime>) -> Option<i64> {
    t.map(system_time_to_micros)
}

fn session(row: &Row) -> Result<Session, tokio_postgres::Error> {
    let text = |i: usize| -> Result<String, tokio_postgres::Error> {
        Ok(row.try_get::<_, Option<String>>(i)?.unwrap_or_default())
    };
    let client_host: Option<String> = row.try_get(5)?;
    let client_port: Option<i32> = row.try_get(6)?;
    let client = match (client_host, client_port) {
        (Some(host), Some(port)) if host.contains(':') => format!("[{host}]:{port}"),
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host,
        (None, _) => String::new(),
    };
    let state: Option<String> = row.try_get(7)?;
    Ok(Session {
        pid: row.try_get(0)?,
        backend_start_us: micros(row.try_get(1)?).unwrap_or(0),
        database: text(2)?,
        user: text(3)?,
        application_name: text(4)?,
        client,
        state: SessionState::from_pg(state.as_deref()),
        xact_start_us: micros(row.try_get(8)?),
        query_start_us: micros(row.try_get(9)?),
        state_change_us: micros(row.try_get(10)?),
        wait_event_type: text(11)?,
        wait_event: text(12)?,
        query: text(13)?,
        backend_type: text(14)?,
        blocked_by: row.try_get::<_, Option<Vec<i32>>>(15)?.unwrap_or_default(),
    })
}
