//! pg_stat_activity: every session but the agent's own, and the connection slots
//! that every client backend (the agent's own included) holds.

use std::collections::BTreeMap;
use std::time::SystemTime;

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::system_time_to_micros;
use pgfleet_proto::v1;
use tokio_postgres::Row;

use super::query_text::{self, QueryText};
use crate::target::APPLICATION_NAME;

/// What pg_stat_activity shows in place of the query to a role without
/// pg_monitor (or pg_read_all_stats).
pub const INSUFFICIENT_PRIVILEGE: &str = "<insufficient privilege>";

/// The oldest PostgreSQL the agent samples (pg_stat_activity.backend_type).
pub const MIN_VERSION_NUM: u32 = 100000;

/// One cheap read of pg_stat_activity, written for the server's version:
/// `leader_pid` exists from 13 and `query_id` from 14, and older servers get NULL
/// in their place. It runs in autocommit, so each sample sees a fresh statistics
/// snapshot. pg_blocking_pids runs only for sessions waiting on a Lock. The last
/// column marks the agent's own sessions (this one, and those with its
/// application_name and role), which count for the slots but are not sessions
/// the agent reports.
pub fn activity_sql(version_num: u32) -> String {
    let leader_pid = if version_num >= 130000 {
        "leader_pid"
    } else {
        "NULL::int"
    };
    let query_id = if version_num >= 140000 {
        "query_id"
    } else {
        "NULL::bigint"
    };
    format!(
        "SELECT pid, backend_start, datname, usename, application_name,
       host(client_addr) AS client_host, client_port, state,
       xact_start, query_start, state_change, wait_event_type, wait_event, query,
       backend_type,
       CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocked_by,
       {leader_pid} AS leader_pid, {query_id} AS query_id,
       (pid = pg_backend_pid() OR (application_name = $1 AND usename = current_user)) AS own
  FROM pg_stat_activity"
    )
}

/// One read of pg_stat_activity.
#[derive(Debug, Default)]
pub struct Activity {
    /// Every session but the agent's own.
    pub sessions: Vec<Session>,
    /// Client backends by state, application, user and database (without the
    /// server's limits, which the facts carry).
    pub slots: v1::ConnectionSlots,
    /// Sessions the agent's role may not see.
    pub not_visible: u32,
}

/// Reads every session of the server, with query texts as `mode` says.
pub async fn sample_activity(
    client: &deadpool_postgres::Client,
    version_num: u32,
    mode: QueryText,
) -> Result<Activity, tokio_postgres::Error> {
    let statement = client.prepare_cached(&activity_sql(version_num)).await?;
    let rows = client.query(&statement, &[&APPLICATION_NAME]).await?;
    let mut activity = Activity::default();
    let mut slots = SlotCounter::default();
    for row in &rows {
        let (session, own) = session(row, mode)?;
        if session.backend_type == "client backend" {
            slots.add(&session);
        }
        if own {
            continue;
        }
        if session.state == SessionState::NotVisible {
            activity.not_visible += 1;
        }
        activity.sessions.push(session);
    }
    activity.slots = slots.finish();
    Ok(activity)
}

fn micros(t: Option<SystemTime>) -> Option<i64> {
    t.map(system_time_to_micros)
}

fn session(row: &Row, mode: QueryText) -> Result<(Session, bool), tokio_postgres::Error> {
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
    let raw_query = text(13)?;
    let (state, (query, fingerprint)) = if raw_query == INSUFFICIENT_PRIVILEGE {
        (SessionState::NotVisible, (String::new(), 0))
    } else {
        (
            SessionState::from_pg(state.as_deref()),
            query_text::prepare(&raw_query, mode),
        )
    };
    let session = Session {
        pid: row.try_get(0)?,
        backend_start_us: micros(row.try_get(1)?).unwrap_or(0),
        database: text(2)?,
        user: text(3)?,
        application_name: text(4)?,
        client,
        state,
        xact_start_us: micros(row.try_get(8)?),
        query_start_us: micros(row.try_get(9)?),
        state_change_us: micros(row.try_get(10)?),
        wait_event_type: text(11)?,
        wait_event: text(12)?,
        query,
        backend_type: text(14)?,
        blocked_by: row.try_get::<_, Option<Vec<i32>>>(15)?.unwrap_or_default(),
        leader_pid: row.try_get(16)?,
        query_id: row.try_get::<_, Option<i64>>(17)?.filter(|&id| id != 0),
        fingerprint,
    };
    let own = row.try_get::<_, Option<bool>>(18)?.unwrap_or(false);
    Ok((session, own))
}

/// Counts client backends four ways.
#[derive(Default)]
struct SlotCounter {
    used: u32,
    by_state: BTreeMap<String, u32>,
    by_application: BTreeMap<String, u32>,
    by_user: BTreeMap<String, u32>,
    by_database: BTreeMap<String, u32>,
}

impl SlotCounter {
    fn add(&mut self, s: &Session) {
        self.used += 1;
        let state = match s.state.as_pg() {
            "" => "unknown",
            word => word,
        };
        *self.by_state.entry(state.to_owned()).or_default() += 1;
        *self
            .by_application
            .entry(s.application_name.clone())
            .or_default() += 1;
        *self.by_user.entry(s.user.clone()).or_default() += 1;
        *self.by_database.entry(s.database.clone()).or_default() += 1;
    }

    fn finish(self) -> v1::ConnectionSlots {
        let counts = |m: BTreeMap<String, u32>| {
            m.into_iter()
                .map(|(name, count)| v1::SlotCount { name, count })
                .collect()
        };
        v1::ConnectionSlots {
            used: self.used,
            by_state: counts(self.by_state),
            by_application: counts(self.by_application),
            by_user: counts(self.by_user),
            by_database: counts(self.by_database),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_asks_only_for_columns_the_version_has() {
        let v12 = activity_sql(120017);
        assert!(v12.contains("NULL::int AS leader_pid"), "{v12}");
        assert!(v12.contains("NULL::bigint AS query_id"), "{v12}");
        let v13 = activity_sql(130013);
        assert!(v13.contains("leader_pid AS leader_pid"), "{v13}");
        assert!(v13.contains("NULL::bigint AS query_id"), "{v13}");
        let v15 = activity_sql(150018);
        assert!(v15.contains("leader_pid AS leader_pid"), "{v15}");
        assert!(v15.contains("query_id AS query_id"), "{v15}");
    }

    #[test]
    fn slots_count_by_state_application_user_and_database() {
        let mut c = SlotCounter::default();
        for (state, app) in [
            (SessionState::Active, "web"),
            (SessionState::Idle, "web"),
            (SessionState::NotVisible, ""),
        ] {
            c.add(&Session {
                state,
                application_name: app.into(),
                user: "app".into(),
                database: "orders".into(),
                ..Default::default()
            });
        }
        let slots = c.finish();
        assert_eq!(slots.used, 3);
        let names: Vec<_> = slots
            .by_state
            .iter()
            .map(|s| (s.name.as_str(), s.count))
            .collect();
        assert_eq!(names, [("active", 1), ("idle", 1), ("not visible", 1)]);
        assert_eq!(slots.by_application[1].name, "web");
        assert_eq!(slots.by_application[1].count, 2);
        assert_eq!(slots.by_database[0].count, 3);
    }
}
