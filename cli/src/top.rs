//! `pgfleet top`: a live, full-screen view of the whole fleet, with the keys of
//! pg_activity.
//!
//! A `Watch` stream keeps the list of servers and their health current (and
//! tells at once when the collector goes away); the summary and the sessions
//! are read again every refresh interval. Fetching runs beside the screen, so
//! keys are answered while a slow or absent collector is waited for. Drawing
//! goes through ratatui, which writes only the cells that changed: no flicker,
//! even over SSH.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use pgfleet_common::settings;
use pgfleet_proto::time::{self, Micros, now_micros};
use pgfleet_proto::v1;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::CliError;
use super::fleet::{Remote, client_text, connect, flatten, wait_text};
use super::output::{human_duration, one_line};

type Client = v1::query_client::QueryClient<Channel>;

/// The refresh intervals `+` and `-` step through.
const INTERVALS: [Duration; 8] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
];

/// A query this long is drawn yellow, and red past [`RED_AFTER_US`].
const YELLOW_AFTER_US: i64 = 60_000_000;
const RED_AFTER_US: i64 = 300_000_000;

/// The most sessions a screen asks for.
const MAX_ROWS: u32 = 500;

/// In the pools screen of the whole fleet, the most servers asked.
const MAX_POOL_SERVERS: usize = 64;

/// `pgfleet top`'s flags.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Keys: F1/1 running, F2/2 waiting, F3/3 blocking (as trees), F4/4 pools; \
/ filter (dc=eu1 db=orders user=app app=web min=5s server=db-1); s sort; \
+/- refresh interval; Enter a session's whole query; arrows select; q quit."
)]
pub struct TopArgs {
    /// The label the header adds the fleet up by
    #[arg(long, default_value = "dc", value_name = "LABEL")]
    pub by: String,
    /// Show one server's sessions rather than the fleet's
    #[arg(long, value_name = "SERVER_ID")]
    pub server: Option<String>,
    /// Only servers with this label, repeatable
    #[arg(long = "label", value_name = "NAME=VALUE")]
    pub labels: Vec<String>,
    /// How often to read the sessions again (+ and - change it)
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub interval: String,
}

impl Default for TopArgs {
    fn default() -> Self {
        TopArgs {
            by: "dc".into(),
            server: None,
            labels: Vec::new(),
            interval: "2s".into(),
        }
    }
}

/// Which sessions the table shows (pg_activity's F1 to F4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    Waiting,
    Blocking,
    Pools,
}

impl Mode {
    fn title(self) -> &'static str {
        match self {
            Mode::Running => "running",
            Mode::Waiting => "waiting",
            Mode::Blocking => "blocking",
            Mode::Pools => "pools",
        }
    }
}

/// How the sessions are ordered (`s` steps through them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    Duration,
    Server,
    Database,
    User,
    Pid,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Duration => Sort::Server,
            Sort::Server => Sort::Database,
            Sort::Database => Sort::User,
            Sort::User => Sort::Pid,
            Sort::Pid => Sort::Duration,
        }
    }

    fn name(self) -> &'static str {
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
struct Filter {
    labels: BTreeMap<String, String>,
    database: Option<String>,
    user: Option<String>,
    application: Option<String>,
    min_duration_us: i64,
    server: Option<String>,
}

impl Filter {
    fn parse(text: &str) -> Result<Filter, String> {
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

    fn describe(&self) -> String {
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

    fn keeps(&self, s: &v1::Session) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.database, &s.database)
            && is(&self.user, &s.user)
            && is(&self.application, &s.application_name)
            && duration_us(s) >= self.min_duration_us
    }
}

/// One line of the sessions table.
#[derive(Debug, Clone)]
struct SessionLine {
    server_id: String,
    /// Its depth in a blocking tree (0 elsewhere).
    depth: usize,
    session: v1::Session,
}

/// One line of the pools table.
#[derive(Debug, Clone)]
struct PoolLine {
    server_id: String,
    pool: String,
    kind: &'static str,
    used: u32,
    capacity: u32,
    waiting: u32,
    utilisation: f64,
}

/// What one refresh read.
#[derive(Debug, Default)]
struct Fetched {
    summary: Vec<v1::FleetSummaryRow>,
    sessions: Vec<SessionLine>,
    pools: Vec<PoolLine>,
}

