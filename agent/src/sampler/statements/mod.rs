//! pg_stat_statements: what each statement did since the previous read, at
//! its own interval (`--statements-interval`), on the target's connection.
//!
//! Once per connection (and after the server restarts) the agent looks for
//! the extension in the connected database. Each read then runs one
//! statement ([`sql::Extension::counters_sql`]): the counters, without
//! texts, of the entries that ran since the previous read (told by a hash of
//! each entry's key and calls; every entry at the first read and now and
//! then), dbid and userid as oids (named from a cache, refreshed when an
//! oid is new). [`delta::Tracker`] turns the counters into increments; the
//! top [`MAX_STATEMENTS`] by execution time are sent, the rest summed. A
//! queryid's text is read only the first time the agent sends it (a second
//! statement, for those queryids alone), masked and fingerprinted as
//! pg_stat_activity's texts are, so that load and statistics join.
//!
//! Without the extension (or its library), the agent says so once, names
//! the fix, and looks again every [`RECHECK`]; the target stays up. A read
//! that fails is logged and skipped: the sample goes on without it.

use std::time::Duration;

use tokio_postgres::error::SqlState;

pub mod delta;
mod reader;
pub mod sql;
mod texts;

pub use reader::Statements;

/// The most statements a sample lists; the others are summed into `other`.
pub const MAX_STATEMENTS: usize = 500;

/// How often the agent looks again for an extension it did not find.
pub const RECHECK: Duration = Duration::from_secs(600);

/// The most bytes of query texts one sample carries; texts past it wait for
/// a later read. With the statements' counters, a sample stays well under
/// the room a batch has for one snapshot (see `pack`).
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// The most bytes of one text, whatever track_activity_query_size says
/// (its own maximum is 1 MiB).
const MAX_ONE_TEXT: usize = 64 << 10;

/// Why the statistics cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Missing {
    /// The extension is not in the connected database.
    NotInstalled { database: String },
    /// It is, but its library is not loaded.
    NotLoaded,
    /// Its version is one the agent cannot read.
    TooOld { version: String },
}

impl Missing {
    /// Why, in a few words.
    fn reason(&self) -> String {
        match self {
            Missing::NotInstalled { database } => {
                format!("pg_stat_statements is not installed in database {database:?}")
            }
            Missing::NotLoaded => {
                "pg_stat_statements must be loaded via shared_preload_libraries".to_owned()
            }
            Missing::TooOld { version } => format!(
                "pg_stat_statements {version} is older than 1.4, the oldest the agent reads"
            ),
        }
    }

    /// What makes it readable.
    fn fix(&self) -> String {
        match self {
            Missing::NotInstalled { database } => format!(
                "shared_preload_libraries = 'pg_stat_statements' in postgresql.conf (and a restart), then CREATE EXTENSION pg_stat_statements in database {database:?}"
            ),
            Missing::NotLoaded => "shared_preload_libraries = 'pg_stat_statements' in postgresql.conf, and a restart (CREATE EXTENSION pg_stat_statements is done)".to_owned(),
            Missing::TooOld { .. } => "ALTER EXTENSION pg_stat_statements UPDATE".to_owned(),
        }
    }

    /// Both, for `--once`.
    fn explain(&self) -> String {
        format!("{}: {}", self.reason(), self.fix())
    }
}

/// Why a read failed.
enum ReadError {
    /// The extension is not there (or not loaded): not an error.
    Missing(Missing),
    Other(String),
}

/// A failed statement: the library not loaded, or the extension dropped
/// from `database` since it was found, is a missing extension; the rest are
/// errors.
fn read_error(e: &tokio_postgres::Error, database: &str) -> ReadError {
    let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
    match e.code() {
        _ if message.contains("shared_preload_libraries") => ReadError::Missing(Missing::NotLoaded),
        Some(c) if *c == SqlState::UNDEFINED_FUNCTION || *c == SqlState::UNDEFINED_TABLE => {
            ReadError::Missing(Missing::NotInstalled {
                database: database.to_owned(),
            })
        }
        _ => ReadError::Other(chain(e)),
    }
}

fn chain(e: &tokio_postgres::Error) -> String {
    pgfleet_common::error::chain(e)
}

#[cfg(test)]
mod tests;
