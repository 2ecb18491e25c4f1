//! pg_stat_activity: every session but the agent's own, and the connection slots
//! that every client backend (the agent's own included) holds.

use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgfleet_proto::model::{ArcStr, KeyHasher, Session, SessionKey};
use pgfleet_proto::v1;

mod rows;
mod slots;

use rows::{details, details_of, nothing_new};
use slots::SlotCounter;

use super::array::{self, PgArray};
use super::database::{self, CounterRow};
use super::names::Names;
use super::query_text::QueryText;
use crate::config::Databases;
use crate::target::APPLICATION_NAME;

/// What pg_stat_activity shows in place of the query to a role without
/// pg_monitor (or pg_read_all_stats).
pub const INSUFFICIENT_PRIVILEGE: &str = "<insufficient privilege>";

/// The oldest PostgreSQL the agent samples (pg_stat_activity.backend_type).
pub const MIN_VERSION_NUM: u32 = 100000;

/// The one statement of a sample: pg_stat_activity, the server's facts and
/// pg_stat_database, written for the server's version: `leader_pid` exists from
/// 13 and `query_id` from 14, and older servers get NULL in their place. It runs
/// in autocommit, so each sample sees a fresh statistics snapshot (every part
/// of the statement reads the same one).
///
/// What it costs the watched server comes first. So it reads
/// `pg_stat_get_activity(NULL)` once, and returns one row:
/// - Most sessions look the same from one second to the next, and every change
///   but a wait moves one of their timestamps. The sessions that did not
///   change come compactly, by pid and wait, for the agent to update what it
///   holds (a pid is enough: a session that took the pid of one that ended
///   started after the previous read, so it comes with its details; one that
///   has not reported a state yet, as a backend still logging in shows with
///   the start time it forked at, comes with its details too).
/// - The details of each session whose timestamps are newer than `$2` (the
///   previous read, less a margin), or that waits on a Lock (then
///   pg_blocking_pids names its blockers), come as a column each: an array
///   with an element per session. The query text, the longest column, comes
///   only when a new query began. Databases and roles come as oids, which the
///   agent names from a cache (`sampler::names`).
/// - Then the server's clock, its facts and the databases' counters.
///
/// One row rather than a row per changed session, and no view: the view
/// joins every session to pg_database and pg_authid, and a row per session
/// went through a materialized table and a union. Measured against the
/// statement before (one row per changed session, from the view) at 1,000
/// sessions, the server's CPU per read fell by about a third (BENCHMARKS.md).
/// Nothing is sorted on the server either: the agent sorts by pid.
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
    let facts = database::facts_columns!();
    let databases_cte = database::DATABASES_CTE;
    let databases = database::DATABASES_COLUMNS;
    let detail = |column: &str| format!("array_agg({column}) FILTER (WHERE detailed)");
    let details = [
        "pid",
        "backend_start",
        "coalesce(pid = pg_backend_pid()
                  OR (application_name = $1
                      AND usesysid = (SELECT oid FROM pg_roles WHERE rolname = current_user)),
                  false)",
        "wait_event_type",
        "wait_event",
        "CASE WHEN wait_event_type = 'Lock' THEN array_to_string(pg_blocking_pids(pid), ',') END",
        "datid",
        "usesysid",
        "application_name",
        "host(client_addr)",
        "client_port",
        "state",
        "xact_start",
        "query_start",
        "state_change",
        "CASE WHEN query_start IS NULL OR query_start >= $2 OR backend_start >= $2
              THEN query END",
        "backend_type",
        leader_pid,
        query_id,
    ];
    debug_assert_eq!(details.len(), rows::DETAIL_COLUMNS);
    let details = details.map(detail).join(",\n       ");
    format!(
        "WITH a AS (
  SELECT *, coalesce(backend_start IS NULL OR backend_start >= $2 OR xact_start >= $2
                     OR query_start >= $2 OR state_change >= $2 OR state_change IS NULL
                     OR wait_event_type = 'Lock', false) AS detailed
    FROM pg_stat_get_activity(NULL) OFFSET 0),
{databases_cte}
SELECT array_agg(pid) FILTER (WHERE NOT detailed),
       array_agg(coalesce(wait_event_type, '') || chr(31) || coalesce(wait_event, ''))
         FILTER (WHERE NOT detailed),
       {details},
       now(),
       {facts},
       {databases}
  FROM a"
    )
}

/// Where the row has the server's clock, facts, and database counters.
const SUMMARY_NOW: usize = rows::FIRST_DETAIL + rows::DETAIL_COLUMNS;
const SUMMARY_FACTS: usize = SUMMARY_NOW + 1;
const SUMMARY_DATABASES: usize = SUMMARY_FACTS + database::FACTS_COLUMNS;

