//! The sessions table's columns, laid out as pg_activity does: every column
//! as wide as its widest value (within a cap for the names), the query
//! given the rest of the width, and, as the terminal narrows, whole columns
//! dropped in [`DROP_ORDER`] rather than all of them squeezed. An address,
//! a wait, a time or a load is never cut in the middle of its value.

use std::collections::BTreeMap;

use pgfleet_proto::v1;
use ratatui::text::Span;

use super::load::load_text;
use super::state::{SessionLine, duration_us, short_state};
use crate::fleet::{client_text, wait_text};
use crate::output::{human_duration, one_line};

/// A column of the sessions table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Column {
    Server,
    /// The server's DB load now, and a sparkline of its last 100 s.
    Load,
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
const ALL: [Column; 11] = [
    Column::Server,
    Column::Load,
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
/// [`min_query`]: the application, the client, the user, the database, the
/// server's load (F5 shows it too), then the state. The server, pid, wait,
/// time and query always stay (Enter shows a session whole).
pub(super) const DROP_ORDER: [Column; 6] = [
    Column::Application,
    Column::Client,
    Column::User,
    Column::Database,
    Column::Load,
    Column::State,
];

/// The least width the query is left with before a column is dropped: a
/// third of the line, and never under 20 cells.
pub(super) fn min_query(width: u16) -> u16 {
    (width / 3).max(20)
}

/// The space between two columns (ratatui's default).
const SPACING: u32 = 1;

impl Column {
    /// Its header.
    pub(super) fn title(self) -> &'static str {
        match self {
            Column::Server => "SERVER",
            Column::Load => "LOAD",
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

    /// The widest its value grows; None for a value that is never cut (a
    /// number, an address, a wait, a time, a state). A server's indent in a
    /// blocking tree comes on top of its cap.
    fn cap(self) -> Option<u32> {
        match self {
            Column::Server => Some(28),
            Column::Database | Column::User => Some(16),
            Column::Application => Some(24),
            _ => None,
        }
    }

    /// The least width: a time grows from `0.8s` to `1m00s`, and the table
    /// should not shift as it does.
    fn least(self) -> u32 {
        match self {
            Column::Time => 5,
            _ => 0,
        }
    }

    /// The line's value in this column; `servers` (from the Watch stream)
    /// give the load.
    fn text(self, line: &SessionLine, servers: &BTreeMap<String, v1::Server>) -> String {
        let s = &line.session;
        match self {
            Column::Server => format!("{}{}", "  ".repeat(line.depth), line.server_id),
            Column::Load => servers
                .get(&line.server_id)
                .and_then(|s| s.load.as_ref())
                .map(load_text)
                .unwrap_or_default(),
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

    /// How many cells `text`, this column's value for `line`, needs.
    fn width_of(self, line: &SessionLine, text: &str) -> u32 {
        let cells = u32::try_from(Span::raw(text).width()).unwrap_or(u32::MAX);
        match (self, self.cap()) {
            (Column::Server, Some(cap)) => {
                let indent = 2 * u32::try_from(line.depth).unwrap_or(u32::MAX);
                indent.saturating_add(cells.saturating_sub(indent).min(cap))
            }
            (_, Some(cap)) => cells.min(cap),
            (_, None) => cells,
        }
    }
}

/// The sessions table laid out for a width: the columns shown, each with its
/// width (the query last, with what is left), and each line's cells.
#[derive(Debug)]
pub(super) struct Laid {
    /// The columns shown, left to right, with their widths.
    pub(super) columns: Vec<(Column, u16)>,
    /// For each line, its cells in those columns.
    pub(super) cells: Vec<Vec<String>>,
}

/// Lays `lines` out in `width` cells: every value is made once, every column
/// is as wide as its widest value, and columns go in [`DROP_ORDER`] until the
/// query has [`min_query`]. `servers` give each line's server's load.
pub(super) fn lay_out(
    lines: &[&SessionLine],
    servers: &BTreeMap<String, v1::Server>,
    width: u16,
) -> Laid {
    let texts: Vec<Vec<String>> = lines
        .iter()
        .map(|l| ALL.iter().map(|c| c.text(l, servers)).collect())
        .collect();
    // The load column only when a line has a load (a collector before
    // load, or servers the Watch stream has not told of yet, have none).
    let load = ALL.iter().position(|c| *c == Column::Load);
    let no_load = texts.iter().all(|t| load.is_none_or(|i| t[i].is_empty()));
    let mut shown: Vec<(usize, u32)> = ALL
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != Column::Query && !(**c == Column::Load && no_load))
        .map(|(i, &c)| {
            let widest = lines
                .iter()
                .zip(&texts)
                .map(|(l, t)| c.width_of(l, &t[i]))
                .max()
                .unwrap_or(0);
            (i, widest.max(c.title().len() as u32).max(c.least()))
        })
        .collect();
    let least = u32::from(min_query(width));
    let width = u32::from(width);
    let used = |shown: &[(usize, u32)]| -> u32 {
        shown.iter().fold(0u32, |sum, (_, w)| {
            sum.saturating_add(w.saturating_add(SPACING))
        })
    };
    for drop in DROP_ORDER {
        if width.saturating_sub(used(&shown)) >= least {
            break;
        }
        shown.retain(|(i, _)| ALL[*i] != drop);
    }
    let rest = width.saturating_sub(used(&shown));
    let query = ALL.len() - 1;
    shown.push((query, rest));
    let cells = texts
        .into_iter()
        .map(|mut t| {
            shown
                .iter()
                .map(|(i, _)| std::mem::take(&mut t[*i]))
                .collect()
        })
        .collect();
    let columns = shown
        .iter()
        .map(|(i, w)| (ALL[*i], u16::try_from(*w).unwrap_or(u16::MAX)))
        .collect();
    Laid { columns, cells }
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

    /// The servers the Watch stream told of: demo-db-1 with its load.
    fn fleet() -> BTreeMap<String, v1::Server> {
        let server = v1::Server {
            server_id: "demo-db-1".into(),
            load: Some(v1::LoadNow {
                load: 2.34,
                by_wait_type: Vec::new(),
                recent: (0..30).map(|i| f64::from(i % 4)).collect(),
                minutes: Vec::new(),
            }),
            ..Default::default()
        };
        [(server.server_id.clone(), server)].into()
    }

    fn names(l: &[(Column, u16)]) -> Vec<&'static str> {
        l.iter().map(|(c, _)| c.title()).collect()
    }

    #[test]
    fn the_query_gets_the_rest_and_columns_go_in_the_stated_order() {
        let s = sleeper();
        let lines = [&s];
        let fleet = fleet();
        let wide = lay_out(&lines, &fleet, 200).columns;
        assert_eq!(names(&wide).len(), ALL.len(), "all fit at 200");
        let query = wide.last().unwrap();
        assert_eq!(query.0, Column::Query);
        let total: u32 = wide
            .iter()
            .map(|(_, w)| u32::from(*w) + SPACING)
            .sum::<u32>()
            - SPACING;
        assert_eq!(total, 200, "the query takes the rest: {wide:?}");
        let mut previous = ALL.len();
        for width in (40..200).rev() {
            let l = lay_out(&lines, &fleet, width).columns;
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
        let fleet = fleet();
        for width in [80, 120, 200] {
            let l = lay_out(&[&s], &fleet, width).columns;
            for (c, w) in &l {
                if matches!(
                    c,
                    Column::Client | Column::Wait | Column::Pid | Column::Time | Column::Load
                ) {
                    assert!(
                        usize::from(*w) >= c.text(&s, &fleet).chars().count(),
                        "{} cut at {width}: {l:?}",
                        c.title()
                    );
                }
            }
        }
    }

    #[test]
    fn a_trees_indent_comes_on_top_of_the_name_and_wide_characters_count_twice() {
        let long = "orders-db-17.eu-west-1.prod1";
        assert_eq!(long.len(), 28);
        let root = line(long, 0, v1::Session::default());
        let waiter = line(long, 2, v1::Session::default());
        let l = lay_out(&[&root, &waiter], &BTreeMap::new(), 200);
        assert_eq!(l.columns[0], (Column::Server, 32), "28 and an indent of 4");
        assert_eq!(l.cells[1][0], format!("    {long}"));
        let app = line(
            "db",
            0,
            v1::Session {
                application_name: "受注バッチ処理".into(),
                ..Default::default()
            },
        );
        let l = lay_out(&[&app], &BTreeMap::new(), 200);
        let (_, w) = l
            .columns
            .iter()
            .find(|(c, _)| *c == Column::Application)
            .unwrap();
        assert_eq!(*w, 14, "seven wide characters: {l:?}");
    }

    #[test]
    fn no_lines_give_the_titles_and_a_tiny_terminal_the_query_what_is_left() {
        let l = lay_out(&[], &fleet(), 80);
        assert!(l.cells.is_empty());
        assert_eq!(l.columns.last().unwrap().0, Column::Query);
        let l = lay_out(&[&sleeper()], &fleet(), 10);
        assert_eq!(l.columns.last().unwrap(), &(Column::Query, 0));
    }

    #[test]
    fn the_load_column_is_the_number_and_the_last_100_s_and_goes_after_the_database() {
        let s = sleeper();
        let fleet = fleet();
        let l = lay_out(&[&s], &fleet, 200);
        assert_eq!(l.columns[1], (Column::Load, 15), "{l:?}");
        assert_eq!(l.cells[0][1], " 2.3 ▁▃▆█▁▃▆█▁▃");
        // A server the Watch stream has not told of yet: an empty cell, and
        // no column when no line has a load.
        let other = line("db-9", 0, v1::Session::default());
        assert_eq!(Column::Load.text(&other, &fleet), "");
        let l = lay_out(&[&other], &fleet, 200).columns;
        assert!(!l.iter().any(|(c, _)| *c == Column::Load), "{l:?}");
        let l = lay_out(&[&other, &s], &fleet, 200).columns;
        assert!(l.iter().any(|(c, _)| *c == Column::Load), "{l:?}");
        // On 80 columns the load goes before the state.
        let narrow = lay_out(&[&s], &fleet, 80).columns;
        assert!(
            !narrow.iter().any(|(c, _)| *c == Column::Load)
                && narrow.iter().any(|(c, _)| *c == Column::State),
            "{narrow:?}"
        );
        let medium = lay_out(&[&s], &fleet, 100).columns;
        assert!(
            medium.iter().any(|(c, _)| *c == Column::Load)
                && !medium.iter().any(|(c, _)| *c == Column::Database),
            "at 100 the load stays, the database goes: {medium:?}"
        );
    }
}
