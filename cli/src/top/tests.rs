//! top's screens and keys on ratatui's TestBackend.

use pgfleet_proto::time;
use pgfleet_proto::v1;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::time::Duration;

use super::keys::Answer;
use super::load::{load_text, sparkline};
use super::screens::draw;
use super::state::{App, Filter, Mode, SessionLine, Sort};
use ratatui::backend::TestBackend;
use std::collections::BTreeMap;

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
    assert_eq!(press(&mut a, KeyCode::F(5)), Answer::Refresh);
    assert_eq!(a.mode, Mode::Load);
    assert_eq!(
        press(&mut a, KeyCode::Char('5')),
        Answer::Redraw,
        "already there"
    );
    press(&mut a, KeyCode::Enter);
    assert!(a.detail.is_none(), "Enter shows sessions only");
    assert_eq!(press(&mut a, KeyCode::Char('4')), Answer::Refresh);
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
    // With a filter, the tabs of the other screens keep only their keys on
    // 80 columns, and the filter stays in view.
    let tabs = screen(&mut a, 80, 24);
    let tabs = tabs
        .lines()
        .find(|l| l.contains(" F4 pools "))
        .unwrap_or("");
    assert!(
        tabs.starts_with(" F1  F2  F3  F4 pools  F5  sort:server filter:db=x"),
        "{tabs}"
    );
    let wide = screen(&mut a, 120, 24);
    assert!(wide.contains(" F1 running  F2 waiting  F3 blocking  F4 pools  F5 load by wait  sort:server filter:db=x"), "{wide}");
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

/// A server as the Watch stream gives it: up, with its load now, its waits
/// and its last five minutes.
fn server(id: &str, dc: &str, load: f64, waits: &[(&str, f64)]) -> v1::Server {
    v1::Server {
        server_id: id.into(),
        labels: BTreeMap::from([("dc".to_owned(), dc.to_owned())])
            .into_iter()
            .collect(),
        status: "up".into(),
        up: true,
        load: Some(v1::LoadNow {
            load,
            by_wait_type: waits
                .iter()
                .map(|(k, v)| v1::KeyValue {
                    key: (*k).into(),
                    value: *v,
                })
                .collect(),
            recent: (0..30).map(|i| load * f64::from(i) / 29.0).collect(),
            minutes: Vec::new(),
        }),
        ..Default::default()
    }
}

fn fleet(a: &mut App) {
    let down = v1::Server {
        server_id: "db-3".into(),
        status: "down".into(),
        reason: "connection refused".into(),
        ..Default::default()
    };
    for s in [
        server("db-1", "eu1", 0.5, &[("CPU", 0.5)]),
        server("db-2", "us1", 3.0, &[("Lock", 2.0), ("CPU", 1.0)]),
        server("db-4", "eu1", 0.0, &[]),
        down,
    ] {
        a.servers.insert(s.server_id.clone(), s);
    }
}

#[test]
fn the_load_screen_lists_servers_by_load_with_their_wait_types() {
    let mut a = app();
    fleet(&mut a);
    press(&mut a, KeyCode::F(5));
    let text = screen(&mut a, 80, 24);
    assert!(text.contains(" F5 load by wait "), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("db-")).collect();
    let ids: Vec<&str> = rows
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["db-2", "db-1", "db-3", "db-4"], "{text}");
    assert!(
        rows[0].contains(" 3.0 ") && rows[0].contains("Lock 67%  CPU 33%"),
        "{text}"
    );
    // Fifteen of the recent loads on 80 columns, rising to the top bar.
    let recent = &a.servers["db-2"].load.as_ref().unwrap().recent;
    assert_eq!(sparkline(recent, 15), "▅▅▅▅▆▆▆▆▇▇▇▇███");
    assert!(rows[0].contains(&sparkline(recent, 15)), "{text}");
    assert!(
        rows[1].contains(" 0.5 ") && rows[1].contains("CPU 100%"),
        "{text}"
    );
    assert!(rows[2].contains("down: connection refused"), "{text}");
    assert!(rows[3].contains("idle"), "{text}");
    assert_eq!(a.row_count(), 4);
    // A wide terminal draws the whole five minutes; the filter applies.
    assert!(screen(&mut a, 120, 24).contains("LAST 5 MIN"));
    a.filter = Filter::parse("dc=eu1").unwrap();
    let ids: Vec<String> = a.loads().iter().map(|s| s.server_id.clone()).collect();
    assert_eq!(ids, ["db-1", "db-4"]);
    a.filter = Filter::parse("server=db-2").unwrap();
    assert_eq!(a.row_count(), 1);
}

#[test]
fn sessions_show_their_servers_load_when_there_is_room() {
    let mut a = app();
    fleet(&mut a);
    a.data.sessions = vec![SessionLine {
        server_id: "db-2".into(),
        depth: 0,
        session: session(7, "orders", 5, Vec::new()),
    }];
    let wide = screen(&mut a, 160, 24);
    let header = wide.lines().find(|l| l.starts_with("SERVER")).unwrap_or("");
    assert!(header.starts_with("SERVER LOAD"), "{wide}");
    let row = wide.lines().find(|l| l.starts_with("db-2")).unwrap_or("");
    let load = a.servers["db-2"].load.clone().unwrap_or_default();
    assert!(row.contains(&load_text(&load)), "{row}");
    assert!(load_text(&load).ends_with("▆▆▆▇▇▇▇███"), "rising: {row}");
    // After the database, the load goes so that the query keeps its third;
    // the state stays.
    let medium = screen(&mut a, 70, 24);
    assert!(
        medium.contains("LOAD") && !medium.contains("DATABASE"),
        "{medium}"
    );
    let narrow = screen(&mut a, 60, 24);
    assert!(
        !narrow.contains("LOAD") && narrow.contains("STATE"),
        "{narrow}"
    );
}
