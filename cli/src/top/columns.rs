//! The sessions table's columns, laid out as pg_activity does: every column
//! as wide as its widest value (within a cap for the names), the query
//! given the rest of the width, and, as the terminal narrows, whole columns
//! dropped in [`DROP_ORDER`] rather than all of them squeezed. An address,
//! a wait or a time is never cut in the middle of its value.

use super::state::{SessionLine, duration_us, short_state};
use crate::fleet::{client_text, wait_text};
use crate::output::{human_duration, one_line};

/// A column of the sessions table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Column {
    Server,
    Pid,
    Database,
    User,
    Application,
    Client,
    State,
    Wait,
    Time,
    Query,
}

/// The columns, left to right.
const ALL: [Column; 10] = [
    Column::Server,
    Column::Pid,
    Column::Database,
    Column::User,
    Column::Application,
    Column::Client,
    Column::State,
    Column::Wait,
    Column::Time,
    Column::Query,
];

/// Which columns go first when the query would get less than
/// [`min_query`]: the application, the client, the user, the database, then
/// the state. The server, pid, wait, time and query always stay (Enter
/// shows a session whole).
pub(super) const DROP_ORDER: [Column; 5] = [
    Column::Application,
    Column::Client,
    Column::User,
    Column::Database,
    Column::State,
];

/// The least width the query is left with before a column is dropped: a
/// third of the line, and never under 20 cells.
pub(super) fn min_query(width: u16) -> u16 {
    (width / 3).max(20)
}

/// The space between two columns (ratatui's default).
const SPACING: u16 = 1;

impl Column {
    /// Its header.
    pub(super) fn title(self) -> &'static str {
        match self {
            Column::Server => "SERVER",
            Column::Pid => "PID",
            Column::Database => "DATABASE",
            Column::User => "USER",
            Column::Application => "APPLICATION",
            Column::Client => "CLIENT",
            Column::State => "STATE",
            Column::Wait => "WAIT",
            Column::Time => "TIME",
            Column::Query => "QUERY",
        }
    }

    /// The widest it grows; None for a value that is never cut (a number,
    /// an address, a wait, a time, a state).
    fn cap(self) -> Option<u16> {
        match self {
            Column::Server => Some(28),
            Column::Database | Column::User => Some(16),
            Column::Application => Some(24),
            _ => None,
        }
    }

    /// The line's value in this column.
    pub(super) fn text(self, line: &SessionLine) -> String {
        let s = &line.session;
        match self {
            Column::Server => format!("{}{}", "  ".repeat(line.depth), line.server_id),
            Column::Pid => s.pid.to_string(),
            Column::Database => s.database.clone(),
            Column::User => s.user.clone(),
            Column::Application => s.application_name.clone(),
            Column::Client => client_text(s).to_owned(),
            Column::State => short_state(&s.state),
            Column::Wait => wait_text(s),
            Column::Time => human_duration(duration_us(s)),
            Column::Query => one_line(&s.query, 400),
        }
    }
}

/// The columns shown in `width` cells for `lines`, each with its width; the
/// query last, with what is left.
pub(super) fn layout(lines: &[&SessionLine], width: u16) -> Vec<(Column, u16)> {
    let mut shown: Vec<(Column, u16)> = ALL
        .iter()
        .filter(|c| **c != Column::Query)
        .map(|&c| (c, natural(c, lines)))
        .collect();
    let used =
        |shown: &[(Column, u16)]| -> u16 { shown.iter().map(|(_, w)| w + SPACING).sum::<u16>() };
    for drop in DROP_ORDER {
        if width.saturating_sub(used(&shown)) >= min_query(width) {
            break;
        }
        shown.retain(|(c, _)| *c != drop);
    }
    let rest = width.saturating_sub(used(&shown));
    shown.push((Column::Query, rest));
    shown
}

/// A column's width for `lines`: its widest value or its title, within its cap.
fn natural(column: Column, lines: &[&SessionLine]) -> u16 {
    let widest = lines
        .iter()
        .map(|l| column.text(l).chars().count())
        .max()
        .unwrap_or(0)
        .max(column.title().len());
    let widest = u16::try_from(widest).unwrap_or(u16::MAX);
    column.cap().map_or(widest, |cap| widest.min(cap))
}

#[cfg(test)]
mod tests {
    use pgfleet_proto::v1;

    use super::*;

    fn line(server_id: &str, depth: usize, session: v1::Session) -> SessionLine {
        SessionLine {
            server_id: server_id.into(),
            depth,
            session,
        }
    }

    fn sleeper() -> SessionLine {
        line(
            "demo-db-1",
            0,
            v1::Session {
                pid: 4117,
                database: "demo".into(),
                user: "demo".into(),
                application_name: "demo-sleeper".into(),
                client: "127.0.0.1:41178".into(),
                state: "active".into(),
                wait_event_type: "Timeout".into(),
                wait_event: "PgSleep".into(),
                query: "SELECT pg_sleep(60)".into(),
                ..Default::default()
            },
        )
    }

    fn names(l: &[(Column, u16)]) -> Vec<&'static str> {
        l.iter().map(|(c, _)| c.title()).collect()
    }

    #[test]
    fn the_query_gets_the_rest_and_columns_go_in_the_stated_order() {
        let s = sleeper();
        let lines = [&s];
        let wide = layout(&lines, 200);
        assert_eq!(names(&wide).len(), ALL.len(), "all fit at 200");
        let query = wide.last().unwrap();
        assert_eq!(query.0, Column::Query);
        let total: u16 = wide.iter().map(|(_, w)| w + SPACING).sum::<u16>() - SPACING;
        assert_eq!(total, 200, "the query takes the rest: {wide:?}");
        let mut previous = ALL.len();
        for width in (40..200).rev() {
            let l = layout(&lines, width);
            assert!(l.len() <= previous, "a narrower terminal shows no more");
            previous = l.len();
            let dropped: Vec<Column> = ALL
                .iter()
                .filter(|c| !l.iter().any(|(s, _)| s == *c))
                .copied()
                .collect();
            assert!(
                DROP_ORDER[..dropped.len()]
                    .iter()
                    .all(|c| dropped.contains(c)),
                "at {width} columns, {dropped:?} are not the first of {DROP_ORDER:?}"
            );
            let query = l.last().unwrap().1;
            assert!(
                query >= min_query(width) || dropped.len() == DROP_ORDER.len(),
                "at {width}: the query has {query}"
            );
        }
    }

    #[test]
    fn addresses_and_waits_are_never_cut() {
        let s = sleeper();
        for width in [80, 120, 200] {
            let l = layout(&[&s], width);
            for (c, w) in &l {
                if matches!(
                    c,
                    Column::Client | Column::Wait | Column::Pid | Column::Time
                ) {
                    assert!(
                        usize::from(*w) >= c.text(&s).chars().count(),
                        "{} cut at {width}: {l:?}",
                        c.title()
                    );
                }
            }
        }
    }
}
