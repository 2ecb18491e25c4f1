//! DB load over a past range, from the collector's 10 s and 1 min buckets:
//! `pgfleet load` (stacked series, the `QueryLoad` RPC), `pgfleet
//! top-queries` (`TopQueries`) and `pgfleet churn` (`GetChurn`). They share
//! how the servers and the range are chosen, [`Selection`].

mod churn;
mod queries;
mod series;

use pgfleet_common::settings;
use pgfleet_proto::time::Micros;

pub use churn::{ChurnArgs, churn};
pub use queries::{TopQueriesArgs, top_queries};
pub use series::{LoadArgs, load};

use super::CliError;
use super::metrics::parse_range;
use super::output::Table;

/// Which servers and which range a load command reads.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Selection {
    /// One server's server_id, as `pgfleet servers` lists it [default: every server the flags select]
    pub server: Option<String>,
    /// How far back the range reaches from its end, like 15m, 1h or 7d (a collector keeps 10 s detail for 24 h and 1 min detail for 30 days by default)
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub range: String,
    /// The range's end, like 2026-11-24T04:00:00Z [default: now]
    #[arg(long, value_name = "TIME")]
    pub end: Option<String>,
    /// Only servers with this label, repeatable
    #[arg(long = "label", value_name = "NAME=VALUE")]
    pub labels: Vec<String>,
    /// Only what matches, PromQL-style, repeatable: on a label (dc=eu1), server_id, or a dimension (wait="Lock:tuple", user=~"app.*", query=<fingerprint>)
    #[arg(long = "match", value_name = "MATCHER")]
    pub matchers: Vec<String>,
}

/// A [`Selection`] checked: the range, and the matchers the flags make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The range, in microseconds since the epoch.
    pub start: Micros,
    pub end: Micros,
    /// `--label N=V` as `N="V"`, then `--match` as given.
    pub matchers: Vec<String>,
    /// The SERVER argument; empty for every server.
    pub server_id: String,
}

impl Selection {
    /// Checks the flags: the range, the labels (the matchers are for the
    /// collector to check).
    pub fn choose(&self) -> Result<Chosen, CliError> {
        let (start, end) = parse_range(&self.range, self.end.as_deref())?;
        let labels = settings::parse_labels(self.labels.iter().map(String::as_str))?;
        let mut matchers: Vec<String> = labels
            .iter()
            .map(|(name, value)| equal(name, value))
            .collect();
        matchers.extend(self.matchers.iter().map(|m| m.trim().to_owned()));
        Ok(Chosen {
            start,
            end,
            matchers,
            server_id: self.server.as_deref().unwrap_or_default().trim().to_owned(),
        })
    }
}

impl Chosen {
    /// The matchers with the server as a `server_id="…"` one, for a request
    /// that has no server_id of its own.
    pub fn matchers_with_server(&self) -> Vec<String> {
        let mut matchers = self.matchers.clone();
        if !self.server_id.is_empty() {
            matchers.insert(0, equal("server_id", &self.server_id));
        }
        matchers
    }
}

/// `name="value"`: the collector takes everything between the outer quotes.
fn equal(name: &str, value: &str) -> String {
    format!("{name}=\"{value}\"")
}

/// The widest text a table shows when stdout is not a terminal (as the
/// sessions' queries); CSV and JSON have it whole.
const TEXT_WIDTH: usize = 80;

/// The least room a statement's text keeps in a narrow terminal.
const LEAST_TEXT: usize = 20;

/// A table whose last column is a statement's text, as printed: fitted to
/// `width` (the terminal's), or with texts of [`TEXT_WIDTH`] characters
/// when stdout is not a terminal.
fn fitted(table: &Table, width: Option<usize>) -> String {
    match width {
        Some(width) => table.render_within(width, LEAST_TEXT),
        None => table.render_within(0, TEXT_WIDTH),
    }
}

/// How much of a text fits after `taken` characters of a line `width` wide.
fn text_room(width: Option<usize>, taken: usize) -> usize {
    width.map_or(TEXT_WIDTH, |w| w.saturating_sub(taken).max(LEAST_TEXT))
}

/// Several names on one line: the first few, then how many more.
fn names(items: &[String], most: usize) -> String {
    let mut out = items
        .iter()
        .take(most)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > most {
        out.push_str(&format!(" and {} more", items.len() - most));
    }
    out
}

#[cfg(test)]
mod tests;
