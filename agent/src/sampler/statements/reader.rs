//! The reader of one target's pg_stat_statements: when to read, the
//! extension as found, and each read from the rows to the sample.

use std::time::Duration;

use pgfleet_proto::v1;
use tracing::{info, warn};

use super::super::names::Names;
use super::delta::{self, Counters, Increments, Read, Tracker};
use super::sql::{self, CounterRow, Extension, Ready};
use super::texts::Texts;
use super::{MAX_ONE_TEXT, MAX_STATEMENTS, Missing, RECHECK, ReadError, chain, read_error};
use crate::sampler::query_text::QueryText;

/// What the agent knows of the extension.
#[derive(Debug)]
pub(super) enum State {
    /// Not looked for yet.
    Unknown,
    /// Found (on this connection, when `Statements::checked`).
    Ready(Ready),
    /// Not readable; looked for again at `retry_at_us`.
    Missing { retry_at_us: i64 },
}

/// pg_stat_statements of one target: its schedule, the previous read, and
/// the texts already sent.
pub struct Statements {
    server_id: String,
    every: Option<Duration>,
    timeout: Duration,
    pub(super) state: State,
    /// Whether the extension was looked for on the current connection.
    checked: bool,
    /// The server's start time, as last seen.
    started_us: Option<i64>,
    /// When the next read is due, on a grid of `every` from the first.
    pub(super) next_at_us: Option<i64>,
    tracker: Tracker,
    /// The texts sent.
    pub(super) texts: Texts,
    names: Names,
    /// The increments of the last sample, until the next read: if that
    /// sample does not reach the collector, they go with the next.
    last: Option<Increments>,
    carry: Option<Increments>,
    /// What was last said about a missing extension or a failed read, so
    /// that each is said once.
    told_missing: Option<Missing>,
    told_error: Option<String>,
}

impl Statements {
    /// Reads every `every` (None: never), with texts as `mode` says, each
    /// read within `timeout` (the statement_timeout) and a second.
    pub fn new(
        server_id: &str,
        every: Option<Duration>,
        mode: QueryText,
        timeout: Duration,
    ) -> Self {
        Statements {
            server_id: server_id.to_owned(),
            every,
            timeout,
            state: State::Unknown,
            checked: false,
            started_us: None,
            next_at_us: None,
            tracker: Tracker::default(),
            texts: Texts::new(mode),
            names: Names::default(),
            last: None,
            carry: None,
            told_missing: None,
            told_error: None,
        }
    }

