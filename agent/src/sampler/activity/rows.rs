//! Reading one row of the activity statement: timestamps in PostgreSQL's
//! binary form, strings shared with the session before, and a changed
//! session's details.

use std::sync::Arc;

use pgfleet_proto::model::{Session, SessionState};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Type};

use super::super::query_text::{self, QueryText};
use super::{INSUFFICIENT_PRIVILEGE, Interner, Known};

/// A timestamptz as microseconds since the Unix epoch, read straight from
/// PostgreSQL's binary form (microseconds since 2000-01-01), with no detour
/// through `SystemTime`.
pub(super) struct PgMicros(i64);

/// 2000-01-01 in microseconds since the Unix epoch.
pub(super) const PG_EPOCH_US: i64 = 946_684_800_000_000;

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
pub(super) fn micros(row: &Row, i: usize) -> Result<Option<i64>, tokio_postgres::Error> {
    Ok(row.try_get::<_, Option<PgMicros>>(i)?.map(|m| m.0))
}

/// `now`, shared with `before` when it has the same text.
pub(super) fn shared(before: Option<&Arc<str>>, now: &str) -> Arc<str> {
    match before {
        Some(b) if b.as_ref() == now => b.clone(),
        _ => Arc::from(now),
    }
}

/// Whether a row of details says nothing new about a known session: most
/// details are read again only because their change fell within the margin.
/// Checks what a change moves (timestamps, state, wait, blockers, query),
/// building nothing.
pub(super) fn nothing_new(row: &Row, k: &Known) -> Result<bool, tokio_postgres::Error> {
    let s = &k.session;
    let state = match s.state {
        SessionState::NotVisible => SessionState::NotVisible,
        _ => SessionState::from_pg(row.try_get(11)?),
    };
    Ok(micros(row, 14)? == s.state_change_us
        && micros(row, 13)? == s.query_start_us
        && micros(row, 12)? == s.xact_start_us
        && state == s.state
        && row.try_get::<_, Option<bool>>(2)?.unwrap_or(false) == k.own
        && row.try_get::<_, Option<&str>>(3)?.unwrap_or("") == &*s.wait_event_type
        && row.try_get::<_, Option<&str>>(4)?.unwrap_or("") == &*s.wait_event
        && row.try_get::<_, Option<Vec<i32>>>(5)?.unwrap_or_default() == s.blocked_by
        && row
            .try_get::<_, Option<&str>>(15)?
            .is_none_or(|q| q == &*k.raw_query))
}

/// One row of details as a session, taking what did not change from `before`.
pub(super) fn details_of(
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
        pid,
        own,
        wait: None,
        session,
        raw_query: raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
