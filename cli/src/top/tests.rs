//! top's screens and keys on ratatui's TestBackend.

use pgfleet_proto::time;
use pgfleet_proto::v1;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::time::Duration;

use super::keys::Answer;
use super::screens::draw;
use super::state::{App, Filter, Mode, SessionLine, Sort};
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
