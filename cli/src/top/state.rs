//! The screen's state: which screen, sort and filter, what the last refresh
//! read, and the lines a screen shows.

use std::collections::BTreeMap;
use std::time::Duration;

use pgfleet_common::settings;
use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;
use ratatui::widgets::TableState;

use super::INTERVALS;
use crate::output::human_duration;

/// Which screen is shown: sessions (pg_activity's F1 to F3), pools (F4),
/// or each server's DB load by wait (F5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Running,
    Waiting,
    Blocking,
    Pools,
    Load,
}

impl Mode {
    /// The screens, in the order of their keys (F1, F2, …).
    pub(super) const ALL: [Mode; 5] = [
        Mode::Running,
        Mode::Waiting,
        Mode::Blocking,
        Mode::Pools,
        Mode::Load,
    ];

    pub(super) fn title(self) -> &'static str {
        match self {
            Mode::Running => "running",
            Mode::Waiting => "waiting",
            Mode::Blocking => "blocking",
            Mode::Pools => "pools",
            Mode::Load => "load by wait",
        }
    }

    /// Whether it lists sessions (which Enter shows whole).
    pub(super) fn of_sessions(self) -> bool {
        matches!(self, Mode::Running | Mode::Waiting | Mode::Blocking)
    }
}

/// How the sessions are ordered (`s` steps through them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sort {
    Duration,
    Server,
    Database,
    User,
    Pid,
}

impl Sort {
    pub(super) fn next(self) -> Sort {
        match self {
            Sort::Duration => Sort::Server,
            Sort::Server => Sort::Database,
            Sort::Database => Sort::User,
            Sort::User => Sort::Pid,
            Sort::Pid => Sort::Duration,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Sort::Duration => "duration",
            Sort::Server => "server",
            Sort::Database => "database",
            Sort::User => "user",
            Sort::Pid => "pid",
        }
    }
}

/// What `/` sets: `dc=eu1 db=orders user=app app=web min=5s server=db-1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Filter {
    pub(super) labels: BTreeMap<String, String>,
    pub(super) database: Option<String>,
    pub(super) user: Option<String>,
    pub(super) application: Option<String>,
    pub(super) min_duration_us: i64,
    pub(super) server: Option<String>,
}

impl Filter {
    pub(super) fn parse(text: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for word in text.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!(
                    "{word:?}: give key=value, such as dc=eu1, db=orders, user=app, app=web, min=5s or server=db-1"
                ));
            };
            match key {
                "db" | "database" => f.database = Some(value.to_owned()),
                "user" => f.user = Some(value.to_owned()),
                "app" | "application" => f.application = Some(value.to_owned()),
                "server" => f.server = Some(value.to_owned()),
                "min" => {
                    let d = humantime::parse_duration(value)
                        .map_err(|e| format!("min={value}: {e}; give a duration such as 5s"))?;
                    f.min_duration_us = d.as_micros().min(i64::MAX as u128) as i64;
                }
                label => {
                    settings::check_label(label, value).map_err(|e| e.to_string())?;
                    f.labels.insert(label.to_owned(), value.to_owned());
                }
            }
        }
        Ok(f)
    }

    pub(super) fn describe(&self) -> String {
        let mut words: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for (key, value) in [
            ("server", &self.server),
            ("db", &self.database),
            ("user", &self.user),
            ("app", &self.application),
        ] {
            if let Some(v) = value {
                words.push(format!("{key}={v}"));
            }
        }
        if self.min_duration_us > 0 {
            words.push(format!("min={}", human_duration(self.min_duration_us)));
        }
        words.join(" ")
    }

    pub(super) fn keeps(&self, s: &v1::Session) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.database, &s.database)
            && is(&self.user, &s.user)
            && is(&self.application, &s.application_name)
            && duration_us(s) >= self.min_duration_us
    }
}

/// One line of the sessions table.
#[derive(Debug, Clone)]
pub(super) struct SessionLine {
    pub(super) server_id: String,
    /// Its depth in a blocking tree (0 elsewhere).
    pub(super) depth: usize,
    pub(super) session: v1::Session,
}

/// One line of the pools table.
#[derive(Debug, Clone)]
pub(super) struct PoolLine {
    pub(super) server_id: String,
    pub(super) pool: String,
    pub(super) kind: &'static str,
    pub(super) used: u32,
    pub(super) capacity: u32,
    pub(super) waiting: u32,
    pub(super) utilisation: f64,
}

/// What one refresh read.
#[derive(Debug, Default)]
pub(super) struct Fetched {
    pub(super) summary: Vec<v1::FleetSummaryRow>,
    pub(super) sessions: Vec<SessionLine>,
    pub(super) pools: Vec<PoolLine>,
}

