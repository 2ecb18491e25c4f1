//! The statements the agent runs to read pg_stat_statements, written for the
//! extension's version as installed (its columns follow the version of the
//! extension, which may lag the server's after an upgrade), and the reading
//! of their rows.

use tokio_postgres::Row;

use super::delta::{Counters, Entry, Info, Key};

/// Where the extension is, and what it is; None when it is not installed in
/// the connected database. Also the database (for a message), and
/// track_activity_query_size (query texts are cut as pg_stat_activity cuts
/// them).
pub const DETECT_SQL: &str = "\
SELECT current_database()::text,
       (SELECT setting::int FROM pg_settings WHERE name = 'track_activity_query_size'),
       (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'),
       (SELECT extnamespace::regnamespace::text FROM pg_extension
         WHERE extname = 'pg_stat_statements')";

/// The extension as installed in the connected database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// Its schema, as SQL writes it (quoted when it must be).
    pub schema: String,
    /// Its version: (1, 10).
    pub version: (u32, u32),
}

impl Extension {
    /// From `extversion` ("1.10") and the schema; None for a version the
    /// agent cannot read (before 1.4, which PostgreSQL 9.6 shipped).
    pub fn new(schema: String, extversion: &str) -> Option<Extension> {
        let (major, minor) = extversion.trim().split_once('.')?;
        let version = (major.parse().ok()?, minor.parse().ok()?);
        (version >= (1, 4)).then_some(Extension { schema, version })
    }

    /// pg_stat_statements_info (dealloc, stats_reset) and `toplevel`: 1.9.
    fn has_info(&self) -> bool {
        self.version >= (1, 9)
    }

