//! How results are printed: aligned tables for people, JSON and CSV for tools.

use serde::Deserialize;

/// An output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Aligned columns for people
    #[default]
    Table,
    /// An array of objects whose keys are the proto field names, for tools
    Json,
    /// The table's columns as RFC 4180 CSV, with whole query texts and
    /// durations in seconds, for spreadsheets
    Csv,
}

/// A duration cell: as a person reads it in a table, in seconds in CSV.
pub fn duration_cell(us: i64, output: Output) -> String {
    match output {
        Output::Csv => format!("{:.3}", us.max(0) as f64 / 1e6),
        _ => human_duration(us),
    }
}

/// A table built row by row and printed with aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Inserts a column title at `i` (its cells come with the rows).
    pub fn insert_column(&mut self, i: usize, title: &str) {
        self.header
            .insert(i.min(self.header.len()), title.to_owned());
    }

    /// Gives column `i` another title.
    pub fn rename(&mut self, i: usize, title: String) {
        if let Some(h) = self.header.get_mut(i) {
            *h = title;
        }
    }

    /// Adds a row; it must have one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The table as `output` prints it: aligned, or CSV.
    pub fn show(&self, output: Output) -> String {
        match output {
            Output::Csv => self.csv(),
            _ => self.render(),
        }
    }

    /// The table as RFC 4180 CSV: a header row, then the rows; a cell with a
    /// comma, a quote or a line break is quoted, its quotes doubled.
    pub fn csv(&self) -> String {
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if cell.contains([',', '"', '\n', '\r']) {
                    out.push('"');
                    out.push_str(&cell.replace('"', "\"\""));
                    out.push('"');
                } else {
                    out.push_str(cell);
                }
            }
            out.push_str("\r\n");
        }
        out
    }

    /// Each column's width: its widest cell.
    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        widths
    }

    /// The table as text within `width` characters: the last column (a
    /// query's text) cut with "…" to what the other columns leave, and to no
    /// fewer than `least`.
    pub fn render_within(&self, width: usize, least: usize) -> String {
        let widths = self.widths();
        let before: usize = widths.iter().rev().skip(1).map(|w| w + 2).sum();
        let room = width.saturating_sub(before).max(least);
        let cut = |row: &Vec<String>| {
            let mut row = row.clone();
            if let Some(last) = row.last_mut() {
                *last = one_line(last, room);
            }
            row
        };
        Table {
            header: self.header.clone(),
            rows: self.rows.iter().map(cut).collect(),
        }
        .render()
    }

    /// The table as text, each column as wide as its widest cell; the last column
    /// is not padded.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i == last {
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
                }
            }
            let trimmed = out.trim_end_matches(' ').len();
            out.truncate(trimmed);
            out.push('\n');
        }
        out
    }
}

/// A span of microseconds as a person reads it: "0.4s", "12s", "3m04s", "2h03m",
/// "4d06h".
pub fn human_duration(us: i64) -> String {
    let us = us.max(0);
    let s = us / 1_000_000;
    match s {
        0..10 => format!("{}.{}s", s, (us % 1_000_000) / 100_000),
        10..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Text on one line (whitespace collapsed), cut to `max` characters with "…".
pub fn one_line(text: &str, max: usize) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > max {
        line = line.chars().take(max.saturating_sub(1)).collect::<String>() + "…";
    }
    line
}

/// The terminal's width when stdout is one, else `$COLUMNS` when set.
pub fn terminal_width() -> Option<usize> {
    if std::io::IsTerminal::is_terminal(&std::io::stdout())
        && let Ok((width, _)) = ratatui::crossterm::terminal::size()
        && width > 0
    {
        return Some(usize::from(width));
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|w| *w > 0)
}

/// Pretty JSON of any serialisable value.
pub fn json<T: serde::Serialize>(value: &T) -> String {
    // Serialising the generated messages cannot fail: every field is a plain value.
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_leave_no_trailing_spaces() {
        let mut t = Table::new(&["PID", "STATE", "QUERY"]);
        t.row(vec!["7".into(), "idle in transaction".into(), "".into()]);
        t.row(vec!["12345".into(), "active".into(), "select 1".into()]);
        assert_eq!(
            t.render(),
            "PID    STATE                QUERY\n7      idle in transaction\n12345  active               select 1\n"
        );
    }

    #[test]
    fn csv_quotes_what_must_be_quoted() {
        let mut t = Table::new(&["PID", "QUERY"]);
        t.row(vec!["7".into(), "SELECT a, \"b\" FROM t".into()]);
        t.row(vec!["8".into(), "SELECT 1".into()]);
        assert_eq!(
            t.csv(),
            "PID,QUERY\r\n7,\"SELECT a, \"\"b\"\" FROM t\"\r\n8,SELECT 1\r\n"
        );
        assert_eq!(duration_cell(1_500_000, Output::Csv), "1.500");
        assert_eq!(duration_cell(1_500_000, Output::Table), "1.5s");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(400_000), "0.4s");
        assert_eq!(human_duration(12_000_000), "12s");
        assert_eq!(human_duration(184_000_000), "3m04s");
        assert_eq!(human_duration(7_380_000_000), "2h03m");
        assert_eq!(human_duration(367_200_000_000), "4d06h");
    }

    #[test]
    fn the_last_column_is_cut_to_the_width_the_others_leave() {
        let mut t = Table::new(&["LOAD", "TEXT"]);
        t.row(vec![
            "1.50".into(),
            "SELECT * FROM accounts WHERE id = $1".into(),
        ]);
        let text = t.render_within(20, 5);
        assert_eq!(text, "LOAD  TEXT\n1.50  SELECT * FROM\u{2026}\n");
        assert!(text.lines().all(|l| l.chars().count() <= 20), "{text}");
        // Never under `least`, however narrow.
        assert_eq!(
            t.render_within(3, 5).lines().nth(1),
            Some("1.50  SELE\u{2026}")
        );
    }

    #[test]
    fn queries_fit_on_one_line() {
        assert_eq!(one_line("select\n  1,\t2", 80), "select 1, 2");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
