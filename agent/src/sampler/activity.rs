//! pg_stat_activity: every session but the agent's own, and the connection slots
//! that every client backend (the agent's own included) holds.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgfleet_proto::model::{KeyHasher, Session, SessionMap, SessionState};
use pgfleet_proto::v1;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Type};

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
/// snapshot (both parts of the statement read the same one).
///
/// Most sessions look the same from one second to the next, and every change but
/// a wait moves one of their timestamps. So the statement returns:
/// - a row of details for each session whose timestamps are newer than `$2`
///   (the previous read, less a margin), or that waits on a Lock (then
///   pg_blocking_pids names its blockers); the query text, the longest column,
///   only when a new query began;
/// - and one last row that lists every session compactly: keys, whether it is
///   the agent's own, and its wait, for the agent to update what it holds.
///
/// `own` marks the agent's own sessions (this one, and those with its
/// application_name and role), which count for the slots but are not reported.
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
        "WITH s AS (
  SELECT *, coalesce(backend_start IS NULL OR backend_start >= $2 OR xact_start >= $2
                     OR query_start >= $2 OR state_change >= $2
                     OR wait_event_type = 'Lock', false) AS detailed
    FROM pg_stat_activity),
a AS MATERIALIZED (
  SELECT pid, backend_start, detailed,
         coalesce(pid = pg_backend_pid()
                  OR (application_name = $1 AND usename = current_user), false) AS own,
         wait_event_type, wait_event,
         CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocked_by,
         CASE WHEN detailed THEN datname END AS datname,
         CASE WHEN detailed THEN usename END AS usename,
         CASE WHEN detailed THEN application_name END AS application_name,
         CASE WHEN detailed THEN host(client_addr) END AS client_host,
         CASE WHEN detailed THEN client_port END AS client_port,
         CASE WHEN detailed THEN state END AS state,
         xact_start, query_start, state_change,
         CASE WHEN query_start IS NULL OR query_start >= $2 OR backend_start >= $2
              THEN query END AS query,
         CASE WHEN detailed THEN backend_type END AS backend_type,
         CASE WHEN detailed THEN {leader_pid} END AS leader_pid,
         CASE WHEN detailed THEN {query_id} END AS query_id
    FROM s)
SELECT pid, backend_start, own, wait_event_type, wait_event, blocked_by,
       datname, usename, application_name, client_host, client_port, state,
       xact_start, query_start, state_change, query, backend_type, leader_pid, query_id,
       NULL::int[], NULL::timestamptz[], NULL::bool[], NULL::text
  FROM a WHERE detailed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL,
       array_agg(pid), array_agg(backend_start), array_agg(own),
       string_agg(coalesce(wait_event_type, '') || chr(31) || coalesce(wait_event, ''), chr(30))
  FROM a"
    )
}

/// How far before the previous read a change must have happened to be taken as
/// seen: covers a backend that took its timestamp just before the previous read
/// and published its change just after.
const CHANGE_MARGIN: Duration = Duration::from_secs(2);

/// One read of pg_stat_activity.
#[derive(Debug, Default)]
pub struct Activity {
    /// Every session but the agent's own.
    pub sessions: Vec<Arc<Session>>,
    /// Client backends by state, application, user and database (without the
    /// server's limits, which the facts carry).
    pub slots: v1::ConnectionSlots,
    /// Sessions the agent's role may not see.
    pub not_visible: u32,
    /// False when a session came back unchanged yet unknown (only if the cache
    /// was lost); the next read then asks for every detail.
    pub complete: bool,
}