/// What a refresh asks for.
#[derive(Debug, Clone)]
pub(super) struct Ask {
    pub(super) mode: Mode,
    pub(super) by: String,
    pub(super) filter: Filter,
    pub(super) servers: Vec<String>,
}

/// The screen's state.
pub(super) struct App {
    pub(super) url: String,
    pub(super) mode: Mode,
    pub(super) sort: Sort,
    pub(super) by: String,
    pub(super) filter: Filter,
    pub(super) interval: usize,
    /// Every server the Watch stream has told of.
    pub(super) servers: BTreeMap<String, v1::Server>,
    pub(super) data: Fetched,
    /// When `data` was read.
    pub(super) fetched_at: Option<Micros>,
    /// Why the collector cannot be reached, while it cannot.
    pub(super) trouble: Option<String>,
    pub(super) table: TableState,
    /// The text being typed after `/`.
    pub(super) typing: Option<String>,
    /// A message for the footer (a bad filter, say).
    pub(super) notice: Option<String>,
    /// The session whose query is shown whole (Enter).
    pub(super) detail: Option<SessionLine>,
}

impl App {
    /// The running screen, sorted by time, with nothing read yet.
    pub(super) fn new(url: String, by: String, filter: Filter, interval: usize) -> App {
        App {
            url,
            mode: Mode::Running,
            sort: Sort::Duration,
            by,
            filter,
            interval,
            servers: BTreeMap::new(),
            data: Fetched::default(),
            fetched_at: None,
            trouble: None,
            table: TableState::default().with_selected(Some(0)),
            typing: None,
            notice: None,
            detail: None,
        }
    }

    pub(super) fn interval(&self) -> Duration {
        INTERVALS[self.interval]
    }

    pub(super) fn ask(&self) -> Ask {
        let servers = self
            .servers
            .values()
            .filter(|s| {
                self.filter
                    .labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v))
            })
            .map(|s| s.server_id.clone())
            .collect();
        Ask {
            mode: self.mode,
            by: self.by.clone(),
            filter: self.filter.clone(),
            servers,
        }
    }

    /// The sessions as shown: filtered and sorted (trees keep their order).
    pub(super) fn lines(&self) -> Vec<&SessionLine> {
        let mut lines: Vec<&SessionLine> = self
            .data
            .sessions
            .iter()
            .filter(|l| self.mode == Mode::Blocking || self.filter.keeps(&l.session))
            .collect();
        if self.mode != Mode::Blocking {
            // Ties go by server, then pid; nothing is copied to compare.
            fn key(l: &SessionLine) -> (&str, i32) {
                (&l.server_id, l.session.pid)
            }
            match self.sort {
                Sort::Duration => lines.sort_by_key(|l| std::cmp::Reverse(duration_us(&l.session))),
                Sort::Server => lines.sort_by(|a, b| key(a).cmp(&key(b))),
                Sort::Database => lines.sort_by(|a, b| {
                    (a.session.database.as_str(), key(a))
                        .cmp(&(b.session.database.as_str(), key(b)))
                }),
                Sort::User => lines.sort_by(|a, b| {
                    (a.session.user.as_str(), key(a)).cmp(&(b.session.user.as_str(), key(b)))
                }),
                Sort::Pid => lines.sort_by_key(|l| l.session.pid),
            }
        }
        lines
    }

    /// The servers of the load screen: those the filter keeps (its labels
    /// and server), the most loaded first.
    pub(super) fn loads(&self) -> Vec<&v1::Server> {
        let load = |s: &v1::Server| s.load.as_ref().map_or(0.0, |l| l.load);
        let mut servers: Vec<&v1::Server> = self
            .servers
            .values()
            .filter(|s| {
                self.filter
                    .labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v))
                    && self
                        .filter
                        .server
                        .as_ref()
                        .is_none_or(|id| *id == s.server_id)
            })
            .collect();
        servers.sort_by(|a, b| {
            load(b)
                .total_cmp(&load(a))
                .then(a.server_id.cmp(&b.server_id))
        });
        servers
    }

    pub(super) fn row_count(&self) -> usize {
        match self.mode {
            Mode::Pools => self.data.pools.len(),
            Mode::Load => self.loads().len(),
            _ => self.lines().len(),
        }
    }
}

/// A session's state in at most 9 characters.
pub(super) fn short_state(state: &str) -> String {
    match state {
        "idle in transaction" => "idle xact".to_owned(),
        "idle in transaction (aborted)" => "xact abrt".to_owned(),
        "fastpath function call" => "fastpath".to_owned(),
        other => other.to_owned(),
    }
}

/// The session's duration: how long its query has run, or its transaction
/// stayed open.
pub(super) fn duration_us(s: &v1::Session) -> i64 {
    s.duration.as_ref().map(time::duration_micros).unwrap_or(0)
}