/// How far before the previous read a change must have happened to be taken as
/// seen: covers a backend that took its timestamp just before the previous read
/// and published its change just after (microseconds, unless the backend is
/// descheduled in between). Each change is read in full about 1 + margin /
/// interval times, so the margin is short; the whole reads below mend what a
/// longer delay would miss.
const CHANGE_MARGIN: Duration = Duration::from_millis(500);

/// A read lists every session at least this often, even when its consumer has
/// every earlier one, so that anything lost on the way mends itself; such a
/// read also reads every session's details from the server again.
pub const WHOLE_EVERY: u32 = crate::encode::KEYFRAME_EVERY;

/// One read of pg_stat_activity.
#[derive(Debug, Default)]
pub struct Activity {
    /// Every session but the agent's own when `removed` is None; otherwise the
    /// sessions that are new or changed since the previous read.
    pub sessions: Vec<Arc<Session>>,
    /// The keys of the sessions that ended since the previous read, when
    /// `sessions` holds only what changed.
    pub removed: Option<Vec<SessionKey>>,
    /// Client backends by state, application, user and database (without the
    /// server's limits, which the facts carry).
    pub slots: v1::ConnectionSlots,
    /// Sessions the agent's role may not see.
    pub not_visible: u32,
}

/// What the sampler remembers of the previous read: every session by pid (with
/// the raw text of its query, and whether it is the agent's own), so that
/// unchanged sessions are neither read again nor copied, and an unchanged query
/// is not masked again.
#[derive(Debug, Default)]
pub struct ActivityCache {
    /// In pid order.
    sessions: Vec<Known>,
    /// The previous read's list, kept for its memory.
    spare: Vec<Known>,
    /// The previous read's compact list of waits, as read.
    waits: Vec<u8>,
    /// Sessions unchanged since this instant come back without their details.
    since: Option<SystemTime>,
    /// Reads since the last that listed every session; None when the next read
    /// must list every session (its consumer missed the previous one).
    since_whole: Option<u32>,
    /// The connection slots held by the known sessions, kept up to date as
    /// sessions change, start and end (so unchanged ones cost nothing).
    slots: SlotCounter,
    /// The statement for the server's version, written once.
    sql: Option<(u32, String)>,
    /// One copy of each short string (names, types, waits) that sessions share,
    /// so equal strings are the same allocation and compare by address.
    strings: Interner,
    /// The names of the databases and roles that sessions connect to and as.
    names: Names,
}

/// The most strings the interner holds before it starts afresh.
const MAX_INTERNED: usize = 10_000;

/// Shared copies of short strings.
#[derive(Debug, Default)]
struct Interner(std::collections::HashSet<ArcStr, BuildHasherDefault<KeyHasher>>);

impl Interner {
    fn get(&mut self, text: &str) -> ArcStr {
        if let Some(s) = self.0.get(text) {
            return s.clone();
        }
        if self.0.len() >= MAX_INTERNED {
            self.0.clear();
        }
        let s: ArcStr = ArcStr::from(text);
        self.0.insert(s.clone());
        s
    }
}

/// A session as the cache holds it. What an unchanged session needs checked
/// each second lives here, not behind the `Arc`: reading a thousand sessions
/// then touches a thousand table entries and nothing else.
#[derive(Debug)]
struct Known {
    pid: i32,
    own: bool,
    /// Where its wait is in the previous read's compact list (`waits`), when
    /// it was in that list.
    wait: Option<(u32, u32)>,
    session: Arc<Session>,
    raw_query: ArcStr,
}

/// Where `part`, a slice of `whole`, lies in it (None if it is not one, as the
/// empty slice a short list gives is not).
fn position(part: &[u8], whole: &[u8]) -> Option<(u32, u32)> {
    let at = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = at.checked_add(part.len())?;
    (end <= whole.len()).then_some((u32::try_from(at).ok()?, u32::try_from(part.len()).ok()?))
}

/// Whether `wait`, as the compact list spells it ("type\u{1f}event"), is the
/// wait of `s`.
fn wait_is(wait: &[u8], s: &Session) -> bool {
    let (kind, event) = (s.wait_event_type.as_bytes(), s.wait_event.as_bytes());
    wait.len() == kind.len() + 1 + event.len()
        && wait.starts_with(kind)
        && wait[kind.len()] == 0x1f
        && wait.ends_with(event)
}

