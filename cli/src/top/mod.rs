//! `pgfleet top`: a live, full-screen view of the whole fleet, with the keys of
//! pg_activity.
//!
//! A `Watch` stream keeps the list of servers, their health and their DB
//! load current (and tells at once when the collector goes away): the load
//! column of the sessions and the load screen (F5) come from it. The summary
//! and the sessions are read again every refresh interval. Fetching runs
//! beside the screen, so keys are answered while a slow or absent collector
//! is waited for. Drawing goes through ratatui, which writes only the cells
//! that changed: no flicker, even over SSH.

mod columns;
mod fetch;
mod keys;
mod load;
mod screens;
mod state;

use std::time::Duration;

use pgfleet_common::settings;
use pgfleet_proto::time::now_micros;
use ratatui::crossterm::event::{self, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::CliError;
use crate::remote::{Remote, connect};
use fetch::{Refreshed, WatchNews, read, watch};
use keys::Answer;
use screens::draw;
use state::{App, Filter};

use crate::remote::Client;

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
    after_help = "Keys: F1/1 running, F2/2 waiting, F3/3 blocking (as trees), F4/4 pools, \
F5/5 load by wait (each server's DB load and its wait types, most loaded first); / filter (dc=eu1 db=orders user=app app=web min=5s server=db-1); s sort; \
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
    let remote = Remote {
        timeout: Some(remote.timeout.unwrap_or(crate::remote::TOP_TIMEOUT)),
        ..remote.clone()
    };
    run(&mut terminal, &mut app, &remote).await
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
                let read = read(&mut client, &ask, &remote).await;
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

#[cfg(test)]
mod tests;
