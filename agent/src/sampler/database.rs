//! Server facts and pg_stat_database counters.

use std::collections::HashMap;

use pgfleet_proto::time::system_time_to_micros;
use pgfleet_proto::v1;

use tokio_postgres::Row;

use super::array::{PgArray, int8};
use crate::config::Databases;

/// Settings and state that every role may read; cheap enough for every sample.
/// `reserved_connections` exists from PostgreSQL 16 (missing_ok gives NULL
/// before). The sample reads them within the activity statement; alone (see
/// [`FACTS_SQL`]) only to learn the server's version first.
macro_rules! facts_columns {
    () => {
        "current_setting('server_version'),
       current_setting('server_version_num')::int,
       pg_is_in_recovery(),
       pg_postmaster_start_time(),
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int"
    };
}
pub(super) use facts_columns;

/// How many columns `facts_columns!` reads.
pub const FACTS_COLUMNS: usize = 7;

/// The facts alone.
const FACTS_SQL: &str = concat!("SELECT ", facts_columns!());

/// The cluster's identity. It only changes with the server's start time, so it
/// is read again only then. pg_control_system() is granted to pg_monitor.
const SYSTEM_IDENTIFIER_SQL: &str = "SELECT system_identifier::text FROM pg_control_system()";

/// A common table expression `d` of every counter of pg_stat_database that the
/// agent sends, as an array per database, for databases that allow connections
/// (template0 does not). `$3` is NULL for every database, or the names to send.
/// `sessions` (sessions established) exists from PostgreSQL 14; read through
/// the row as JSON, it is 0 before.
pub const DATABASES_CTE: &str = "d AS (
  SELECT d.datname,
         ARRAY[d.xact_commit, d.xact_rollback, d.blks_read, d.blks_hit,
               d.tup_returned, d.tup_fetched, d.tup_inserted, d.tup_updated, d.tup_deleted,
               d.temp_files, d.temp_bytes, d.deadlocks, d.conflicts,
               coalesce((to_jsonb(d) ->> 'sessions')::int8, 0)] AS counters
    FROM pg_stat_database d
    JOIN pg_database db ON db.oid = d.datid
   WHERE db.datallowconn
     AND ($3::text[] IS NULL OR d.datname = ANY($3)))";

/// The two columns that read `d`: the names, and their counters (a
/// two-dimensional array), in the same order.
pub const DATABASES_COLUMNS: &str = "\
(SELECT array_agg(datname::text ORDER BY datname) FROM d),
       (SELECT array_agg(counters ORDER BY datname) FROM d)";

/// How many counters `DATABASES_CTE` reads per database.
const COUNTERS: usize = 14;

/// One database's counters as read.
pub type CounterRow = (String, [i64; COUNTERS]);

/// `$3` of the statement that reads `DATABASES_CTE`.
pub fn databases_param(which: &Databases) -> Option<&[String]> {
    match which {
        Databases::All => None,
        Databases::Only(names) => Some(names),
    }
}

/// Reads the server's facts alone (to learn its version before the first
/// sample). `identity` caches the system identifier together with the start
/// time it was read at.
pub async fn sample_facts(
    client: &deadpool_postgres::Client,
    identity: &mut Option<(i64, u64)>,
) -> Result<v1::ServerFacts, tokio_postgres::Error> {
    let statement = client.prepare_cached(FACTS_SQL).await?;
    let row = client.query_one(&statement, &[]).await?;
    read_facts(client, &row, 0, identity).await
}

/// The facts in `row`, from column `at` on (as `facts_columns!` reads them).
pub async fn read_facts(
    client: &deadpool_postgres::Client,
    row: &Row,
    at: usize,
    identity: &mut Option<(i64, u64)>,
) -> Result<v1::ServerFacts, tokio_postgres::Error> {
    let count = |i: usize| -> Result<u32, tokio_postgres::Error> {
        Ok(u32::try_from(row.try_get::<_, i32>(at + i)?).unwrap_or(0))
    };
    let start_time_us = system_time_to_micros(row.try_get(at + 3)?);
    let system_identifier = match *identity {
        Some((start, id)) if start == start_time_us => id,
        _ => {
            let statement = client.prepare_cached(SYSTEM_IDENTIFIER_SQL).await?;
            let id: String = client.query_one(&statement, &[]).await?.try_get(0)?;
            let id = id.parse().unwrap_or(0);
            *identity = Some((start_time_us, id));
            id
        }
    };
    Ok(v1::ServerFacts {
        version: row.try_get(at)?,
        version_num: count(1)?,
        system_identifier,
        in_recovery: row.try_get(at + 2)?,
        start_time_us,
        max_connections: count(4)?,
        superuser_reserved_connections: count(5)?,
        reserved_connections: count(6)?,
        // The sampler knows the host, not the server: it fills this in.
        cpus: 0,
    })
}

