//! A SQLite store's hours of rollups: each server's minutes of an hour
//! added up into one row of `rollup_hours`, so that a read of days by the
//! hour reads a sixtieth of the rows (a fleet-wide day of 1,000 servers is
//! 1.44 million minutes, 24,000 hours).
//!
//! The writer builds an hour once it has ended [`AFTER`] ago and a minute
//! that late has been written (or none for [`QUIET`], as seen at the next
//! commit), a chunk of servers after each commit ([`Hours::step`]), and notes the hours built,
//! `[rollup_hours_from, rollup_hours_to)` in `kept`, in the transaction
//! of the last chunk. A minute written later into an hour built (or being
//! built), say from an agent's spool after an outage, marks its server's
//! hour in `rollup_hours_late` in its own transaction ([`late`]); reads take
//! such an hour minute by minute, and the writer builds it again once no
//! minute of it has come for [`AFTER`] (an outage's replay brings its
//! minutes over many commits, and each would otherwise build it again).
//!
//! Each step builds the same servers' hours of DB load too: their minutes
//! of load added up into one row of `load_tuple_hours` each
//! ([`TupleHour`]), which a read of load by whole hours takes in place of
//! the hour's 60 minutes (a fleet-wide day by wait read 1.44 million
//! minutes at 1,000 servers, some 48 s here). A minute of load written late
//! marks its hour as a rollup's does. And their statement intervals of the
//! hour, added up into one row of `statement_hours` each
//! ([`build_statements`]), which a read of a range's statements
//! (`TopQueries`) takes in place of the hour's six 10-minute intervals; an
//! interval written late marks the hour in `statement_hours_late`
//! ([`INTERVALS_LATE`]), whose statements alone are built again. Hours
//! built before a version that adds them up are read minute by minute, or
//! interval by interval: `load_tuple_hours_from` and
//! `statement_hours_from` in `kept` say from which hour on they are built.
//! (Servers are found by their hours of load: one with statement intervals
//! and no minute of load in an hour has them read one by one.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgfleet_proto::time::Micros;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tracing::debug;

use crate::load::Wanted;
use crate::load::hours::{HOUR_US, TupleHour};
use crate::load::statements::Read;
use crate::rollup::{MINUTE_US, Minute};

/// How long after its end an hour is built: its minutes are written as
/// they end, within seconds.
pub(super) const AFTER: Micros = 2 * MINUTE_US;

/// How long after the last minute was written an hour is built even
/// though no minute after it has been (every agent gone, say).
pub(super) const QUIET: Micros = 10 * MINUTE_US;

/// How far back a file that holds minutes but no hours yet (an earlier
/// version's) has its hours built: the hours before read minutes.
pub(super) const BACKFILL: Micros = 24 * HOUR_US;

/// The hours of load of how many listed servers' range a step builds
/// before it looks at the time it has taken.
const LOAD_BATCH: usize = 5;

/// How many servers' hour the first step builds. The rollups of 1,000
/// servers' hour took 165-170 ms in one step here (2.8 µs a minute); a
/// minute of load decodes in some 30-40 µs for a busy server's 93 tuples, so
/// 25 servers' hours of load are about 50-60 ms a step. The steps after it
/// build as many as [`STEP_BUDGET`] allows at the pace of the last (a
/// server whose minutes hold a thousand tuples each costs ten times as
/// much), between 1 and [`MOST_SERVERS`].
const CHUNK: usize = 25;

/// The most servers one step builds.
const MOST_SERVERS: usize = 200;

/// About how long one step takes: it holds the writer, and the commits
/// behind it wait (one every 200 ms).
const STEP_BUDGET: Duration = Duration::from_millis(50);

/// How many late hours one step builds again: 60 lookups each, and their
/// minutes of load decoded (some 2-3 ms a server-hour), about 50 ms for the
/// lot here.
const LATE: usize = 20;