    /// Whether a sample taken at `at_us` should read the statistics.
    pub fn due(&self, at_us: i64) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        match (&self.state, self.next_at_us) {
            (State::Missing { retry_at_us }, _) => at_us >= *retry_at_us,
            (_, None) => true,
            // A tick a little early is on time: reads keep to their grid.
            (_, Some(next)) => at_us + slack_us(every) >= next,
        }
    }

    /// The connection was lost: look for the extension again on the next
    /// (the previous read stays the baseline: the counters are the server's).
    pub fn connection_lost(&mut self) {
        self.checked = false;
    }

    /// The server's start time, at each sample: a server (re)started since
    /// the last may have loaded the library (shared_preload_libraries takes
    /// a restart), so the extension is looked for again at once.
    pub fn server_started(&mut self, start_time_us: i64) {
        if self.started_us.replace(start_time_us) != Some(start_time_us) {
            self.checked = false;
            if matches!(self.state, State::Missing { .. }) {
                self.state = State::Unknown;
            }
        }
    }

    /// The last sample did not reach the collector: its increments go with
    /// the next, and its texts are sent again.
    pub fn not_delivered(&mut self, sample: &v1::StatementsSample) {
        for s in &sample.statements {
            if !s.query.is_empty() {
                self.texts.forget(s.query_id);
            }
        }
        self.carry = self.last.take();
    }

    /// Whether the next read lists every entry, rather than those that
    /// changed (see [`delta::Tracker::next_read`]); for the benchmark.
    pub fn next_read_is_whole(&self) -> bool {
        self.tracker.next_read().is_none()
    }

    /// What `--once` says of the statistics.
    pub fn status(&self) -> String {
        match &self.state {
            _ if self.every.is_none() => "off".to_owned(),
            State::Ready(r) => format!(
                "pg_stat_statements {}.{} (schema {}), read every {}",
                r.extension.version.0,
                r.extension.version.1,
                r.extension.schema,
                humantime::format_duration(self.every.unwrap_or_default())
            ),
            State::Missing { .. } => self
                .told_missing
                .as_ref()
                .map_or_else(|| "not available".to_owned(), Missing::explain),
            State::Unknown => "not read yet".to_owned(),
        }
    }

    /// Reads the statistics if due: None when not due, not available, or
    /// when the read failed (said in the log); a sample with no statements
    /// and `since_us` 0 for a first read, which sets the baseline.
    pub async fn read(
        &mut self,
        client: &deadpool_postgres::Client,
        at_us: i64,
    ) -> Option<v1::StatementsSample> {
        if !self.due(at_us) {
            return None;
        }
        let every = self.every?;
        let limit = self.timeout + Duration::from_secs(1);
        let result = match tokio::time::timeout(limit, self.read_now(client, at_us)).await {
            Ok(result) => result,
            Err(_) => Err(ReadError::Other(format!(
                "the read did not finish within {}",
                humantime::format_duration(limit)
            ))),
        };
        self.next_at_us = Some(match self.next_at_us {
            Some(next) if next + micros(every) > at_us => next + micros(every),
            _ => at_us + micros(every),
        });
        match result {
            Ok(sample) => {
                self.told_error = None;
                Some(sample)
            }
            Err(ReadError::Missing(missing)) => {
                self.missing(missing, at_us);
                None
            }
            Err(ReadError::Other(e)) => {
                if self.told_error.as_ref() != Some(&e) {
                    warn!(
                        server.id = %self.server_id,
                        error = %e,
                        retry_in = %humantime::format_duration(every),
                        "Cannot read pg_stat_statements; the samples go on without it."
                    );
                    self.told_error = Some(e);
                }
                None
            }
        }
    }

    async fn read_now(
        &mut self,
        client: &deadpool_postgres::Client,
        at_us: i64,
    ) -> Result<v1::StatementsSample, ReadError> {
        if !self.checked || !matches!(self.state, State::Ready(_)) {
            self.detect(client).await?;
        }
        let State::Ready(ready) = &self.state else {
            return Err(ReadError::Other(
                "pg_stat_statements was not found".to_owned(),
            ));
        };
        let known = self.tracker.next_read();
        let rows = async {
            let statement = client.prepare_cached(&ready.counters_sql).await?;
            let hashes = known.as_deref().unwrap_or_default();
            client.query(&statement, &[&hashes]).await
        }
        .await
        .map_err(|e| read_error(&e, &ready.database))?;
        let mut read = Read {
            at_us,
            whole: known.is_none(),
            entries: Vec::with_capacity(rows.len()),
            info: None,
        };
        for row in &rows {
            match sql::counter_row(row).map_err(|e| ReadError::Other(chain(&e)))? {
                CounterRow::Entry(entry) => read.entries.push(entry),
                CounterRow::Info(info) => read.info = Some(info),
            }
        }
        drop(rows);
        let Some(mut increments) = self.tracker.update(read) else {
            self.carry = None;
            self.last = None;
            return Ok(v1::StatementsSample::default());
        };
        if let Some(earlier) = self.carry.take() {
            increments.absorb(earlier);
        }
        let (top, other) = delta::top(increments.entries.clone(), MAX_STATEMENTS);
        let texts = self.texts.read(client, ready, &top).await?;
        self.names
            .resolve(client, top.iter().map(|(k, _)| (k.dbid, k.userid)))
            .await
            .map_err(|e| ReadError::Other(chain(&e)))?;
        let statements = top
            .iter()
            .map(|(key, c)| v1::StatementDelta {
                query_id: key.query_id,
                database: self.names.database(key.dbid).to_string(),
                user: self.names.role(key.userid).to_string(),
                query: texts.get(&key.query_id).cloned().unwrap_or_default(),
                query_fingerprint: self.texts.fingerprint(key.query_id),
                ..wire_counters(c)
            })
            .collect();
        let sample = v1::StatementsSample {
            since_us: increments.since_us,
            statements,
            other: other.as_ref().map(wire_counters),
            reset: increments.reset,
            deallocated: increments.deallocated,
        };
        self.last = Some(increments);
        Ok(sample)
    }

    /// Looks for the extension on this connection.
    async fn detect(&mut self, client: &deadpool_postgres::Client) -> Result<(), ReadError> {
        let other = |e: tokio_postgres::Error| ReadError::Other(chain(&e));
        let row = client
            .query_one(sql::DETECT_SQL, &[])
            .await
            .map_err(other)?;
        let database: Option<String> = row.try_get(0).map_err(other)?;
        let database = database.unwrap_or_default();
        let track_size: Option<i32> = row.try_get(1).map_err(other)?;
        let version: Option<String> = row.try_get(2).map_err(other)?;
        let schema: Option<String> = row.try_get(3).map_err(other)?;
        let (Some(version), Some(schema)) = (version, schema) else {
            return Err(ReadError::Missing(Missing::NotInstalled { database }));
        };
        let Some(extension) = Extension::new(schema, &version) else {
            return Err(ReadError::Missing(Missing::TooOld { version }));
        };
        let text_bytes = usize::try_from(track_size.unwrap_or(1024))
            .unwrap_or(1024)
            .saturating_sub(1)
            .clamp(1, MAX_ONE_TEXT);
        if self.told_missing.take().is_some() {
            info!(
                server.id = %self.server_id,
                version = %version,
                "pg_stat_statements found; reading it from now on."
            );
        }
        // Another extension (updated, or moved) starts a new baseline.
        if !matches!(&self.state, State::Ready(r) if r.extension == extension) {
            self.tracker.clear();
            self.carry = None;
            self.last = None;
        }
        self.state = State::Ready(Ready {
            counters_sql: extension.counters_sql(),
            texts_sql: extension.texts_sql(),
            extension,
            database,
            text_bytes,
        });
        self.checked = true;
        Ok(())
    }

    /// Says once why the statistics cannot be read, and when to look again.
    pub(super) fn missing(&mut self, missing: Missing, at_us: i64) {
        self.state = State::Missing {
            retry_at_us: at_us + micros(RECHECK),
        };
        // Found again (after a restart), it is read at once.
        self.next_at_us = None;
        self.tracker.clear();
        self.carry = None;
        self.last = None;
        if self.told_missing.as_ref() == Some(&missing) {
            return;
        }
        let (reason, fix) = (missing.reason(), missing.fix());
        let recheck_in = humantime::format_duration(RECHECK);
        match &missing {
            Missing::NotInstalled { .. } => info!(
                server.id = %self.server_id,
                %reason,
                %fix,
                %recheck_in,
                "pg_stat_statements is not available; statement statistics are not read."
            ),
            _ => warn!(
                server.id = %self.server_id,
                %reason,
                %fix,
                %recheck_in,
                "pg_stat_statements cannot be read; statement statistics are not read."
            ),
        }
        self.told_missing = Some(missing);
    }
}

/// Increments as the wire has them (no statement named).
fn wire_counters(c: &Counters) -> v1::StatementDelta {
    v1::StatementDelta {
        calls: c.calls,
        exec_time_ms: c.exec_time_ms,
        rows: c.rows,
        shared_blks_hit: c.blocks[0],
        shared_blks_read: c.blocks[1],
        shared_blks_dirtied: c.blocks[2],
        shared_blks_written: c.blocks[3],
        temp_blks_read: c.blocks[4],
        temp_blks_written: c.blocks[5],
        wal_bytes: c.wal_bytes,
        ..Default::default()
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// How early a tick may be and still read: a quarter of the interval, at
/// most 250 ms.
fn slack_us(every: Duration) -> i64 {
    micros(every / 4).min(250_000)
}