impl ActivityCache {
    /// Forgets everything: the next read asks for every detail again.
    pub fn clear(&mut self) {
        self.sessions.clear();
        self.slots = SlotCounter::default();
        self.since = None;
        self.since_whole = None;
    }

    /// The consumer did not get the last read: the next lists every session.
    pub fn resend_whole(&mut self) {
        self.since_whole = None;
    }
}

/// Why a read of the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the sample's statement returned a row the agent cannot read: {0}")]
    Malformed(String),
}

/// What one read of the server gives.
#[derive(Debug)]
pub struct ServerRead {
    pub activity: Activity,
    pub facts: v1::ServerFacts,
    /// The counters of the databases the configuration names, as read.
    pub counters: Vec<CounterRow>,
}

/// Reads the server once (see [`activity_sql`]): every session, with query
/// texts as `mode` says, of which it returns what changed since the previous
/// read (or every session, when the previous read was not handed on, and every
/// [`WHOLE_EVERY`] reads); the facts (`identity` caches the system identifier);
/// and the counters of `databases`. A caller that cannot use the result must
/// [`ActivityCache::clear`] the cache.
pub async fn read_server(
    client: &deadpool_postgres::Client,
    version_num: u32,
    mode: QueryText,
    databases: &Databases,
    identity: &mut Option<(i64, u64)>,
    cache: &mut ActivityCache,
) -> Result<ServerRead, ReadError> {
    let sql = match &cache.sql {
        Some((v, sql)) if *v == version_num => sql,
        _ => &cache.sql.insert((version_num, activity_sql(version_num))).1,
    };
    let statement = client.prepare_cached(sql).await?;
    let since = cache.since.unwrap_or(SystemTime::UNIX_EPOCH);
    let names = database::databases_param(databases);
    let summary = client
        .query_one(&statement, &[&APPLICATION_NAME, &since, &names])
        .await?;
    let whole = match cache.since_whole {
        Some(n) if n + 1 < WHOLE_EVERY => {
            cache.since_whole = Some(n + 1);
            false
        }
        _ => {
            cache.since_whole = Some(0);
            true
        }
    };
    // Three lists in pid order: the sessions known, the details read, and the
    // compact list (both sorted here, not by the server). One pass over the
    // three, in step, updates what is known: memory is read in order, and
    // nothing is looked up.
    let details = details(&summary)?;
    if whole {
        // A database or role renamed since is named anew.
        cache.names = Names::default();
    }
    cache
        .names
        .resolve(client, details.iter().map(|d| (d.datid, d.userid)))
        .await?;
    let mut details = details.into_iter().peekable();
    let facts = database::read_facts(client, &summary, SUMMARY_FACTS, identity).await?;
    let counters = database::read_counters(&summary, SUMMARY_DATABASES)?;
    let array = |i: usize| -> Result<PgArray, tokio_postgres::Error> {
        Ok(summary
            .try_get::<_, Option<PgArray>>(i)?
            .unwrap_or(PgArray::EMPTY))
    };
    let (pids, waits) = (array(0)?, array(1)?);
    let read_at: Option<SystemTime> = summary.try_get(SUMMARY_NOW)?;
    let list = waits.bytes();
    let mut compact: Vec<(i32, &[u8])> = pids.iter().map(array::int4).zip(waits.iter()).collect();
    compact.sort_unstable_by_key(|&(pid, _)| pid);
    let mut unchanged = compact.into_iter().peekable();
    let mut complete = true;
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    let mut known = std::mem::take(&mut cache.sessions);
    let mut next = std::mem::take(&mut cache.spare);
    next.clear();
    next.reserve(known.len() + details.len());
    {
        let mut known = known.drain(..).peekable();
        loop {
            let pid = match (details.peek(), unchanged.peek()) {
                (Some(a), Some(&(b, _))) => a.pid.min(b),
                (Some(a), None) => a.pid,
                (None, Some(&(b, _))) => b,
                (None, None) => break,
            };
            // Known sessions that the read skipped have ended.
            while let Some(k) = known.next_if(|k| k.pid < pid) {
                cache.slots.ended(k, &mut removed);
            }
            let before = known.next_if(|k| k.pid == pid);
            if let Some(d) = details.next_if(|d| d.pid == pid) {
                let start = d.backend_start_us.unwrap_or(0);
                let before = match before {
                    Some(b) if b.session.backend_start_us != start => {
                        // Another session had this pid, and has ended.
                        cache.slots.ended(b, &mut removed);
                        None
                    }
                    Some(mut b) if nothing_new(&d, &b, &cache.names) => {
                        b.wait = None;
                        next.push(b);
                        continue;
                    }
                    Some(b) => {
                        cache.slots.remove(&b.session);
                        Some(b)
                    }
                    None => None,
                };
                let (was_reported, prior) = match &before {
                    Some(b) => (!b.own, Arc::as_ptr(&b.session)),
                    None => (false, std::ptr::null()),
                };
                let k = details_of(&d, start, before, mode, &mut cache.strings, &cache.names);
                cache.slots.add(&k.session);
                let same = was_reported && std::ptr::eq(prior, Arc::as_ptr(&k.session));
                if !k.own && !same {
                    changed.push(k.session.clone());
                } else if k.own && was_reported {
                    removed.push(k.session.key());
                }
                next.push(k);
            } else if let Some((_, wait)) = unchanged.next_if(|&(p, _)| p == pid) {
                let Some(mut k) = before else {
                    // Unchanged, yet not known: cannot happen unless the cache
                    // was lost. Read every detail again next time.
                    complete = false;
                    continue;
                };
                // Compared with the same session's bytes in the previous list
                // (or, if it came with details then, with what they said).
                let same = match k.wait {
                    Some((at, len)) => {
                        cache.waits.get(at as usize..(at + len) as usize) == Some(wait)
                    }
                    None => wait_is(wait, &k.session),
                };
                if !same {
                    let text = std::str::from_utf8(wait).unwrap_or_default();
                    let (kind, event) = text.split_once('\u{1f}').unwrap_or(("", ""));
                    let s = Arc::make_mut(&mut k.session);
                    s.wait_event_type = cache.strings.get(kind);
                    s.wait_event = cache.strings.get(event);
                    // Blockers are read only for Lock waits, which come with
                    // details.
                    s.blocked_by.clear();
                    if !k.own {
                        changed.push(k.session.clone());
                    }
                }
                k.wait = position(wait, list);
                next.push(k);
            }
        }
        for k in known {
            cache.slots.ended(k, &mut removed);
        }
    }
    cache.sessions = next;
    cache.spare = known;
    cache.waits.clear();
    cache.waits.extend_from_slice(list);
    // The next read asks only for what changed since this one (the server's
    // clock, at the start of the read), unless it is a whole one.
    let next_whole = cache.since_whole.is_none_or(|n| n + 1 >= WHOLE_EVERY);
    cache.since = read_at
        .filter(|_| complete && !next_whole)
        .map(|at| at - CHANGE_MARGIN);
    let (sessions, removed) = if whole {
        let all = cache.sessions.iter().filter(|k| !k.own);
        (all.map(|k| k.session.clone()).collect(), None)
    } else {
        (changed, Some(removed))
    };
    Ok(ServerRead {
        activity: Activity {
            sessions,
            removed,
            slots: cache.slots.snapshot(),
            not_visible: cache.slots.not_visible,
        },
        facts,
        counters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_asks_only_for_columns_the_version_has() {
        let v12 = activity_sql(120017);
        assert!(v12.contains("array_agg(NULL::int) FILTER"), "{v12}");
        assert!(v12.contains("array_agg(NULL::bigint) FILTER"), "{v12}");
        let v13 = activity_sql(130013);
        assert!(v13.contains("array_agg(leader_pid) FILTER"), "{v13}");
        assert!(v13.contains("array_agg(NULL::bigint) FILTER"), "{v13}");
        let v15 = activity_sql(150018);
        assert!(v15.contains("array_agg(leader_pid) FILTER"), "{v15}");
        assert!(v15.contains("array_agg(query_id) FILTER"), "{v15}");
        assert_eq!(
            v15.matches("FILTER (WHERE detailed)").count(),
            rows::DETAIL_COLUMNS,
            "{v15}"
        );
    }

    #[test]
    fn positions_are_only_of_slices_of_the_list() {
        let list = b"Timeout\x1fPgSleep";
        assert_eq!(position(&list[8..], list), Some((8, 7)));
        assert_eq!(position(&list[..0], list), Some((0, 0)));
        let elsewhere = b"PgSleep".to_vec();
        assert_eq!(position(&elsewhere, list), None);
        assert_eq!(position(&[], list), None);
    }

    #[test]
    fn waits_compare_with_a_session_without_copying() {
        let s = Session {
            wait_event_type: "Lock".into(),
            wait_event: "tuple".into(),
            ..Default::default()
        };
        assert!(wait_is(b"Lock\x1ftuple", &s));
        assert!(!wait_is(b"Lock\x1ftupl", &s));
        assert!(!wait_is(b"LockXtuple", &s));
        assert!(!wait_is(b"", &s));
        assert!(wait_is(b"\x1f", &Session::default()));
    }
}