/// The counters in `row`, from column `at` on (as `DATABASES_COLUMNS` reads
/// them).
pub fn read_counters(row: &Row, at: usize) -> Result<Vec<CounterRow>, tokio_postgres::Error> {
    let names = row
        .try_get::<_, Option<PgArray>>(at)?
        .unwrap_or(PgArray::EMPTY);
    let counters = row
        .try_get::<_, Option<PgArray>>(at + 1)?
        .unwrap_or(PgArray::EMPTY);
    let mut counters = counters.iter().map(int8);
    Ok(names
        .iter()
        .map(|name| {
            let mut values = [0i64; COUNTERS];
            for v in &mut values {
                *v = counters.next().unwrap_or(0);
            }
            (String::from_utf8_lossy(name).into_owned(), values)
        })
        .collect())
}

/// Turns successive readings into increments.
#[derive(Debug, Default)]
pub struct CounterTracker {
    previous: HashMap<String, [i64; COUNTERS]>,
}

impl CounterTracker {
    /// The increments since the previous reading. A database seen for the first
    /// time sets its baseline and gets zeros. A counter that went down was reset
    /// (pg_stat_reset), and then its whole value is the increment. Databases
    /// that are gone are forgotten.
    pub fn update(&mut self, rows: &[CounterRow]) -> Vec<v1::DatabaseCounters> {
        let mut next = HashMap::with_capacity(rows.len());
        let increments = rows
            .iter()
            .map(|(name, now)| {
                let mut inc = [0u64; COUNTERS];
                if let Some(before) = self.previous.get(name) {
                    let reset = now.iter().zip(before).any(|(n, b)| n < b);
                    for (i, d) in inc.iter_mut().enumerate() {
                        let delta = if reset { now[i] } else { now[i] - before[i] };
                        *d = u64::try_from(delta).unwrap_or(0);
                    }
                }
                next.insert(name.clone(), *now);
                counters(name, inc)
            })
            .collect();
        self.previous = next;
        increments
    }

    /// The last readings, as totals (for `--once`).
    pub fn totals(&self) -> Vec<v1::DatabaseCounters> {
        let mut totals: Vec<_> = self
            .previous
            .iter()
            .map(|(name, v)| counters(name, v.map(|x| u64::try_from(x).unwrap_or(0))))
            .collect();
        totals.sort_by(|a, b| a.database.cmp(&b.database));
        totals
    }
}

fn counters(name: &str, v: [u64; COUNTERS]) -> v1::DatabaseCounters {
    v1::DatabaseCounters {
        database: name.to_owned(),
        xact_commit: v[0],
        xact_rollback: v[1],
        blks_read: v[2],
        blks_hit: v[3],
        tup_returned: v[4],
        tup_fetched: v[5],
        tup_inserted: v[6],
        tup_updated: v[7],
        tup_deleted: v[8],
        temp_files: v[9],
        temp_bytes: v[10],
        deadlocks: v[11],
        conflicts: v[12],
        sessions: v[13],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, commits: i64, temp_bytes: i64) -> CounterRow {
        let mut v = [0; COUNTERS];
        v[0] = commits;
        v[10] = temp_bytes;
        (name.to_owned(), v)
    }

    #[test]
    fn increments_start_from_a_baseline_and_survive_resets() {
        let mut t = CounterTracker::default();
        let first = t.update(&[row("orders", 100, 5_000)]);
        assert_eq!((first[0].xact_commit, first[0].temp_bytes), (0, 0));
        let second = t.update(&[row("orders", 130, 5_000), row("new", 7, 0)]);
        assert_eq!(second[0].xact_commit, 30);
        assert_eq!(
            second[1].xact_commit, 0,
            "a new database starts at its baseline"
        );
        // pg_stat_reset(): counters start again from zero.
        let third = t.update(&[row("orders", 4, 0), row("new", 9, 0)]);
        assert_eq!(third[0].xact_commit, 4);
        assert_eq!(third[1].xact_commit, 2);
        assert_eq!(t.totals()[1].xact_commit, 4);
        // A dropped database is forgotten; if it comes back it starts afresh.
        t.update(&[row("orders", 5, 0)]);
        let back = t.update(&[row("orders", 6, 0), row("new", 50, 0)]);
        assert_eq!(back[1].xact_commit, 0);
    }
}
