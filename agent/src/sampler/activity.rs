//! pg_stat_activity: every session but the agent's own, and the connection slots
//! that every client backend (the agent's own included) holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
/// snapshot. pg_blocking_pids runs only for sessions waiting on a Lock.
///
/// The query text, the longest column, is sent only for sessions whose query
/// began since `$2` (the previous read, less a margin); the agent keeps the text
/// it read before for the others. The last column marks the agent's own sessions
/// (this one, and those with its application_name and role), which count for the
/// slots but are not sessions the agent reports.
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
       xact_start, query_start, state_change, wait_event_type, wait_event,
       CASE WHEN query_start IS NULL OR query_start >= $2 OR backend_start >= $2
            THEN query END AS query,
       backend_type,
       CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocked_by,
       {leader_pid} AS leader_pid, {query_id} AS query_id,
       (pid = pg_backend_pid() OR (application_name = $1 AND usename = current_user)) AS own
  FROM pg_stat_activity"
    )
}

/// How far before the previous read a query must have begun for its text to be
/// taken as known: covers a backend that took its start time just before the
/// previous read and published its new query just after.
const TEXT_MARGIN: Duration = Duration::from_secs(2);

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

/// What the sampler remembers of the previous read: every session, with the
/// raw text its query had, so that unchanged values are shared, not copied, and
/// an unchanged query is not masked again.
#[derive(Debug, Default)]
pub struct ActivityCache {
    sessions: HashMap<(i32, i64), (Session, Arc<str>)>,
    /// Query texts are asked for only when newer than this.
    texts_since: Option<SystemTime>,
}

impl ActivityCache {
    /// Forgets everything: the next read asks for every text again.
    pub fn clear(&mut self) {
        self.sessions.clear();
        self.texts_since = None;
    }
}

/// Reads every session of the server, with query texts as `mode` says.
/// `server_now` is the server's clock at (or just before) this read.
pub async fn sample_activity(
    client: &deadpool_postgres::Client,
    version_num: u32,
    mode: QueryText,
    cache: &mut ActivityCache,
    server_now: SystemTime,
) -> Result<Activity, tokio_postgres::Error> {
    let statement = client.prepare_cached(&activity_sql(version_num)).await?;
    let since = cache.texts_since.unwrap_or(SystemTime::UNIX_EPOCH);
    let rows = client
        .query(&statement, &[&APPLICATION_NAME, &since])
        .await?;
    let mut previous = std::mem::take(&mut cache.sessions);
    let mut activity = Activity {
        sessions: Vec::with_capacity(rows.len()),
        ..Default::default()
    };
    let mut slots = SlotCounter::default();
    let mut missing_text = false;
    for row in &rows {
        let key = (row.try_get(0)?, micros(row.try_get(1)?).unwrap_or(0));
        let before = previous.remove(&key);
        let (session, raw, own) = session(row, key, before.as_ref(), mode, &mut missing_text)?;
        if session.backend_type.as_ref() == "client backend" {
            slots.add(&session);
        }
        if own {
            continue;
        }
        if session.state == SessionState::NotVisible {
            activity.not_visible += 1;
        }
        cache.sessions.insert(key, (session.clone(), raw));
        activity.sessions.push(session);
    }
    // A session whose text was not sent and is not known (it cannot happen
    // unless the cache was lost) gets its text on the next read.
    cache.texts_since = (!missing_text).then(|| server_now - TEXT_MARGIN);
    activity.slots = slots.finish();
    Ok(activity)
}

fn micros(t: Option<SystemTime>) -> Option<i64> {
    t.map(system_time_to_micros)
}

/// `now`, shared with `before` when it has the same text.
fn shared(before: Option<&Arc<str>>, now: Option<&str>) -> Arc<str> {
    let now = now.unwrap_or("");
    match before {
        Some(b) if b.as_ref() == now => b.clone(),
        _ => Arc::from(now),
    }
}

