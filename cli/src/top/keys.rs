//! What each key does to the screen's state.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::INTERVALS;
use super::state::{App, Filter, Mode};

impl App {
    /// Answers a key; false when it is time to quit.
    pub(super) fn key(&mut self, key: KeyEvent) -> Answer {
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
            KeyCode::F(5) | KeyCode::Char('5') => Some(Mode::Load),
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
                if self.mode.of_sessions() {
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

    pub(super) fn select(&mut self, rows: usize, step: impl Fn(usize) -> usize) {
        let at = step(self.table.selected().unwrap_or(0));
        self.table.select(Some(at.min(rows.saturating_sub(1))));
    }
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Redraw,
    Refresh,
    Quit,
}