/// What the sampler remembers of the previous read: every session (with the
/// raw text of its query, and whether it is the agent's own), so that unchanged
/// sessions are neither read again nor copied, and an unchanged query is not
/// masked again.
#[derive(Debug, Default)]
pub struct ActivityCache {
    sessions: SessionMap<Known>,
    /// Sessions unchanged since this instant come back without their details.
    since: Option<SystemTime>,
    /// Which read this is; a session not seen by the current read has ended.
    generation: u64,
    /// The connection slots held by the known sessions, kept up to date as
    /// sessions change, start and end (so unchanged ones cost nothing).
    slots: SlotCounter,
    /// Details read this time, kept between reads for its memory.
    fresh: SessionMap<Known>,
    /// The statement for the server's version, written once.
    sql: Option<(u32, String)>,
    /// One copy of each short string (names, types, waits) that sessions share,
    /// so equal strings are the same allocation and compare by address.
    strings: Interner,
}

/// The most strings the interner holds before it starts afresh.
const MAX_INTERNED: usize = 10_000;

/// Shared copies of short strings.
#[derive(Debug, Default)]
struct Interner(std::collections::HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(s) = self.0.get(text) {
            return s.clone();
        }
        if self.0.len() >= MAX_INTERNED {
            self.0.clear();
        }
        let s: Arc<str> = Arc::from(text);
        self.0.insert(s.clone());
        s
    }
}

/// A session as the cache holds it.
#[derive(Debug)]
struct Known {
    session: Arc<Session>,
    raw_query: Arc<str>,
    /// The wait as the compact list had it ("type\u{1f}event"), to spot a
    /// change with one comparison.
    raw_wait: Box<str>,
    own: bool,
    /// The read that last saw it.
    seen: u64,
}

impl ActivityCache {
    /// Forgets everything: the next read asks for every detail again.
    pub fn clear(&mut self) {
        self.sessions.clear();
        self.slots = SlotCounter::default();
        self.since = None;
    }

    /// Records a complete read at the server's time `server_now` (taken at or
    /// before the read): the next read asks only for what changed since.
    pub fn mark_read(&mut self, server_now: SystemTime) {
        self.since = Some(server_now - CHANGE_MARGIN);
    }
}

