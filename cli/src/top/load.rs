//! Each server's DB load as top shows it: the load column's number and
//! sparkline, and the load screen (F5), from the `LoadNow` of every server
//! the Watch stream gives.

use pgfleet_proto::v1;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};

use super::state::App;

/// How many of a server's recent loads (one per 10 s) the load column draws.
pub(super) const SPARK: usize = 10;

/// A sparkline's bars, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last `n` of `values` as bars, scaled to the highest of them (and to
/// no less than one session, so that an idle server stays low); padded on
/// the left to `n` so that a column does not shift while history builds.
pub(super) fn sparkline(values: &[f64], n: usize) -> String {
    let last = &values[values.len().saturating_sub(n)..];
    let top = last.iter().copied().fold(1.0, f64::max);
    let bars = last.iter().map(|v| {
        let level = (v.max(0.0) / top * 7.0).round() as usize;
        BARS[level.min(BARS.len() - 1)]
    });
    std::iter::repeat_n(' ', n - last.len())
        .chain(bars)
        .collect()
}

/// A server's load as the load column shows it: the number, one decimal,
/// then the sparkline of its last [`SPARK`] loads.
pub(super) fn load_text(load: &v1::LoadNow) -> String {
    format!("{:>4.1} {}", load.load, sparkline(&load.recent, SPARK))
}

/// A wait type's colour on the load screen (CPU green, IO blue, Lock red,
/// as DB load charts usually draw them).
fn wait_colour(wait_type: &str) -> Color {
    match wait_type {
        "CPU" => Color::Green,
        "IO" => Color::Blue,
        "Lock" => Color::Red,
        "LWLock" => Color::Magenta,
        "IPC" => Color::Cyan,
        "Client" => Color::Yellow,
        _ => Color::Reset,
    }
}

/// Each server's DB load now (the last 10 s), its last minutes as a
/// sparkline, and the share of each wait type, the most loaded first.
pub(super) fn draw_load(frame: &mut Frame, app: &mut App, area: Rect) {
    // Thirty values (5 minutes) when there is room, fifteen otherwise.
    let recent = if area.width >= 110 { 30 } else { 15 };
    let servers = app.loads();
    let empty = servers.is_empty();
    let server_width = servers
        .iter()
        .map(|s| Span::raw(s.server_id.as_str()).width())
        .max()
        .unwrap_or(0)
        .clamp(6, 28);
    let rows: Vec<Row> = servers
        .iter()
        .map(|s| {
            let load = s.load.clone().unwrap_or_default();
            let (number, waits, style) = match s.status.as_str() {
                "up" => {
                    let mut spans = Vec::new();
                    for w in &load.by_wait_type {
                        let share = if load.load > 0.0 {
                            w.value / load.load * 100.0
                        } else {
                            0.0
                        };
                        spans.push(Span::styled(
                            format!("{} {share:.0}%", w.key),
                            Style::new().fg(wait_colour(&w.key)),
                        ));
                        spans.push(Span::raw("  "));
                    }
                    if spans.is_empty() {
                        spans.push(Span::styled("idle", Style::new().fg(Color::DarkGray)));
                    }
                    (format!("{:.1}", load.load), Line::from(spans), Style::new())
                }
                status => (
                    "-".to_owned(),
                    Line::from(format!("{status}: {}", s.reason)),
                    Style::new().fg(if status == "down" {
                        Color::Red
                    } else {
                        Color::Yellow
                    }),
                ),
            };
            Row::new([
                Cell::from(s.server_id.clone()),
                Cell::from(number),
                Cell::from(sparkline(&load.recent, recent)),
                Cell::from(waits),
            ])
            .style(style)
        })
        .collect();
    let header = Row::new([
        "SERVER",
        "LOAD",
        if recent == 30 {
            "LAST 5 MIN"
        } else {
            "LAST 150 S"
        },
        "BY WAIT TYPE",
    ])
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let widths = [
        Constraint::Length(u16::try_from(server_width).unwrap_or(28)),
        Constraint::Length(5),
        Constraint::Length(recent as u16),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(table, area, &mut app.table);
    if empty {
        let [_, below] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
        frame.render_widget(
            Paragraph::new(" No server yet, or none the filter keeps."),
            below,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_their_highest_and_keep_their_width() {
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 4.0], 4), "▁▃▅█");
        assert_eq!(
            sparkline(&[0.0, 0.5, 1.0], 3),
            "▁▅█",
            "scaled to one session"
        );
        assert_eq!(sparkline(&[0.1, 0.2], 5), "   ▂▂");
        assert_eq!(sparkline(&[9.0, 1.0, 2.0], 2), "▅█", "the last two only");
        assert_eq!(sparkline(&[], 3), "   ");
    }
}