/// One row as a session, its raw query text, and whether it is the agent's own.
fn session(
    row: &Row,
    (pid, backend_start_us): (i32, i64),
    before: Option<&(Session, Arc<str>)>,
    mode: QueryText,
    missing_text: &mut bool,
) -> Result<(Session, Arc<str>, bool), tokio_postgres::Error> {
    let b = before.map(|(s, _)| s);
    let text = |i: usize, prev: Option<&Arc<str>>| -> Result<Arc<str>, tokio_postgres::Error> {
        Ok(shared(prev, row.try_get::<_, Option<&str>>(i)?))
    };
    // A backend's database, role, client and type never change, so a session
    // seen before keeps them. (Without a start time, as for sessions the role may
    // not see, the pid alone could belong to a new backend.)
    let (database, user, client, backend_type) = match b {
        Some(b) if backend_start_us != 0 => (
            b.database.clone(),
            b.user.clone(),
            b.client.clone(),
            b.backend_type.clone(),
        ),
        _ => {
            let client_host: Option<&str> = row.try_get(5)?;
            let client_port: Option<i32> = row.try_get(6)?;
            let client = match (client_host, client_port) {
                (Some(host), Some(port)) if host.contains(':') => format!("[{host}]:{port}"),
                (Some(host), Some(port)) => format!("{host}:{port}"),
                (Some(host), None) => host.to_owned(),
                (None, _) => String::new(),
            };
            (
                text(2, None)?,
                text(3, None)?,
                Arc::from(client),
                text(14, None)?,
            )
        }
    };
    let state: Option<&str> = row.try_get(7)?;
    let (raw, query, fingerprint) = match (row.try_get::<_, Option<&str>>(13)?, before) {
        (None, Some((s, raw))) => (raw.clone(), s.query.clone(), s.fingerprint),
        (None, None) => {
            *missing_text = true;
            (Arc::from(""), Arc::from(""), 0)
        }
        (Some(now), Some((s, raw))) if raw.as_ref() == now => {
            (raw.clone(), s.query.clone(), s.fingerprint)
        }
        (Some(now), _) => {
            let (text, fp) = query_text::prepare(now, mode);
            (Arc::from(now), Arc::from(text), fp)
        }
    };
    let (state, query, fingerprint) = if raw.as_ref() == INSUFFICIENT_PRIVILEGE {
        (SessionState::NotVisible, Arc::from(""), 0)
    } else {
        (SessionState::from_pg(state), query, fingerprint)
    };
    let session = Session {
        pid,
        backend_start_us,
        database,
        user,
        application_name: text(4, b.map(|s| &s.application_name))?,
        client,
        state,
        xact_start_us: micros(row.try_get(8)?),
        query_start_us: micros(row.try_get(9)?),
        state_change_us: micros(row.try_get(10)?),
        wait_event_type: text(11, b.map(|s| &s.wait_event_type))?,
        wait_event: text(12, b.map(|s| &s.wait_event))?,
        query,
        backend_type,
        blocked_by: row.try_get::<_, Option<Vec<i32>>>(15)?.unwrap_or_default(),
        leader_pid: row.try_get(16)?,
        query_id: row.try_get::<_, Option<i64>>(17)?.filter(|&id| id != 0),
        fingerprint,
    };
    let own = row.try_get::<_, Option<bool>>(18)?.unwrap_or(false);
    Ok((session, raw, own))
}

/// Counts client backends four ways.
#[derive(Default)]
struct SlotCounter {
    used: u32,
    by_state: BTreeMap<&'static str, u32>,
    by_application: BTreeMap<Arc<str>, u32>,
    by_user: BTreeMap<Arc<str>, u32>,
    by_database: BTreeMap<Arc<str>, u32>,
}

impl SlotCounter {
    fn add(&mut self, s: &Session) {
        self.used += 1;
        let state = match s.state.as_pg() {
            "" => "unknown",
            word => word,
        };
        *self.by_state.entry(state).or_default() += 1;
        *self
            .by_application
            .entry(s.application_name.clone())
            .or_default() += 1;
        *self.by_user.entry(s.user.clone()).or_default() += 1;
        *self.by_database.entry(s.database.clone()).or_default() += 1;
    }

    fn finish(self) -> v1::ConnectionSlots {
        fn counts<K: ToString>(m: BTreeMap<K, u32>) -> Vec<v1::SlotCount> {
            m.into_iter()
                .map(|(name, count)| v1::SlotCount {
                    name: name.to_string(),
                    count,
                })
                .collect()
        }
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
