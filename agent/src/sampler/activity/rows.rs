//! Reading the activity statement's one row: the changed sessions' details,
//! a column each (an array with an element per session), read in place.

use std::sync::Arc;

use pgfleet_proto::model::{ArcStr, Session, SessionState};
use tokio_postgres::Row;

use super::super::array::{self, PgArray};
use super::super::names::Names;
use super::super::query_text::{self, QueryText};
use super::{INSUFFICIENT_PRIVILEGE, Interner, Known};

/// 2000-01-01 in microseconds since the Unix epoch.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// A timestamptz element (PostgreSQL's binary form: microseconds since
/// 2000-01-01) in microseconds since the Unix epoch; None for NULL.
fn micros(element: Option<&[u8]>) -> Option<i64> {
    let raw: [u8; 8] = element?.try_into().ok()?;
    Some(i64::from_be_bytes(raw).saturating_add(PG_EPOCH_US))
}

/// The first column of the details, and how many there are.
pub(super) const FIRST_DETAIL: usize = 2;
pub(super) const DETAIL_COLUMNS: usize = 19;

/// One changed session's details, borrowed from the row.
#[derive(Debug)]
pub(super) struct Detail<'a> {
    pub pid: i32,
    pub backend_start_us: Option<i64>,
    pub own: bool,
    pub wait_event_type: &'a str,
    pub wait_event: &'a str,
    /// The pids that block it, as "1,2" (only for Lock waits).
    pub blocked_by: &'a str,
    pub datid: u32,
    pub userid: u32,
    pub application_name: &'a str,
    pub client_host: Option<&'a str>,
    pub client_port: Option<i32>,
    pub state: Option<&'a str>,
    pub xact_start_us: Option<i64>,
    pub query_start_us: Option<i64>,
    pub state_change_us: Option<i64>,
    /// None when the query did not change (then it is not sent).
    pub query: Option<&'a str>,
    pub backend_type: &'a str,
    pub leader_pid: Option<i32>,
    pub query_id: Option<i64>,
}

/// The details in `row` (see [`super::activity_sql`]), in pid order. The
/// columns are parallel arrays: one that does not hold as many elements as
/// the pids is an error, never a session made of two sessions' parts.
pub(super) fn details(row: &Row) -> Result<Vec<Detail<'_>>, super::ReadError> {
    let mut columns = Vec::with_capacity(DETAIL_COLUMNS);
    for i in FIRST_DETAIL..FIRST_DETAIL + DETAIL_COLUMNS {
        let a = row
            .try_get::<_, Option<PgArray>>(i)?
            .unwrap_or(PgArray::EMPTY);
        columns.push(a);
    }
    // Counted, not taken from the arrays' headers, which could claim more.
    let count = columns[0].nullable().count();
    if let Some(i) = columns.iter().position(|c| c.nullable().count() != count) {
        return Err(super::ReadError::Malformed(format!(
            "column {} of the details holds a different number of sessions than the pids ({count})",
            FIRST_DETAIL + i
        )));
    }
    let mut cells: Vec<_> = columns.iter().map(|c| c.nullable()).collect();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut next = cells.iter_mut().map(|c| c.next().flatten());
        let mut cell = move || next.next().flatten();
        let d = Detail {
            pid: array::int4(cell().unwrap_or_default()),
            backend_start_us: micros(cell()),
            own: cell().is_some_and(array::bool),
            wait_event_type: text(cell()).unwrap_or(""),
            wait_event: text(cell()).unwrap_or(""),
            blocked_by: text(cell()).unwrap_or(""),
            datid: cell().map_or(0, array::oid),
            userid: cell().map_or(0, array::oid),
            application_name: text(cell()).unwrap_or(""),
            client_host: text(cell()),
            client_port: int4(cell()),
            state: text(cell()),
            xact_start_us: micros(cell()),
            query_start_us: micros(cell()),
            state_change_us: micros(cell()),
            query: text(cell()),
            backend_type: text(cell()).unwrap_or(""),
            leader_pid: int4(cell()),
            query_id: cell().map(array::int8),
        };
        out.push(d);
    }
    out.sort_unstable_by_key(|d| d.pid);
    Ok(out)
}

fn text(element: Option<&[u8]>) -> Option<&str> {
    element.map(array::text)
}

fn int4(element: Option<&[u8]>) -> Option<i32> {
    element.map(array::int4)
}