/// What a refresh asks for.
#[derive(Debug, Clone)]
struct Ask {
    mode: Mode,
    by: String,
    filter: Filter,
    servers: Vec<String>,
}

/// The screen's state.
struct App {
    url: String,
    mode: Mode,
    sort: Sort,
    by: String,
    filter: Filter,
    interval: usize,
    /// Every server the Watch stream has told of.
    servers: BTreeMap<String, v1::Server>,
    data: Fetched,
    /// When `data` was read.
    fetched_at: Option<Micros>,
    /// Why the collector cannot be reached, while it cannot.
    trouble: Option<String>,
    table: TableState,
    /// The text being typed after `/`.
    typing: Option<String>,
    /// A message for the footer (a bad filter, say).
    notice: Option<String>,
    /// The session whose query is shown whole (Enter).
    detail: Option<SessionLine>,
}

impl App {
    /// The running screen, sorted by time, with nothing read yet.
    fn new(url: String, by: String, filter: Filter, interval: usize) -> App {
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

    fn interval(&self) -> Duration {
        INTERVALS[self.interval]
    }

    fn ask(&self) -> Ask {
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
    fn lines(&self) -> Vec<&SessionLine> {
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

    fn row_count(&self) -> usize {
        match self.mode {
            Mode::Pools => self.data.pools.len(),
            _ => self.lines().len(),
        }
    }

    /// Answers a key; false when it is time to quit.
    fn key(&mut self, key: KeyEvent) -> Answer {
        if key.kind != KeyEventKind::Press {
            return Answer::Redraw;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Answer::Quit;
        }
        if let Some(text) = &mut self.typing {
            match key.code {
                KeyCode::Enter => {
                    let text = std::mem::take(text);
                    self.typing = None;
                    match Filter::parse(&text) {
                        Ok(f) => {
                            self.filter = f;
                            self.notice = None;
                            return Answer::Refresh;
                        }
                        Err(e) => self.notice = Some(e),
                    }
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return Answer::Redraw;
        }
        if self.detail.is_some() {
            if matches!(key.code, KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q')) {
                self.detail = None;
            }
            return Answer::Redraw;
        }
        let rows = self.row_count();
        let mode = match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Answer::Quit,
            KeyCode::F(1) | KeyCode::Char('1') => Some(Mode::Running),
            KeyCode::F(2) | KeyCode::Char('2') => Some(Mode::Waiting),
            KeyCode::F(3) | KeyCode::Char('3') => Some(Mode::Blocking),
            KeyCode::F(4) | KeyCode::Char('4') => Some(Mode::Pools),
            KeyCode::Char('+') => {
                self.interval = (self.interval + 1).min(INTERVALS.len() - 1);
                None
            }
            KeyCode::Char('-') => {
                self.interval = self.interval.saturating_sub(1);
                None
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                None
            }
            KeyCode::Char('/') => {
                self.typing = Some(self.filter.describe());
                None
            }
            KeyCode::Enter => {
                if self.mode != Mode::Pools {
                    let lines = self.lines();
                    self.detail = self
                        .table
                        .selected()
                        .and_then(|i| lines.get(i))
                        .map(|l| (*l).clone());
                }
                None
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.select(rows, |i| i + 1);
                None
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.select(rows, |i| i.saturating_sub(1));
                None
            }
            KeyCode::PageDown => {
                self.select(rows, |i| i + 10);
                None
            }
            KeyCode::PageUp => {
                self.select(rows, |i| i.saturating_sub(10));
                None
            }
            KeyCode::Home => {
                self.select(rows, |_| 0);
                None
            }
            KeyCode::End => {
                self.select(rows, |_| usize::MAX);
                None
            }
            _ => None,
        };
        match mode {
            Some(m) if m != self.mode => {
                self.mode = m;
                self.table.select(Some(0));
                Answer::Refresh
            }
            _ => Answer::Redraw,
        }
    }

    fn select(&mut self, rows: usize, step: impl Fn(usize) -> usize) {
        let at = step(self.table.selected().unwrap_or(0));
        self.table.select(Some(at.min(rows.saturating_sub(1))));
    }
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Redraw,
    Refresh,
    Quit,
}

/// A session's state in at most 9 characters.
fn short_state(state: &str) -> String {
    match state {
        "idle in transaction" => "idle xact".to_owned(),
        "idle in transaction (aborted)" => "xact abrt".to_owned(),
        "fastpath function call" => "fastpath".to_owned(),
        other => other.to_owned(),
    }
}

/// The session's duration: how long its query has run, or its transaction
/// stayed open.
fn duration_us(s: &v1::Session) -> i64 {
    s.duration.as_ref().map(time::duration_micros).unwrap_or(0)
}

/// `pgfleet top`.
pub async fn top(remote: &Remote, args: TopArgs) -> Result<(), CliError> {
    let interval = humantime::parse_duration(&args.interval)
        .map_err(|e| CliError::Usage(format!("--interval {}: {e}", args.interval)))?;
    let labels = settings::parse_labels(args.labels.iter().map(String::as_str))?;
    settings::check_label(&args.by, "")?;
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(CliError::Usage(
            "pgfleet top needs a terminal; for a script, use `pgfleet top-sessions` or `pgfleet activity`".into(),
        ));
    }
    let filter = Filter {
        labels: labels.into_iter().collect(),
        server: args.server,
        ..Filter::default()
    };
    let step = INTERVALS
        .iter()
        .position(|i| *i >= interval)
        .unwrap_or(INTERVALS.len() - 1);
    let mut app = App::new(remote.url.clone(), args.by, filter, step);
    let mut terminal = ratatui::try_init()
        .map_err(|e| CliError::Failed(format!("cannot take over the terminal: {e}")))?;
    // The terminal is given back however top ends, even when the demo
    // around it is stopped by a signal.
    let _restore = Restore;
    run(&mut terminal, &mut app, remote).await
}

/// Gives the terminal back (raw mode off, the main screen) when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Keys, read on a thread of their own (crossterm's read blocks).
fn keys() -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            if tx.blocking_send(ev).is_err() {
                return;
            }
        }
    });
    rx
}