    /// The read of the entries' counters, without the texts (which
    /// pg_stat_statements would read from its file at each read): entries
    /// called at least once, top-level ones (1.9 and later: a statement run
    /// inside a function is counted in its caller's time already), and that
    /// the agent's role may see (others have no queryid).
    ///
    /// Each entry comes with a hash of its key and calls, and `$1` lists the
    /// hashes of the entries as the agent knows them: an entry whose hash
    /// is among them has not run since, and is left out (an empty `$1`
    /// reads every entry). Most entries do not run between two reads, and
    /// sending each one's counters is most of what a read costs beyond
    /// pg_stat_statements' own scan. Nothing is joined either: dbid and
    /// userid come as oids, which the agent names from a cache (see
    /// `sampler::names`).
    ///
    /// With pg_stat_statements_info, its one row comes first, told by a NULL
    /// queryid: `calls` holds dealloc, `rows` stats_reset in microseconds
    /// since the epoch.
    pub fn counters_sql(&self) -> String {
        let schema = &self.schema;
        let (exec_time, wal_bytes) = if self.version >= (1, 8) {
            ("total_exec_time", "wal_bytes::int8")
        } else {
            ("total_time", "0::int8")
        };
        let (info, toplevel) = if self.has_info() {
            (
                format!(
                    "SELECT NULL::oid, NULL::oid, NULL::int8, dealloc, NULL::float8,
       (extract(epoch FROM stats_reset) * 1000000)::int8,
       NULL::int8, NULL::int8, NULL::int8, NULL::int8, NULL::int8, NULL::int8, NULL::int8,
       NULL::int8
  FROM {schema}.pg_stat_statements_info
UNION ALL
"
                ),
                "toplevel AND ",
            )
        } else {
            (String::new(), "")
        };
        format!(
            "{info}SELECT userid, dbid, queryid, calls, {exec_time}, rows,
       shared_blks_hit, shared_blks_read, shared_blks_dirtied, shared_blks_written,
       temp_blks_read, temp_blks_written, {wal_bytes},
       h
  FROM (SELECT *, hashint8extended(calls, queryid # (dbid::int8 << 32 | userid::int8)) AS h
          FROM {schema}.pg_stat_statements(false)
         WHERE {toplevel}calls > 0 AND queryid IS NOT NULL) s
 WHERE NOT EXISTS (SELECT FROM unnest($1::int8[]) known(h) WHERE known.h = s.h)"
        )
    }

    /// The texts of the queryids in `$1`, cut to `$2` characters (the agent
    /// cuts them to bytes).
    pub fn texts_sql(&self) -> String {
        let toplevel = if self.has_info() { "toplevel AND " } else { "" };
        format!(
            "SELECT queryid, left(query, $2) FROM {}.pg_stat_statements(true)
 WHERE {toplevel}queryid = ANY($1)",
            self.schema
        )
    }
}

/// What one row of [`Extension::counters_sql`] holds.
pub enum CounterRow {
    /// An entry.
    Entry(Entry),
    /// pg_stat_statements_info.
    Info(Info),
}

/// Reads one row of [`Extension::counters_sql`].
pub fn counter_row(row: &Row) -> Result<CounterRow, tokio_postgres::Error> {
    let n = |i: usize| -> Result<u64, tokio_postgres::Error> {
        Ok(u64::try_from(row.try_get::<_, Option<i64>>(i)?.unwrap_or(0)).unwrap_or(0))
    };
    let Some(query_id) = row.try_get::<_, Option<i64>>(2)? else {
        return Ok(CounterRow::Info(Info {
            dealloc: n(3)?,
            stats_reset_us: row.try_get::<_, Option<i64>>(5)?.unwrap_or(0),
        }));
    };
    let key = Key {
        query_id,
        dbid: row.try_get::<_, Option<u32>>(1)?.unwrap_or(0),
        userid: row.try_get::<_, Option<u32>>(0)?.unwrap_or(0),
    };
    Ok(CounterRow::Entry(Entry {
        key,
        totals: Counters {
            calls: n(3)?,
            exec_time_ms: row.try_get::<_, Option<f64>>(4)?.unwrap_or(0.0).max(0.0),
            rows: n(5)?,
            blocks: [n(6)?, n(7)?, n(8)?, n(9)?, n(10)?, n(11)?],
            wal_bytes: n(12)?,
        },
        hash: row.try_get::<_, Option<i64>>(13)?.unwrap_or(0),
    }))
}

/// The extension as found, and the statements written for it.
#[derive(Debug)]
pub(super) struct Ready {
    /// Its schema and version.
    pub(super) extension: Extension,
    /// The connected database, where it was found.
    pub(super) database: String,
    /// See [`Extension::counters_sql`].
    pub(super) counters_sql: String,
    /// See [`Extension::texts_sql`].
    pub(super) texts_sql: String,
    /// The longest text, in bytes (track_activity_query_size less its
    /// terminating byte, as pg_stat_activity cuts texts).
    pub(super) text_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_follows_the_extensions_version() {
        let v = |s: &str| Extension::new("public".into(), s).unwrap();
        let v17 = v("1.11").counters_sql();
        assert!(v17.starts_with("SELECT NULL::oid"), "{v17}");
        assert!(v17.contains("public.pg_stat_statements_info"), "{v17}");
        assert!(v17.contains("total_exec_time") && v17.contains("wal_bytes::int8"));
        assert!(v17.contains("WHERE toplevel AND calls > 0"), "{v17}");
        assert!(v17.contains("unnest($1::int8[])"), "{v17}");
        assert!(v17.contains("public.pg_stat_statements(false)"), "{v17}");
        let v13 = v("1.8").counters_sql();
        assert!(v13.starts_with("SELECT userid"), "{v13}");
        assert!(v13.contains("total_exec_time") && !v13.contains("toplevel"));
        let v12 = v("1.7").counters_sql();
        assert!(
            v12.contains("total_time,") && v12.contains("0::int8,\n"),
            "{v12}"
        );
        assert!(
            v("1.10")
                .texts_sql()
                .contains("toplevel AND queryid = ANY($1)")
        );
        assert!(!v("1.7").texts_sql().contains("toplevel"));
        assert_eq!(
            Extension::new("\"My Schema\"".into(), "1.10")
                .unwrap()
                .counters_sql()
                .matches("\"My Schema\".pg_stat_statements")
                .count(),
            2
        );
        assert!(Extension::new("public".into(), "1.3").is_none());
        assert!(Extension::new("public".into(), "x").is_none());
        assert_eq!(v("1.10").version, (1, 10), "10 is after 9");
    }
}