/// Reads every session of the server, with query texts as `mode` says. The
/// caller marks the read in the cache ([`ActivityCache::mark_read`]) when it is
/// complete.
pub async fn sample_activity(
    client: &deadpool_postgres::Client,
    version_num: u32,
    mode: QueryText,
    cache: &mut ActivityCache,
) -> Result<Activity, tokio_postgres::Error> {
    let sql = match &cache.sql {
        Some((v, sql)) if *v == version_num => sql,
        _ => &cache.sql.insert((version_num, activity_sql(version_num))).1,
    };
    let statement = client.prepare_cached(sql).await?;
    let since = cache.since.unwrap_or(SystemTime::UNIX_EPOCH);
    let rows = client
        .query(&statement, &[&APPLICATION_NAME, &since])
        .await?;
    let Some((summary, details)) = rows.split_last() else {
        return Ok(Activity {
            complete: true,
            ..Default::default()
        });
    };
    cache.generation += 1;
    let generation = cache.generation;
    let mut fresh = std::mem::take(&mut cache.fresh);
    for row in details {
        let key = (row.try_get(0)?, micros(row, 1)?.unwrap_or(0));
        let before = cache.sessions.remove(&key);
        if let Some(b) = &before {
            cache.slots.remove(&b.session);
        }
        let known = details_of(row, key, before, mode, &mut cache.strings)?;
        cache.slots.add(&known.session);
        fresh.insert(key, known);
    }
    let pids: Vec<i32> = summary.try_get::<_, Option<_>>(19)?.unwrap_or_default();
    let starts: Vec<Option<PgMicros>> = summary.try_get::<_, Option<_>>(20)?.unwrap_or_default();
    let owns: Vec<Option<bool>> = summary.try_get::<_, Option<_>>(21)?.unwrap_or_default();
    let waits: &str = summary.try_get::<_, Option<_>>(22)?.unwrap_or_default();
    let mut waits = waits.split('\u{1e}');
    let mut activity = Activity {
        sessions: Vec::with_capacity(pids.len()),
        ..Default::default()
    };
    let mut complete = true;
    for (i, &pid) in pids.iter().enumerate() {
        let start = starts.get(i).and_then(|s| s.as_ref()).map_or(0, |m| m.0);
        let key = (pid, start);
        let wait = waits.next().unwrap_or("");
        let own = owns.get(i).copied().flatten();
        let known = match fresh.remove(&key) {
            Some(mut k) => {
                if *k.raw_wait != *wait {
                    k.raw_wait = wait.into();
                }
                cache.sessions.entry(key).insert_entry(k).into_mut()
            }
            None => match cache.sessions.get_mut(&key) {
                Some(k) => {
                    if *k.raw_wait != *wait || !k.session.blocked_by.is_empty() {
                        let (kind, event) = wait.split_once('\u{1f}').unwrap_or(("", ""));
                        let s = Arc::make_mut(&mut k.session);
                        s.wait_event_type = cache.strings.get(kind);
                        s.wait_event = cache.strings.get(event);
                        s.blocked_by.clear();
                        k.raw_wait = wait.into();
                    }
                    k.own = own.unwrap_or(k.own);
                    k
                }
                None => {
                    // Unchanged, yet not known: cannot happen unless the cache
                    // was lost. Read every detail again next time.
                    complete = false;
                    continue;
                }
            },
        };
        known.seen = generation;
        if !known.own {
            if known.session.state == SessionState::NotVisible {
                activity.not_visible += 1;
            }
            activity.sessions.push(known.session.clone());
        }
    }
    // Sessions this read did not see have ended.
    let slots = &mut cache.slots;
    cache.sessions.retain(|_, k| {
        let live = k.seen == generation;
        if !live {
            slots.remove(&k.session);
        }
        live
    });
    // Details of sessions the list did not have (none, as both come from one
    // read) are dropped, and so is their share of the slots.
    for (_, k) in fresh.drain() {
        cache.slots.remove(&k.session);
    }
    cache.fresh = fresh;
    if !complete {
        cache.since = None;
    }
    activity.complete = complete;
    activity.slots = cache.slots.snapshot();
    Ok(activity)
}

/// A timestamptz as microseconds since the Unix epoch, read straight from
/// PostgreSQL's binary form (microseconds since 2000-01-01), with no detour
/// through `SystemTime`.
struct PgMicros(i64);