/// What the writer knows of the hours.
#[derive(Debug, Default)]
pub(super) struct Hours {
    /// The hours built, `[from, to)`; None until read from `kept` (or until
    /// the store holds a minute to start from).
    built: Option<(Micros, Micros)>,
    /// The hour under way: its servers in name order, and the first of them
    /// not built yet.
    building: Option<(Micros, Vec<String>, usize)>,
    /// Servers a step builds (tests make it small).
    chunk: Option<usize>,
    /// Servers the next step builds, from the pace of the last ([`CHUNK`]
    /// to start with).
    pace: Option<usize>,
    /// The budget of a step, if not [`STEP_BUDGET`] (tests make it none).
    budget: Option<Duration>,
    /// The first hour built with its tuples of load and the first with its
    /// statements ([`LOAD_FROM`] and [`STATEMENTS_FROM`] in `kept`), None
    /// until one is.
    since: [Option<Micros>; 2],
    /// The latest start of a minute written, and when the last was.
    newest: Micros,
    written_at: Option<Micros>,
}

/// The hours built, `[from, to)`, as `kept` says: None before any.
pub(super) fn built(db: &Connection) -> rusqlite::Result<Option<(Micros, Micros)>> {
    let value = |name: &str| -> rusqlite::Result<Option<i64>> {
        db.prepare_cached("SELECT value FROM kept WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()
    };
    Ok(value("rollup_hours_from")?.zip(value("rollup_hours_to")?))
}

/// The names in `kept` of the first hour built with its tuples of load,
/// and of the first built with its statement intervals: the hours built
/// before (by an earlier version) are read minute by minute, or interval by
/// interval.
pub(super) const LOAD_FROM: &str = "load_tuple_hours_from";
pub(super) const STATEMENTS_FROM: &str = "statement_hours_from";

/// What `kept` holds under `name` ([`LOAD_FROM`], [`STATEMENTS_FROM`]): None
/// before any hour was built so.
pub(super) fn kept_from(db: &Connection, name: &str) -> rusqlite::Result<Option<Micros>> {
    db.prepare_cached("SELECT value FROM kept WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

/// Notes in `kept` that the hours `[from, to)` are built.
fn note_built(db: &Connection, from: Micros, to: Micros) -> rusqlite::Result<()> {
    db.execute(
        "INSERT OR REPLACE INTO kept (name, value) VALUES
         ('rollup_hours_from', ?1), ('rollup_hours_to', ?2)",
        params![from, to],
    )?;
    Ok(())
}

/// The first and the last stored minute, None while there is none. (Each
/// apart, each is an end of the key; `min(minute), max(minute)` in one
/// select reads every row.)
pub(super) fn minutes_kept(db: &Connection) -> rusqlite::Result<Option<(Micros, Micros)>> {
    let (first, last): (Option<i64>, Option<i64>) = db
        .prepare_cached(
            "SELECT (SELECT min(minute) FROM rollups), (SELECT max(minute) FROM rollups)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(first.zip(last))
}

/// The whole hours in `[start, end)` a read can take as their added-up
/// rows: built, none before `since`, and after the oldest stored minute
/// (retention deletes a minute's servers a chunk at a time, so the hour
/// that holds it may miss some, and an hour goes once the last of its
/// minutes has). `[first, last)`, None when there is none.
pub(super) fn whole(
    db: &Connection,
    start: Micros,
    end: Micros,
    since: Micros,
) -> rusqlite::Result<Option<(Micros, Micros)>> {
    let (Some((from, to)), Some((oldest, _))) = (built(db)?, minutes_kept(db)?) else {
        return Ok(None);
    };
    let first = start.max(from).max(since).max(oldest.saturating_add(1));
    let first = first + (HOUR_US - first.rem_euclid(HOUR_US)) % HOUR_US;
    let last = end.min(to);
    let last = last - last.rem_euclid(HOUR_US);
    Ok((first < last).then_some((first, last)))
}

/// Hands `f` each stored minute of `server_id` in the hour at `hour`, in
/// order, each found by its key.
pub(super) fn minutes_of_hour(
    db: &Connection,
    server_id: &str,
    hour: Micros,
    mut f: impl FnMut(Micros, &[u8]),
) -> rusqlite::Result<()> {
    let mut q =
        db.prepare_cached("SELECT body FROM rollups WHERE minute = ?1 AND server_id = ?2")?;
    for minute in (hour..hour + HOUR_US).step_by(MINUTE_US as usize) {
        if let Some(r) = q.query(params![minute, server_id])?.next()? {
            f(minute, r.get_ref(0)?.as_blob()?);
        }
    }
    Ok(())
}

impl Hours {
    /// The hours built as the file `db` says, opened at `now`: a minute
    /// written into them from the first commit on is late. The minutes of
    /// the agents that come back are yet to come, so none is taken to have
    /// been quiet since before `now`.
    pub(super) fn opened(db: &Connection, now: Micros) -> rusqlite::Result<Hours> {
        Ok(Hours {
            built: built(db)?,
            since: [kept_from(db, LOAD_FROM)?, kept_from(db, STATEMENTS_FROM)?],
            written_at: Some(now),
            ..Hours::default()
        })
    }

    #[cfg(test)]
    pub(super) fn with_chunk(mut self, chunk: usize) -> Hours {
        self.chunk = Some(chunk);
        self
    }

    #[cfg(test)]
    pub(super) fn with_budget(mut self, budget: Duration) -> Hours {
        self.budget = Some(budget);
        self
    }

    /// Notes that a minute starting at `start` was written at `now`.
    pub(super) fn wrote(&mut self, start: Micros, now: Micros) {
        self.newest = self.newest.max(start);
        self.written_at = Some(now);
    }

    /// The minutes that lie in hours built or being built: writing one
    /// builds its server's hour again.
    pub(super) fn sealed(&self) -> Option<std::ops::Range<Micros>> {
        let (from, to) = self.built?;
        Some(match &self.building {
            Some((hour, ..)) => from..hour + HOUR_US,
            None => from..to,
        })
    }

    /// Builds again some hours marked late that nothing has come into for
    /// [`AFTER`] by `now` (those a minute came late into first, then those
    /// an interval did), or else a chunk of the next hour due, in a
    /// transaction of its own; whether it built any.
    pub(super) fn step(&mut self, db: &mut Connection, now: Micros) -> rusqlite::Result<bool> {
        for marks in [MINUTES_LATE, INTERVALS_LATE] {
            let due: Vec<(Micros, String)> = db
                .prepare_cached(&format!(
                    "SELECT hour, server_id FROM {marks} WHERE written <= ?1 LIMIT ?2"
                ))?
                .query_map(params![now - AFTER, LATE as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            if !due.is_empty() {
                let tx = db.transaction()?;
                rebuild(&tx, marks, due, Instant::now() + STEP_BUDGET)?;
                tx.commit()?;
                return Ok(true);
            }
        }
        let (from, to) = match self.built {
            Some(b) => b,
            None => {
                let Some(b) = self.start(db, now)? else {
                    return Ok(false);
                };
                self.built = Some(b);
                b
            }
        };
        if self.building.is_none() {
            // Due once it has ended AFTER ago and minutes after that have
            // been written (all of its own, written as they end, have, and
            // so have those of a past written in order), or no minute has
            // been for QUIET.
            let end = to + HOUR_US;
            let quiet = self.written_at.is_none_or(|at| now >= at + QUIET);
            let due = now >= end + AFTER && (self.newest >= end + AFTER || quiet);
            if !due {
                return Ok(false);
            }
            // Hours without a minute (the collector stopped, say) are built
            // at once, up to the next minute stored or the last hour due.
            let next: Option<i64> = db
                .prepare_cached("SELECT min(minute) FROM rollups WHERE minute >= ?1")?
                .query_row([to], |r| r.get(0))?;
            let last_due = if quiet { now } else { now.min(self.newest) } - AFTER;
            let empty_to = next
                .map_or(Micros::MAX, |n| n - n.rem_euclid(HOUR_US))
                .min(last_due - last_due.rem_euclid(HOUR_US));
            if empty_to > to {
                note_built(db, from, empty_to)?;
                self.built = Some((from, empty_to));
                return Ok(true);
            }
            let servers = db
                .prepare_cached("SELECT server_id FROM servers ORDER BY server_id")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            self.building = Some((to, servers, 0));
        }
        let Some((hour, servers, next)) = &mut self.building else {
            return Ok(false);
        };
        let (hour, first) = (*hour, *next);
        let started = Instant::now();
        let chunk = self.chunk.or(self.pace).unwrap_or(CHUNK);
        let mut end = (first + chunk).min(servers.len());
        // Each chunk is a range of names, and together they hold every name:
        // the first from the lowest, the last to the highest, so that a
        // server no longer listed still has its hour. The names `servers[i]`
        // bound the ranges, within a chunk too.
        let lower = |i: usize| if i == 0 { "" } else { servers[i].as_str() };
        let upper = |i: usize| servers.get(i).map(String::as_str);
        let tx = db.transaction()?;
        // The hours of load first, a few listed servers' range at a time,
        // the chunk cut short where the budget is spent (one batch at least,
        // which with no server listed is every name).
        let mut at = first;
        loop {
            let to = (at + LOAD_BATCH).min(end);
            let servers = with_load(&tx, hour, lower(at), upper(to))?;
            build_load(&tx, &servers, hour)?;
            build_statements(&tx, &servers, hour)?;
            at = to;
            if at >= end {
                break;
            }
            // (Not with a chunk set: tests count their steps.)
            if started.elapsed() >= self.budget.unwrap_or(STEP_BUDGET) && self.chunk.is_none() {
                end = at;
                break;
            }
        }
        let (lo, hi) = (lower(first), upper(end));
        let mut hours: BTreeMap<String, Minute> = BTreeMap::new();
        {
            let mut q = tx.prepare_cached(if hi.is_some() {
                "SELECT server_id, body FROM rollups
                 WHERE minute = ?1 AND server_id >= ?2 AND server_id < ?3"
            } else {
                "SELECT server_id, body FROM rollups WHERE minute = ?1 AND server_id >= ?2"
            })?;
            for minute in (hour..hour + HOUR_US).step_by(MINUTE_US as usize) {
                let mut rows = match hi {
                    Some(hi) => q.query(params![minute, lo, hi])?,
                    None => q.query(params![minute, lo])?,
                };
                while let Some(r) = rows.next()? {
                    let server_id = r.get_ref(0)?.as_str()?;
                    add(
                        &mut hours,
                        server_id,
                        hour,
                        minute,
                        r.get_ref(1)?.as_blob()?,
                    );
                }
            }
        }
        write(&tx, &hours)?;
        let since = self.since.map(|s| s.unwrap_or(hour));
        for (name, (from, now)) in [LOAD_FROM, STATEMENTS_FROM]
            .iter()
            .zip(self.since.iter().zip(since))
        {
            if from.is_none() {
                tx.execute(
                    "INSERT OR REPLACE INTO kept (name, value) VALUES (?1, ?2)",
                    params![name, now],
                )?;
            }
        }
        let done = hi.is_none();
        if done {
            note_built(&tx, from, hour + HOUR_US)?;
        }
        tx.commit()?;
        self.since = since.map(Some);
        // As many as the budget allows at this step's pace, the next time,
        // and no more than twice as many (a step cut short by the budget
        // stops within a batch of it anyway).
        let took = started.elapsed().max(Duration::from_micros(100));
        let n = end - first;
        let fit = n as f64 * STEP_BUDGET.as_secs_f64() / took.as_secs_f64();
        self.pace = Some((fit as usize).clamp(1, (2 * n).clamp(1, MOST_SERVERS)));
        if done {
            debug!(
                hour,
                servers = servers.len(),
                "Added each server's rollups of an hour up."
            );
            self.building = None;
            self.built = Some((from, hour + HOUR_US));
        } else if let Some((_, _, next)) = &mut self.building {
            *next = end;
        }
        Ok(true)
    }

    /// Where a store with no hours built yet (`kept` says none, as read at
    /// open) starts: from the first stored minute's hour (no more than
    /// [`BACKFILL`] before `now`'s), none built yet. None while no minute
    /// is stored.
    fn start(&self, db: &Connection, now: Micros) -> rusqlite::Result<Option<(Micros, Micros)>> {
        Ok(minutes_kept(db)?.map(|(first, _)| {
            let earliest = now - now.rem_euclid(HOUR_US) - BACKFILL;
            let from = (first - first.rem_euclid(HOUR_US)).max(earliest);
            (from, from)
        }))
    }
}

/// Adds the stored minute `body` at `minute` of `server_id` to its hour.
fn add(
    hours: &mut BTreeMap<String, Minute>,
    server_id: &str,
    hour: Micros,
    minute: Micros,
    body: &[u8],
) {
    let Some(m) = super::rollup(server_id, minute, body) else {
        return;
    };
    match hours.get_mut(server_id) {
        Some(h) => h.absorb(&m),
        None => {
            let mut h = Minute {
                start: hour,
                ..Minute::default()
            };
            h.absorb(&m);
            hours.insert(server_id.to_owned(), h);
        }
    }
}

fn write(tx: &Transaction<'_>, hours: &BTreeMap<String, Minute>) -> rusqlite::Result<()> {
    let mut put = tx.prepare_cached(
        "INSERT OR REPLACE INTO rollup_hours (hour, server_id, body) VALUES (?1, ?2, ?3)",
    )?;
    for (server_id, h) in hours {
        put.execute(params![h.start, server_id, h.encode()])?;
    }
    Ok(())
}

/// The servers with minutes of load in the hour at `hour` whose names lie
/// in `[lo, hi)` (None: no end), found by their totals' index by hour.
fn with_load(
    tx: &Transaction<'_>,
    hour: Micros,
    lo: &str,
    hi: Option<&str>,
) -> rusqlite::Result<Vec<String>> {
    let mut q = tx.prepare_cached(if hi.is_some() {
        "SELECT server_id FROM load_hours WHERE hour = ?1 AND server_id >= ?2 AND server_id < ?3"
    } else {
        "SELECT server_id FROM load_hours WHERE hour = ?1 AND server_id >= ?2"
    })?;
    match hi {
        Some(hi) => q.query_map(params![hour, lo, hi], |r| r.get(0))?.collect(),
        None => q.query_map(params![hour, lo], |r| r.get(0))?.collect(),
    }
}

/// Builds the hours of load at `hour` of `servers` again from their
/// minutes: a row of `load_tuple_hours` each, none for a server without
/// samples in it.
fn build_load(tx: &Transaction<'_>, servers: &[String], hour: Micros) -> rusqlite::Result<()> {
    if servers.is_empty() {
        return Ok(());
    }
    let mut hours: std::collections::HashMap<String, TupleHour> = Default::default();
    super::sqlite::each_load(
        tx,
        Some(servers),
        hour,
        hour + HOUR_US,
        Wanted::Hour,
        None,
        None,
        |server_id, m| match hours.get_mut(server_id) {
            Some(h) => h.add(&m),
            None => {
                let mut h = TupleHour::holding(hour);
                h.add(&m);
                hours.insert(server_id.to_owned(), h);
            }
        },
    )?;
    let bodies = hours
        .into_iter()
        .filter(|(_, h)| h.samples() > 0)
        .map(|(id, h)| (id, h.load().encode()))
        .collect();
    put_rows(tx, "load_tuple_hours", servers, hour, bodies)
}

/// Writes `bodies` as the rows of `table` at `hour` of their servers, and
/// deletes the row of each of `servers` without one.
fn put_rows(
    tx: &Transaction<'_>,
    table: &str,
    servers: &[String],
    hour: Micros,
    mut bodies: std::collections::HashMap<String, Vec<u8>>,
) -> rusqlite::Result<()> {
    let mut put = tx.prepare_cached(&format!(
        "INSERT INTO {table} (server_id, hour, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (server_id, hour) DO UPDATE SET body = excluded.body"
    ))?;
    let mut gone = tx.prepare_cached(&format!(
        "DELETE FROM {table} WHERE server_id = ?1 AND hour = ?2"
    ))?;
    for server_id in servers {
        match bodies.remove(server_id) {
            Some(body) => put.execute(params![server_id, hour, body])?,
            None => gone.execute(params![server_id, hour])?,
        };
    }
    Ok(())
}

/// Builds again the hours of statements at `hour` of `servers` from their
/// intervals: a row of `statement_hours` each, the sum of its intervals
/// (every statement kept, so that it answers as they do), none for a
/// server without one in it.
fn build_statements(
    tx: &Transaction<'_>,
    servers: &[String],
    hour: Micros,
) -> rusqlite::Result<()> {
    if servers.is_empty() {
        return Ok(());
    }
    let mut hours: std::collections::HashMap<String, Read> = Default::default();
    super::sqlite::each_statements(
        tx,
        Some(servers),
        hour,
        hour + HOUR_US,
        None,
        None,
        |server_id, _, read| hours.entry(server_id.to_owned()).or_default().absorb(&read),
    )?;
    let bodies = hours
        .into_iter()
        .map(|(id, read)| (id, read.encode()))
        .collect();
    put_rows(tx, "statement_hours", servers, hour, bodies)
}

/// The tables of late marks: the hours a minute (of rollups or load) was
/// written into after they were built, whose rollups, load and statements
/// are built again; and those only a statement interval was, whose
/// statements alone are (an agent that reads pg_stat_statements every few
/// minutes closes an hour's last interval after the hour is built, every
/// hour: that leaves its hours of rollups and load alone).
pub(super) const MINUTES_LATE: &str = "rollup_hours_late";
pub(super) const INTERVALS_LATE: &str = "statement_hours_late";

/// Marks the hours of `late` (hour, server) in `marks` ([`MINUTES_LATE`],
/// [`INTERVALS_LATE`]), written into at `now`, to be built again.
pub(super) fn late(
    tx: &Transaction<'_>,
    marks: &str,
    late: impl IntoIterator<Item = (Micros, String)>,
    now: Micros,
) -> rusqlite::Result<()> {
    let mut mark = tx.prepare_cached(&format!(
        "INSERT INTO {marks} (hour, server_id, written) VALUES (?1, ?2, ?3)
         ON CONFLICT (hour, server_id) DO UPDATE SET written = excluded.written"
    ))?;
    for (hour, server_id) in late {
        mark.execute(params![hour, server_id, now])?;
    }
    Ok(())
}

/// The servers whose hours in `[first, last)` are marked late in `marks`
/// ([`MINUTES_LATE`], [`INTERVALS_LATE`]), by hour.
pub(super) fn late_in(
    db: &Connection,
    marks: &str,
    first: Micros,
    last: Micros,
) -> rusqlite::Result<BTreeMap<Micros, Vec<String>>> {
    let mut out: BTreeMap<Micros, Vec<String>> = BTreeMap::new();
    let mut q = db.prepare_cached(&format!(
        "SELECT hour, server_id FROM {marks} WHERE hour >= ?1 AND hour < ?2"
    ))?;
    let mut rows = q.query(params![first, last])?;
    while let Some(r) = rows.next()? {
        out.entry(r.get(0)?).or_default().push(r.get(1)?);
    }
    Ok(out)
}

/// Builds again the hours of `late` (hour, server) marked in `marks`, each
/// from its server's minutes of it, found by their key (of
/// [`INTERVALS_LATE`], its statement intervals alone), and unmarks them:
/// one at least, and no more once `by` has passed (the rest stay marked).
fn rebuild(
    tx: &Transaction<'_>,
    marks: &str,
    late: impl IntoIterator<Item = (Micros, String)>,
    by: Instant,
) -> rusqlite::Result<()> {
    let mut done = tx.prepare_cached(&format!(
        "DELETE FROM {marks} WHERE hour = ?1 AND server_id = ?2"
    ))?;
    let mut hours = BTreeMap::new();
    for (hour, server_id) in late {
        let server = std::slice::from_ref(&server_id);
        if marks == MINUTES_LATE {
            // Its statements too: a mark of its intervals is spent.
            tx.prepare_cached(&format!(
                "DELETE FROM {INTERVALS_LATE} WHERE hour = ?1 AND server_id = ?2"
            ))?
            .execute(params![hour, server_id])?;
            hours.clear();
            minutes_of_hour(tx, &server_id, hour, |minute, body| {
                add(&mut hours, &server_id, hour, minute, body)
            })?;
            write(tx, &hours)?;
            build_load(tx, server, hour)?;
        }
        build_statements(tx, server, hour)?;
        done.execute(params![hour, server_id])?;
        if Instant::now() >= by {
            break;
        }
    }
    Ok(())
}