/// The pids in "1,2,3".
fn pids(list: &str) -> Vec<i32> {
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Whether a session's details say nothing new about a known session: most
/// details are read again only because their change fell within the margin.
/// Checks what a change moves (timestamps, state, wait, blockers, query),
/// building nothing.
pub(super) fn nothing_new(d: &Detail, k: &Known, names: &Names) -> bool {
    let s = &k.session;
    let state = match s.state {
        SessionState::NotVisible => SessionState::NotVisible,
        _ => SessionState::from_pg(d.state),
    };
    d.state_change_us == s.state_change_us
        && d.query_start_us == s.query_start_us
        && d.xact_start_us == s.xact_start_us
        && state == s.state
        && d.own == k.own
        && d.wait_event_type == &*s.wait_event_type
        && d.wait_event == &*s.wait_event
        && pids(d.blocked_by) == s.blocked_by
        && d.query.is_none_or(|q| q == &*k.raw_query)
        // What changes rarely, or is published after the query's start
        // (query_id), or a name that changed on a whole read.
        && d.application_name == &*s.application_name
        && d.query_id.filter(|&id| id != 0) == s.query_id
        && d.leader_pid == s.leader_pid
        && names.database(d.datid) == s.database
        && names.role(d.userid) == s.user
}

/// One session's details as a session, taking what did not change from
/// `before`; `names` knows its database and role.
pub(super) fn details_of(
    d: &Detail,
    backend_start_us: i64,
    before: Option<Known>,
    mode: QueryText,
    strings: &mut Interner,
    names: &Names,
) -> Known {
    let b = before.as_ref().map(|k| k.session.as_ref());
    let client = match (d.client_host, d.client_port) {
        (Some(host), Some(port)) if host.contains(':') => format!("[{host}]:{port}"),
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => String::new(),
    };
    let (raw, query, fingerprint) = match (d.query, &before) {
        (None, Some(k)) => (
            k.raw_query.clone(),
            k.session.query.clone(),
            k.session.fingerprint,
        ),
        (None, None) => (ArcStr::new(), ArcStr::new(), 0),
        (Some(now), Some(k)) if k.raw_query.as_str() == now => (
            k.raw_query.clone(),
            k.session.query.clone(),
            k.session.fingerprint,
        ),
        (Some(now), _) => {
            let (text, fp) = query_text::prepare(now, mode);
            (ArcStr::from(now), ArcStr::from(text), fp)
        }
    };
    let (state, query, fingerprint) = if raw.as_str() == INSUFFICIENT_PRIVILEGE {
        (SessionState::NotVisible, ArcStr::new(), 0)
    } else {
        (SessionState::from_pg(d.state), query, fingerprint)
    };
    let session = Session {
        pid: d.pid,
        backend_start_us,
        database: names.database(d.datid),
        user: names.role(d.userid),
        application_name: strings.get(d.application_name),
        client: shared(b.map(|s| &s.client), &client),
        state,
        xact_start_us: d.xact_start_us,
        query_start_us: d.query_start_us,
        state_change_us: d.state_change_us,
        wait_event_type: strings.get(d.wait_event_type),
        wait_event: strings.get(d.wait_event),
        query,
        backend_type: strings.get(d.backend_type),
        blocked_by: pids(d.blocked_by),
        leader_pid: d.leader_pid,
        query_id: d.query_id.filter(|&id| id != 0),
        fingerprint,
    };
    // Unchanged after all (a timestamp moved within the margin): keep sharing.
    let session = match before {
        Some(k) if *k.session == session => k.session,
        _ => Arc::new(session),
    };
    Known {
        pid: d.pid,
        own: d.own,
        wait: None,
        session,
        raw_query: raw,
    }
}

/// `now`, shared with `before` when it has the same text.
fn shared(before: Option<&ArcStr>, now: &str) -> ArcStr {
    match before {
        Some(b) if b.as_str() == now => b.clone(),
        _ => ArcStr::from(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_as_unix_microseconds() {
        let at = |pg: i64| micros(Some(&pg.to_be_bytes())).unwrap();
        assert_eq!(at(0), 946_684_800_000_000, "2000-01-01");
        assert_eq!(at(1_000_001), 946_684_801_000_001);
        assert_eq!(at(i64::MAX), i64::MAX, "infinity stays infinite");
        assert_eq!(micros(Some(&[1, 2])), None);
        assert_eq!(micros(None), None);
    }

    #[test]
    fn blockers_read_from_their_list() {
        assert_eq!(pids("12,7"), [12, 7]);
        assert_eq!(pids(""), Vec::<i32>::new());
        assert_eq!(pids("3"), [3]);
    }
}