/// 2000-01-01 in microseconds since the Unix epoch.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl<'a> FromSql<'a> for PgMicros {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let pg = i64::from_be_bytes(raw.try_into()?);
        Ok(PgMicros(pg.saturating_add(PG_EPOCH_US)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

/// Column `i`, a timestamptz, in microseconds since the Unix epoch.
fn micros(row: &Row, i: usize) -> Result<Option<i64>, tokio_postgres::Error> {
    Ok(row.try_get::<_, Option<PgMicros>>(i)?.map(|m| m.0))
}

/// `now`, shared with `before` when it has the same text.
fn shared(before: Option<&Arc<str>>, now: &str) -> Arc<str> {
    match before {
        Some(b) if b.as_ref() == now => b.clone(),
        _ => Arc::from(now),
    }
}

/// One row of details as a session, taking what did not change from `before`.
fn details_of(
    row: &Row,
    (pid, backend_start_us): (i32, i64),
    before: Option<Known>,
    mode: QueryText,
    strings: &mut Interner,
) -> Result<Known, tokio_postgres::Error> {
    let own = row.try_get::<_, Option<bool>>(2)?.unwrap_or(false);
    let b = before.as_ref().map(|k| k.session.as_ref());
    let mut text = |i: usize| -> Result<Arc<str>, tokio_postgres::Error> {
        Ok(strings.get(row.try_get::<_, Option<&str>>(i)?.unwrap_or("")))
    };
    let client_host: Option<&str> = row.try_get(9)?;
    let client_port: Option<i32> = row.try_get(10)?;
    let client = match (client_host, client_port) {
        (Some(host), Some(port)) if host.contains(':') => format!("[{host}]:{port}"),
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => String::new(),
    };
    let state: Option<&str> = row.try_get(11)?;
    let (raw, query, fingerprint) = match (row.try_get::<_, Option<&str>>(15)?, &before) {
        (None, Some(k)) => (
            k.raw_query.clone(),
            k.session.query.clone(),
            k.session.fingerprint,
        ),
        (None, None) => (Arc::from(""), Arc::from(""), 0),
        (Some(now), Some(k)) if k.raw_query.as_ref() == now => (
            k.raw_query.clone(),
            k.session.query.clone(),
            k.session.fingerprint,
        ),
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
        database: text(6)?,
        user: text(7)?,
        application_name: text(8)?,
        client: shared(b.map(|s| &s.client), &client),
        state,
        xact_start_us: micros(row, 12)?,
        query_start_us: micros(row, 13)?,
        state_change_us: micros(row, 14)?,
        wait_event_type: text(3)?,
        wait_event: text(4)?,
        query,
        backend_type: text(16)?,
        blocked_by: row.try_get::<_, Option<Vec<i32>>>(5)?.unwrap_or_default(),
        leader_pid: row.try_get(17)?,
        query_id: row.try_get::<_, Option<i64>>(18)?.filter(|&id| id != 0),
        fingerprint,
    };
    // Unchanged after all (a timestamp moved within the margin): keep sharing.
    let session = match before {
        Some(k) if *k.session == session => k.session,
        _ => Arc::new(session),
    };
    Ok(Known {
        session,
        raw_query: raw,
        // Set from the compact list, which has every session's wait.
        raw_wait: Box::from(""),
        own,
        seen: 0,
    })
}

/// Counts client backends four ways; sessions are added and removed as they
/// change, so the counts are always those of the sessions known.
#[derive(Debug, Default)]
struct SlotCounter {
    used: u32,
    by_state: BTreeMap<&'static str, u32>,
    by_application: ByName,
    by_user: ByName,
    by_database: ByName,
}

/// Counts by name. Names are interned, so they are counted by address (cheap),
/// and merged by text only when a snapshot of the counts is taken.
#[derive(Debug, Default)]
struct ByName(HashMap<usize, (Arc<str>, u32), BuildHasherDefault<KeyHasher>>);

impl ByName {
    fn add(&mut self, name: &Arc<str>) {
        let address = Arc::as_ptr(name) as *const u8 as usize;
        self.0.entry(address).or_insert_with(|| (name.clone(), 0)).1 += 1;
    }

    fn remove(&mut self, name: &Arc<str>) {
        let address = Arc::as_ptr(name) as *const u8 as usize;
        if let Some(entry) = self.0.get_mut(&address) {
            entry.1 -= 1;
            if entry.1 == 0 {
                self.0.remove(&address);
            }
        }
    }

    fn snapshot(&self) -> Vec<v1::SlotCount> {
        let mut merged: BTreeMap<&str, u32> = BTreeMap::new();
        for (name, count) in self.0.values() {
            *merged.entry(name).or_default() += count;
        }
        merged
            .into_iter()
            .map(|(name, count)| v1::SlotCount {
                name: name.to_owned(),
                count,
            })
            .collect()
    }
}

impl SlotCounter {
    fn state(s: &Session) -> &'static str {
        match s.state.as_pg() {
            "" => "unknown",
            word => word,
        }
    }

    /// Counts `s`, if it is a client backend (the only kind that takes a slot).
    fn add(&mut self, s: &Session) {
        if s.backend_type.as_ref() != "client backend" {
            return;
        }
        self.used += 1;
        *self.by_state.entry(Self::state(s)).or_default() += 1;
        self.by_application.add(&s.application_name);
        self.by_user.add(&s.user);
        self.by_database.add(&s.database);
    }

    /// Takes back what [`SlotCounter::add`] counted for `s`.
    fn remove(&mut self, s: &Session) {
        if s.backend_type.as_ref() != "client backend" {
            return;
        }
        self.used = self.used.saturating_sub(1);
        if let Some(n) = self.by_state.get_mut(Self::state(s)) {
            *n -= 1;
            if *n == 0 {
                self.by_state.remove(Self::state(s));
            }
        }
        self.by_application.remove(&s.application_name);
        self.by_user.remove(&s.user);
        self.by_database.remove(&s.database);
    }

    fn snapshot(&self) -> v1::ConnectionSlots {
        v1::ConnectionSlots {
            used: self.used,
            by_state: self
                .by_state
                .iter()
                .map(|(name, count)| v1::SlotCount {
                    name: (*name).to_owned(),
                    count: *count,
                })
                .collect(),
            by_application: self.by_application.snapshot(),
            by_user: self.by_user.snapshot(),
            by_database: self.by_database.snapshot(),
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
        assert!(v12.contains("THEN NULL::int END AS leader_pid"), "{v12}");
        assert!(v12.contains("THEN NULL::bigint END AS query_id"), "{v12}");
        let v13 = activity_sql(130013);
        assert!(v13.contains("THEN leader_pid END AS leader_pid"), "{v13}");
        assert!(v13.contains("THEN NULL::bigint END AS query_id"), "{v13}");
        let v15 = activity_sql(150018);
        assert!(v15.contains("THEN leader_pid END AS leader_pid"), "{v15}");
        assert!(v15.contains("THEN query_id END AS query_id"), "{v15}");
    }

    #[test]
    fn timestamps_read_as_unix_microseconds() {
        let at = |pg: i64| {
            PgMicros::from_sql(&Type::TIMESTAMPTZ, &pg.to_be_bytes())
                .unwrap()
                .0
        };
        assert_eq!(at(0), 946_684_800_000_000, "2000-01-01");
        assert_eq!(at(1_000_001), 946_684_801_000_001);
        assert_eq!(at(i64::MAX), i64::MAX, "infinity stays infinite");
        assert!(PgMicros::from_sql(&Type::TIMESTAMPTZ, &[1, 2]).is_err());
    }

    #[test]
    fn slots_count_client_backends_and_follow_changes() {
        let session = |state, app: &str| Session {
            state,
            application_name: app.into(),
            user: "app".into(),
            database: "orders".into(),
            backend_type: "client backend".into(),
            ..Default::default()
        };
        let mut c = SlotCounter::default();
        let sessions = [
            session(SessionState::Active, "web"),
            session(SessionState::Idle, "web"),
            session(SessionState::NotVisible, ""),
        ];
        for s in &sessions {
            c.add(s);
        }
        c.add(&Session {
            backend_type: "checkpointer".into(),
            ..Default::default()
        });
        let slots = c.snapshot();
        assert_eq!(slots.used, 3, "background processes take no slot");
        let names: Vec<_> = slots
            .by_state
            .iter()
            .map(|s| (s.name.as_str(), s.count))
            .collect();
        assert_eq!(names, [("active", 1), ("idle", 1), ("not visible", 1)]);
        assert_eq!(slots.by_application[1].name, "web");
        assert_eq!(slots.by_application[1].count, 2, "merged by text");
        assert_eq!(slots.by_database[0].count, 3);

        // A session changes state, another ends.
        c.remove(&sessions[1]);
        c.add(&session(SessionState::Active, "web"));
        c.remove(&sessions[2]);
        let slots = c.snapshot();
        assert_eq!(slots.used, 2);
        let names: Vec<_> = slots
            .by_state
            .iter()
            .map(|s| (s.name.as_str(), s.count))
            .collect();
        assert_eq!(names, [("active", 2)]);
        assert_eq!(slots.by_application.len(), 1);
    }
}