async fn run(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    remote: &Remote,
) -> Result<(), CliError> {
    let mut keys = keys();
    let (watch_tx, mut watch_rx) = mpsc::channel::<WatchNews>(256);
    let watcher = tokio::spawn(watch(remote.clone(), app.filter.labels.clone(), watch_tx));
    let mut client: Option<Client> = None;
    let mut fetch: Option<JoinHandle<Refreshed>> = None;
    let mut next = tokio::time::Instant::now();
    let draw = |terminal: &mut ratatui::DefaultTerminal, app: &mut App| {
        terminal
            .draw(|f| draw(f, app, now_micros()))
            .map(|_| ())
            .map_err(|e| CliError::Failed(format!("cannot draw: {e}")))
    };
    draw(terminal, app)?;
    let result = loop {
        if fetch.is_none() && tokio::time::Instant::now() >= next {
            let ask = app.ask();
            let (remote, client) = (remote.clone(), client.take());
            fetch = Some(tokio::spawn(async move {
                let mut client = match client {
                    Some(c) => c,
                    None => match connect(&remote).await {
                        Ok(c) => c,
                        Err(e) => return (None, Err(e.to_string())),
                    },
                };
                let read = read(&mut client, &ask).await;
                (Some(client), read)
            }));
            next = tokio::time::Instant::now() + app.interval();
        }
        tokio::select! {
            key = keys.recv() => match key {
                Some(Event::Key(k)) => match app.key(k) {
                    Answer::Quit => break Ok(()),
                    Answer::Refresh => next = tokio::time::Instant::now(),
                    Answer::Redraw => {}
                },
                Some(_) => {}
                None => break Ok(()),
            },
            done = async { fetch.as_mut().expect("checked").await }, if fetch.is_some() => {
                fetch = None;
                match done {
                    Ok((c, Ok(data))) => {
                        client = c;
                        app.data = data;
                        app.fetched_at = Some(now_micros());
                        app.trouble = None;
                    }
                    Ok((c, Err(e))) => {
                        client = c;
                        app.trouble = Some(e);
                        // Retry soon, whatever the interval.
                        next = next.min(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                    Err(e) => app.trouble = Some(e.to_string()),
                }
                let rows = app.row_count();
                app.select(rows, |i| i);
            },
            news = watch_rx.recv() => match news {
                Some(WatchNews::Full(servers)) => {
                    app.servers = servers.into_iter().map(|s| (s.server_id.clone(), s)).collect();
                    app.trouble = None;
                }
                Some(WatchNews::Changed(s)) => {
                    app.servers.insert(s.server_id.clone(), *s);
                }
                Some(WatchNews::Removed(id)) => {
                    app.servers.remove(&id);
                }
                Some(WatchNews::Lost(why)) => app.trouble = Some(why),
                None => {}
            },
            _ = tokio::time::sleep_until(next), if fetch.is_none() => {},
        }
        draw(terminal, app)?;
    };
    watcher.abort();
    if let Some(f) = fetch {
        f.abort();
    }
    result
}

/// A refresh's client (kept for the next one, when it connected) and what
/// it read, or why it could not.
type Refreshed = (Option<Client>, Result<Fetched, String>);

/// What the Watch stream said.
enum WatchNews {
    Full(Vec<v1::Server>),
    Changed(Box<v1::Server>),
    Removed(String),
    /// The stream ended or could not be opened: why.
    Lost(String),
}

/// Keeps a Watch stream open, opening it again (backing off) whenever it
/// ends, and hands on what it says.
async fn watch(remote: Remote, labels: BTreeMap<String, String>, out: mpsc::Sender<WatchNews>) {
    let mut wait = Duration::from_millis(500);
    loop {
        let why = match connect(&remote).await {
            Err(e) => e.to_string(),
            Ok(mut client) => {
                let request = v1::WatchRequest {
                    labels: labels.clone().into_iter().collect::<HashMap<_, _>>(),
                };
                match client.watch(request).await {
                    Err(s) => format!("cannot watch the fleet at {}: {}", remote.url, s.message()),
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(ev)) => {
                                    wait = Duration::from_millis(500);
                                    let news = match ev.event {
                                        Some(v1::watch_event::Event::Full(f)) => {
                                            WatchNews::Full(f.servers)
                                        }
                                        Some(v1::watch_event::Event::Changed(s)) => {
                                            WatchNews::Changed(Box::new(s))
                                        }
                                        Some(v1::watch_event::Event::Removed(id)) => {
                                            WatchNews::Removed(id)
                                        }
                                        None => continue,
                                    };
                                    if out.send(news).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => {
                                    break format!(
                                        "the collector at {} ended the stream",
                                        remote.url
                                    );
                                }
                                Err(s) => {
                                    break format!(
                                        "lost the collector at {}: {}",
                                        remote.url,
                                        s.message()
                                    );
                                }
                            }
                        }
                    }
                }
            }
        };
        if out.send(WatchNews::Lost(why)).await.is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// One refresh: the summary, and what the screen shows.
async fn read(client: &mut Client, ask: &Ask) -> Result<Fetched, String> {
    let failed = |s: tonic::Status| s.message().to_owned();
    let labels: HashMap<String, String> = ask.filter.labels.clone().into_iter().collect();
    let summary = client
        .fleet_summary(v1::FleetSummaryRequest {
            group_by: ask.by.clone(),
            labels: labels.clone(),
        })
        .await
        .map_err(failed)?
        .into_inner()
        .rows;
    let server = ask.filter.server.clone();
    let mut out = Fetched {
        summary,
        ..Fetched::default()
    };
    match ask.mode {
        Mode::Running => match &server {
            Some(id) => {
                let r = client
                    .get_activity(v1::GetActivityRequest {
                        server_id: id.clone(),
                        state: "active".into(),
                        ..Default::default()
                    })
                    .await
                    .map_err(failed)?
                    .into_inner();
                out.sessions = r
                    .sessions
                    .into_iter()
                    .map(|session| SessionLine {
                        server_id: id.clone(),
                        depth: 0,
                        session,
                    })
                    .collect();
            }
            None => {
                let r = client
                    .top_sessions(v1::TopSessionsRequest {
                        order_by: "query_age".into(),
                        labels,
                        limit: MAX_ROWS,
                    })
                    .await
                    .map_err(failed)?
                    .into_inner();
                out.sessions = r
                    .sessions
                    .into_iter()
                    .filter_map(|s| {
                        Some(SessionLine {
                            server_id: s.server_id,
                            depth: 0,
                            session: s.session?,
                        })
                    })
                    .collect();
            }
        },
        Mode::Waiting | Mode::Blocking => {
            let trees = client
                .blocking_trees(v1::BlockingTreesRequest {
                    server_id: server.unwrap_or_default(),
                    labels,
                })
                .await
                .map_err(failed)?
                .into_inner()
                .trees;
            // Every session of a tree, root first, for the blocking
            // screen; the waiters only for the waiting screen.
            for t in &trees {
                let Some(root) = &t.root else { continue };
                let mut nodes = Vec::new();
                flatten(root, 0, &mut nodes);
                for (depth, s) in nodes {
                    if ask.mode == Mode::Blocking || depth > 0 {
                        out.sessions.push(SessionLine {
                            server_id: t.server_id.clone(),
                            depth: if ask.mode == Mode::Blocking { depth } else { 0 },
                            session: s.clone(),
                        });
                    }
                }
            }
        }
        Mode::Pools => {
            let ids = match server {
                Some(id) => vec![id],
                None => ask.servers.iter().take(MAX_POOL_SERVERS).cloned().collect(),
            };
            let mut asked = tokio::task::JoinSet::new();
            for id in ids {
                let mut c = client.clone();
                asked.spawn(async move {
                    c.get_pools(v1::GetPoolsRequest { server_id: id })
                        .await
                        .map(|r| r.into_inner())
                });
            }
            while let Some(done) = asked.join_next().await {
                if let Ok(Ok(p)) = done {
                    out.pools.extend(pool_lines(&p));
                }
            }
            out.pools.sort_by(|a, b| {
                b.utilisation
                    .total_cmp(&a.utilisation)
                    .then(a.server_id.cmp(&b.server_id))
                    .then(a.pool.cmp(&b.pool))
            });
        }
    }
    Ok(out)
}

/// One server's pools as lines: its slots, each PgBouncer pool, each client pool.
fn pool_lines(p: &v1::GetPoolsResponse) -> Vec<PoolLine> {
    let server_id = p
        .server
        .as_ref()
        .map(|s| s.server_id.clone())
        .unwrap_or_default();
    let u = p.utilisation.clone().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(s) = &p.slots {
        out.push(PoolLine {
            server_id: server_id.clone(),
            pool: "connection slots".into(),
            kind: "server",
            used: s.used,
            capacity: s.max_connections.saturating_sub(s.reserved),
            waiting: 0,
            utilisation: u.slots,
        });
    }
    if let Some(b) = &p.pgbouncer {
        for (i, pool) in b.pools.iter().enumerate() {
            out.push(PoolLine {
                server_id: server_id.clone(),
                pool: format!("{}/{}", pool.database, pool.user),
                kind: "pgbouncer",
                used: pool.server_active_connections,
                capacity: pool.server_active_connections
                    + pool.server_idle_connections
                    + pool.server_used_connections,
                waiting: pool.client_waiting_connections,
                utilisation: u.pgbouncer_pools.get(i).copied().unwrap_or(0.0),
            });
        }
    }
    for (i, c) in p.client_pools.iter().enumerate() {
        out.push(PoolLine {
            server_id: server_id.clone(),
            pool: c.pool_name.clone(),
            kind: match v1::PoolKind::try_from(c.kind) {
                Ok(v1::PoolKind::Agent) => "agent",
                _ => "application",
            },
            used: c.used,
            capacity: c.max,
            waiting: c.pending_requests,
            utilisation: u.client_pools.get(i).copied().unwrap_or(0.0),
        });
    }
    out
}

fn draw(frame: &mut Frame, app: &mut App, now: Micros) {
    let area = frame.area();
    let header_rows = app.data.summary.len().clamp(1, 6) as u16 + 1;
    let [title, header, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(header_rows),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_title(frame, app, now, title);
    draw_summary(frame, app, header);
    draw_tabs(frame, app, tabs);
    match app.mode {
        Mode::Pools => draw_pools(frame, app, body),
        _ => draw_sessions(frame, app, body),
    }
    draw_footer(frame, app, footer);
    if let Some(line) = &app.detail {
        draw_detail(frame, line, area);
    }
}

fn draw_title(frame: &mut Frame, app: &App, now: Micros, area: Rect) {
    let (up, down, stale) =
        app.servers
            .values()
            .fold((0, 0, 0), |(u, d, s), v| match v.status.as_str() {
                "up" => (u + 1, d, s),
                "down" => (u, d + 1, s),
                _ => (u, d, s + 1),
            });
    let line = match &app.trouble {
        Some(why) => Line::from(vec![Span::styled(
            format!(" {} — retrying", one_line(why, area.width as usize)),
            Style::new()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
        )]),
        None => {
            let age = app
                .fetched_at
                .map(|t| format!(", read {} ago", human_duration(now - t)))
                .unwrap_or_default();
            let mut spans = vec![
                Span::styled("pgfleet top ", Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(format!("{} ", app.url)),
                Span::raw(format!("{} servers: {up} up", app.servers.len())),
            ];
            if down > 0 {
                spans.push(Span::styled(
                    format!(", {down} down"),
                    Style::new().fg(Color::Red),
                ));
            }
            if stale > 0 {
                spans.push(Span::styled(
                    format!(", {stale} stale"),
                    Style::new().fg(Color::Yellow),
                ));
            }
            spans.push(Span::raw(format!(
                "  every {}{age}",
                humantime::format_duration(app.interval())
            )));
            Line::from(spans)
        }
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_summary(frame: &mut Frame, app: &App, area: Rect) {
    let title = if app.by.is_empty() {
        "FLEET".to_owned()
    } else {
        app.by.to_uppercase()
    };
    let header = Row::new([
        title.as_str(),
        "SERVERS",
        "DOWN",
        "SESSIONS",
        "WAIT",
        "BLOCKED",
        "LONGEST XACT",
    ])
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let rows = app.data.summary.iter().map(|r| {
        let longest = r
            .longest_transaction
            .as_ref()
            .map(|d| {
                format!(
                    "{} {}",
                    human_duration(time::duration_micros(d)),
                    r.longest_transaction_server
                )
            })
            .unwrap_or_default();
        let down = r.servers_down + r.servers_stale;
        let style = if down > 0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        Row::new([
            Cell::from(if r.value.is_empty() {
                "-".to_owned()
            } else {
                r.value.clone()
            }),
            Cell::from(format!("{}/{}", r.servers_up, r.servers)),
            Cell::from(down.to_string()),
            Cell::from(r.sessions.to_string()),
            Cell::from(r.waiting_sessions.to_string()),
            Cell::from(r.blocked_sessions.to_string()),
            Cell::from(longest),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(9),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Min(12),
    ];
    frame.render_widget(Table::new(rows, widths).header(header), area);
}

fn draw_tabs(frame: &mut Frame, app: &App, area: Rect) {
    let mut spans = Vec::new();
    for (i, m) in [Mode::Running, Mode::Waiting, Mode::Blocking, Mode::Pools]
        .into_iter()
        .enumerate()
    {
        let text = format!(" F{} {} ", i + 1, m.title());
        spans.push(if m == app.mode {
            Span::styled(text, Style::new().fg(Color::Black).bg(Color::Cyan))
        } else {
            Span::raw(text)
        });
    }
    let mut about = format!(" sort:{}", app.sort.name());
    let filter = app.filter.describe();
    if !filter.is_empty() {
        about.push_str(&format!(" filter:{filter}"));
    }
    spans.push(Span::styled(about, Style::new().fg(Color::Cyan)));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_sessions(frame: &mut Frame, app: &mut App, area: Rect) {
    // Narrow terminals (80 columns over SSH) leave out the application and
    // the client; Enter shows them.
    let wide = area.width >= 120;
    let mut titles = vec!["SERVER", "PID", "DATABASE", "USER"];
    if wide {
        titles.extend(["APPLICATION", "CLIENT"]);
    }
    titles.extend(["STATE", "WAIT", "TIME", "QUERY"]);
    let header = Row::new(titles).style(Style::new().add_modifier(Modifier::REVERSED));
    let lines = app.lines();
    let empty = lines.is_empty();
    let rows: Vec<Row> = lines
        .iter()
        .map(|l| {
            let s = &l.session;
            let d = duration_us(s);
            let mut cells = vec![
                Cell::from(format!("{}{}", "  ".repeat(l.depth), l.server_id)),
                Cell::from(s.pid.to_string()),
                Cell::from(s.database.clone()),
                Cell::from(s.user.clone()),
            ];
            if wide {
                cells.push(Cell::from(s.application_name.clone()));
                cells.push(Cell::from(client_text(s).to_owned()));
            }
            cells.extend([
                Cell::from(short_state(&s.state)),
                Cell::from(wait_text(s)),
                Cell::from(human_duration(d)),
                Cell::from(one_line(&s.query, 400)),
            ]);
            let style = if !s.blocked_by.is_empty() {
                Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD)
            } else if d >= RED_AFTER_US {
                Style::new().fg(Color::Red)
            } else if d >= YELLOW_AFTER_US {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            Row::new(cells).style(style)
        })
        .collect();
    // 80 columns: 12+6+8+8+9+11+7 and 7 spaces leave 12 for the query.
    let mut widths = if wide {
        vec![
            Constraint::Length(16),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(14),
            Constraint::Length(15),
        ]
    } else {
        vec![
            Constraint::Length(12),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(8),
        ]
    };
    widths.extend([
        Constraint::Length(9),
        Constraint::Length(if wide { 18 } else { 11 }),
        Constraint::Length(7),
        Constraint::Min(10),
    ]);
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(table, area, &mut app.table);
    if empty {
        let what = match app.mode {
            Mode::Running => "No session is running a query.",
            Mode::Waiting => "No session waits for a lock.",
            Mode::Blocking => "No session blocks another.",
            Mode::Pools => "",
        };
        let [_, below] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
        frame.render_widget(Paragraph::new(format!(" {what}")), below);
    }
}

fn draw_pools(frame: &mut Frame, app: &mut App, area: Rect) {
    let header = Row::new(["SERVER", "POOL", "KIND", "USED", "OF", "WAITING", "USE"])
        .style(Style::new().add_modifier(Modifier::REVERSED));
    let rows: Vec<Row> = app
        .data
        .pools
        .iter()
        .map(|p| {
            let style = if p.waiting > 0 || p.utilisation >= 0.9 {
                Style::new().fg(Color::Red)
            } else if p.utilisation >= 0.75 {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            Row::new([
                p.server_id.clone(),
                p.pool.clone(),
                p.kind.to_owned(),
                p.used.to_string(),
                p.capacity.to_string(),
                p.waiting.to_string(),
                format!("{:.0}%", p.utilisation * 100.0),
            ])
            .style(style)
        })
        .collect();
    let widths = [
        Constraint::Length(14),
        Constraint::Min(18),
        Constraint::Length(11),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(5),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(table, area, &mut app.table);
}

fn draw_footer(frame: &mut Frame, app: &App, area: Rect) {
    let line = if let Some(text) = &app.typing {
        Line::from(vec![
            Span::styled("filter: ", Style::new().fg(Color::Cyan)),
            Span::raw(format!("{text}_")),
            Span::styled(
                "  (dc=eu1 db=… user=… app=… min=5s server=…; Enter, Esc)",
                Style::new().fg(Color::DarkGray),
            ),
        ])
    } else if let Some(notice) = &app.notice {
        Line::from(Span::styled(notice.clone(), Style::new().fg(Color::Red)))
    } else {
        Line::from(Span::styled(
            "q quit  1-4 screens  / filter  s sort  +/- refresh  Enter query  ↑↓ select",
            Style::new().fg(Color::DarkGray),
        ))
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_detail(frame: &mut Frame, line: &SessionLine, area: Rect) {
    let s = &line.session;
    let popup = Rect {
        x: area.x + 2,
        y: area.y + 2,
        width: area.width.saturating_sub(4),
        height: area.height.saturating_sub(4),
    };
    let age = |d: &Option<prost_types::Duration>| {
        d.as_ref()
            .map(|d| human_duration(time::duration_micros(d)))
            .unwrap_or_else(|| "-".into())
    };
    let blocked: Vec<String> = s.blocked_by.iter().map(i32::to_string).collect();
    let text = vec![
        Line::from(format!(
            "{} pid {}  {}@{}  {}",
            line.server_id, s.pid, s.user, s.database, s.application_name
        )),
        Line::from(format!(
            "client {}  state {}  wait {} {}",
            client_text(s),
            s.state,
            s.wait_event_type,
            s.wait_event
        )),
        Line::from(format!(
            "transaction {}  query {}  state {}{}",
            age(&s.xact_age),
            age(&s.query_age),
            age(&s.state_age),
            if blocked.is_empty() {
                String::new()
            } else {
                format!("  blocked by {}", blocked.join(","))
            }
        )),
        Line::from(""),
        Line::from(s.query.clone()),
    ];
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" query (Esc to close) "),
        ),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn session(pid: i32, db: &str, secs: i64, blocked_by: Vec<i32>) -> v1::Session {
        v1::Session {
            pid,
            database: db.into(),
            user: "app".into(),
            state: "active".into(),
            query: format!("SELECT {pid}"),
            duration: Some(time::duration(secs * 1_000_000)),
            blocked_by,
            ..Default::default()
        }
    }

    fn app() -> App {
        App::new("http://c:7600".into(), "dc".into(), Filter::default(), 2)
    }

    fn press(app: &mut App, code: KeyCode) -> Answer {
        app.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn screen(app: &mut App, width: u16, height: u16) -> String {
        let mut terminal = ratatui::Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, app, 0)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn filters_parse_and_say_what_is_wrong() {
        let f = Filter::parse("dc=eu1 db=orders user=app app=web min=5s server=db-1").unwrap();
        assert_eq!(f.labels["dc"], "eu1");
        assert_eq!(f.database.as_deref(), Some("orders"));
        assert_eq!(f.min_duration_us, 5_000_000);
        assert_eq!(Filter::parse(&f.describe()).unwrap(), f);
        assert!(Filter::parse("orders").unwrap_err().contains("key=value"));
        assert!(Filter::parse("min=soon").unwrap_err().contains("duration"));
        assert_eq!(Filter::parse("").unwrap(), Filter::default());
    }

    #[test]
    fn keys_switch_screens_sort_filter_and_quit() {
        let mut a = app();
        assert_eq!(press(&mut a, KeyCode::Char('3')), Answer::Refresh);
        assert_eq!(a.mode, Mode::Blocking);
        assert_eq!(press(&mut a, KeyCode::F(4)), Answer::Refresh);
        assert_eq!(a.mode, Mode::Pools);
        press(&mut a, KeyCode::Char('+'));
        assert_eq!(a.interval(), Duration::from_secs(5));
        for _ in 0..20 {
            press(&mut a, KeyCode::Char('-'));
        }
        assert_eq!(a.interval(), Duration::from_millis(500));
        press(&mut a, KeyCode::Char('s'));
        assert_eq!(a.sort, Sort::Server);
        press(&mut a, KeyCode::Char('/'));
        for c in "db=x".chars() {
            press(&mut a, KeyCode::Char(c));
        }
        assert_eq!(press(&mut a, KeyCode::Enter), Answer::Refresh);
        assert_eq!(a.filter.database.as_deref(), Some("x"));
        press(&mut a, KeyCode::Char('/'));
        for c in " nonsense".chars() {
            press(&mut a, KeyCode::Char(c));
        }
        assert_eq!(press(&mut a, KeyCode::Enter), Answer::Redraw);
        assert!(a.notice.as_deref().unwrap_or("").contains("key=value"));
        assert_eq!(press(&mut a, KeyCode::Char('q')), Answer::Quit);
    }

    #[test]
    fn sessions_fit_80_columns_sorted_by_duration_with_the_query_on_enter() {
        let mut a = app();
        a.data.sessions = [(1, 5), (2, 400), (3, 70)]
            .into_iter()
            .map(|(pid, secs)| SessionLine {
                server_id: "db-1".into(),
                depth: 0,
                session: session(pid, "orders", secs, Vec::new()),
            })
            .collect();
        let text = screen(&mut a, 80, 24);
        let pids: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("db-1"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or(""))
            .collect();
        assert_eq!(pids, ["2", "3", "1"], "{text}");
        assert!(
            text.contains("6m40s") && !text.contains("APPLICATION"),
            "{text}"
        );
        press(&mut a, KeyCode::Down);
        press(&mut a, KeyCode::Enter);
        let text = screen(&mut a, 80, 24);
        assert!(
            text.contains("query (Esc to close)") && text.contains("SELECT 3"),
            "{text}"
        );
        press(&mut a, KeyCode::Esc);
        assert!(a.detail.is_none());
        // A wide terminal has room for the application and the client.
        assert!(screen(&mut a, 160, 30).contains("APPLICATION"));
    }

    #[test]
    fn a_lost_collector_is_said_on_screen() {
        let mut a = app();
        a.trouble = Some("cannot reach the collector at http://c:7600: refused".into());
        let text = screen(&mut a, 80, 24);
        assert!(
            text.lines()
                .next()
                .unwrap_or("")
                .contains("cannot reach the collector"),
            "{text}"
        );
    }
}
