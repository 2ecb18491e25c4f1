//! Drawing: the title, the summary per label value, the tabs, the sessions,
//! pools or load table, the footer, and a session's popup.

use pgfleet_proto::time::{self, Micros};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};

use super::columns::lay_out;
use super::load::draw_load;
use super::state::{App, Mode, SessionLine, duration_us};
use super::{RED_AFTER_US, YELLOW_AFTER_US};
use crate::fleet::client_text;
use crate::output::{human_duration, one_line};

pub(super) fn draw(frame: &mut Frame, app: &mut App, now: Micros) {
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
        Mode::Load => draw_load(frame, app, body),
        _ => draw_sessions(frame, app, body),
    }
    draw_footer(frame, app, footer);
    if let Some(line) = &app.detail {
        draw_detail(frame, line, area);
    }
}

pub(super) fn draw_title(frame: &mut Frame, app: &App, now: Micros, area: Rect) {
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

pub(super) fn draw_summary(frame: &mut Frame, app: &App, area: Rect) {
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

/// The screens' tabs, then the sort and the filter. When that is wider than
/// the terminal, the screens not shown keep only their key (F2), so that
/// the filter stays in view.
pub(super) fn draw_tabs(frame: &mut Frame, app: &App, area: Rect) {
    let mut about = format!(" sort:{}", app.sort.name());
    let filter = app.filter.describe();
    if !filter.is_empty() {
        about.push_str(&format!(" filter:{filter}"));
    }
    let whole = |i: usize, m: Mode| format!(" F{} {} ", i + 1, m.title());
    let wide: usize = Mode::ALL
        .into_iter()
        .enumerate()
        .map(|(i, m)| whole(i, m).chars().count())
        .sum::<usize>()
        + about.chars().count();
    let compact = wide > usize::from(area.width);
    let mut spans = Vec::new();
    for (i, m) in Mode::ALL.into_iter().enumerate() {
        spans.push(if m == app.mode {
            Span::styled(whole(i, m), Style::new().fg(Color::Black).bg(Color::Cyan))
        } else if compact {
            Span::raw(format!(" F{} ", i + 1))
        } else {
            Span::raw(whole(i, m))
        });
    }
    spans.push(Span::styled(about, Style::new().fg(Color::Cyan)));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

pub(super) fn draw_sessions(frame: &mut Frame, app: &mut App, area: Rect) {
    let lines = app.lines();
    let empty = lines.is_empty();
    // As wide as their values, the query given the rest; on a narrow
    // terminal whole columns go (Enter shows them).
    let laid = lay_out(&lines, &app.servers, area.width);
    let header = Row::new(laid.columns.iter().map(|(c, _)| c.title()))
        .style(Style::new().add_modifier(Modifier::REVERSED));
    let rows: Vec<Row> = lines
        .iter()
        .zip(laid.cells)
        .map(|(l, cells)| {
            let s = &l.session;
            let d = duration_us(s);
            let cells = cells.into_iter().map(Cell::from);
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
    let widths = laid.columns.iter().map(|(_, w)| Constraint::Length(*w));
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(table, area, &mut app.table);
    if empty {
        let what = match app.mode {
            Mode::Running => "No session is running a query.",
            Mode::Waiting => "No session waits for a lock.",
            Mode::Blocking => "No session blocks another.",
            Mode::Pools | Mode::Load => "",
        };
        let [_, below] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
        frame.render_widget(Paragraph::new(format!(" {what}")), below);
    }
}

pub(super) fn draw_pools(frame: &mut Frame, app: &mut App, area: Rect) {
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

pub(super) fn draw_footer(frame: &mut Frame, app: &App, area: Rect) {
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
            "q quit  1-5 screens  / filter  s sort  +/- refresh  Enter query  ↑↓ select",
            Style::new().fg(Color::DarkGray),
        ))
    };
    frame.render_widget(Paragraph::new(line), area);
}

pub(super) fn draw_detail(frame: &mut Frame, line: &SessionLine, area: Rect) {
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
