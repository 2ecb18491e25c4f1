//! `pgfleet load`: DB load (average active sessions) over a past range,
//! stacked by a dimension, by server or by a label: one row per step, one
//! column per series.

use std::collections::{BTreeMap, BTreeSet};

use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;

use super::{Selection, text_room};
use crate::CliError;
use crate::metrics::parse_step;
use crate::output::{Output, Table, json, one_line, terminal_width};
use crate::remote::{Remote, call_failed, connect};

/// A step is said to miss samples when fewer than this share of those
/// expected were taken.
const COVERED: f64 = 0.9;

/// The most gaps said one by one.
const MOST_GAPS: usize = 5;

/// The last 10 s of a range: the collector's open bucket, not stored yet.
const OPEN_US: Micros = 10_000_000;

/// Which sessions `pgfleet load` counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sessions {
    /// Active client sessions: DB load
    #[default]
    Active,
    /// Client sessions idle in a transaction: they hold slots and locks, but are not load
    #[value(alias = "idle_in_transaction")]
    IdleInTransaction,
    /// Background processes at work (autovacuum, walsender, …)
    Background,
}

impl From<Sessions> for v1::LoadSessions {
    fn from(s: Sessions) -> Self {
        match s {
            Sessions::Active => v1::LoadSessions::Active,
            Sessions::IdleInTransaction => v1::LoadSessions::IdleInTransaction,
            Sessions::Background => v1::LoadSessions::Background,
        }
    }
}

const EXAMPLES: &str = "\
Examples:
  pgfleet load --range 1h --by wait               # the fleet's load by wait event
  pgfleet load orders-db-1 --range 15m --step 10s --by query
  pgfleet load --range 1d --step 5m --by dc --match wait_type=Lock
  pgfleet load --range 2h --by user --sessions idle-in-transaction
  pgfleet load --range 1h --by application --match 'query=\"3f2a9c0d1e4b5a67\"'

Load at a step is the average number of sessions counted over the samples
taken in it; steps with fewer samples than expected are named below the table.";

/// What `pgfleet load` asks.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct LoadArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// What to stack by: wait, wait_type, query, user, database, application, client, backend_type, server, or a label name such as dc [default: one series, the total]
    #[arg(long, value_name = "DIMENSION")]
    pub by: Option<String>,
    /// One point per step: a whole number of 10 s (10 s detail is kept 24 h) or of minutes, like 10s, 1m or 1h [default: the collector's, about 120 points, or 1h for a day or more by a dimension over some 140 servers or more]
    #[arg(long, value_name = "DURATION")]
    pub step: Option<String>,
    /// Which sessions count
    #[arg(long, value_enum, default_value_t = Sessions::Active)]
    pub sessions: Sessions,
    /// At most this many series, the largest; the rest are summed into one named "other" (at most 200) [default: 20]
    #[arg(long)]
    pub limit: Option<u32>,
}

impl LoadArgs {
    /// The `QueryLoad` request these flags make.
    pub fn request(&self) -> Result<v1::QueryLoadRequest, CliError> {
        let chosen = self.selection.choose()?;
        Ok(v1::QueryLoadRequest {
            start: Some(time::timestamp(chosen.start)),
            end: Some(time::timestamp(chosen.end)),
            step: self.step.as_deref().map(parse_step).transpose()?,
            group_by: self.by.as_deref().unwrap_or_default().trim().to_owned(),
            matchers: chosen.matchers_with_server(),
            sessions: v1::LoadSessions::from(self.sessions) as i32,
            limit: self.limit.unwrap_or(0),
        })
    }
}

/// `pgfleet load [SERVER]`.
pub async fn load(remote: &Remote, output: Output, args: LoadArgs) -> Result<(), CliError> {
    let request = args.request()?;
    let mut client = connect(remote).await?;
    let response = client
        .query_load(request.clone())
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!(
        "{}",
        render_load(&response, &request, output, terminal_width())
    );
    if output == Output::Csv {
        for note in gaps(&response, &request) {
            eprintln!("pgfleet: {note}");
        }
    }
    Ok(())
}

/// The series as a table (one row per step, a column per series, "-" at a
/// step without samples, then each series' average; a legend of the
/// queries; the gaps), as CSV rows of time, key and value, or as the JSON of
/// `QueryLoadResponse`. `width` is the terminal's, which the legend's texts
/// fit.
pub fn render_load(
    response: &v1::QueryLoadResponse,
    request: &v1::QueryLoadRequest,
    output: Output,
    width: Option<usize>,
) -> String {
    let by = request.group_by.trim();
    match output {
        Output::Json => return json(response),
        Output::Csv => {
            let mut table = Table::new(&["TIME", "KEY", "VALUE"]);
            for s in &response.series {
                for p in &s.points {
                    table.row(vec![
                        at(p.at.as_ref()),
                        key_name(by, &s.key, true),
                        format!("{}", p.value),
                    ]);
                }
            }
            return table.csv();
        }
        Output::Table => {}
    }
    if response.series.is_empty() {
        return nothing(response, request) + "\n";
    }
    let mut table = Table::new(&["TIME"]);
    for (i, s) in response.series.iter().enumerate() {
        table.insert_column(i + 1, &key_name(by, &s.key, false));
    }
    // Every series has a point at every step; by time all the same.
    let mut steps: BTreeMap<Micros, Vec<String>> = BTreeMap::new();
    let times: BTreeSet<Micros> = response
        .series
        .iter()
        .flat_map(|s| &s.points)
        .filter_map(|p| p.at.as_ref().map(time::timestamp_micros))
        .collect();
    for t in times {
        steps.insert(t, vec![String::new(); response.series.len()]);
    }
    for (i, s) in response.series.iter().enumerate() {
        for p in &s.points {
            if let Some(row) =
                p.at.as_ref()
                    .and_then(|t| steps.get_mut(&time::timestamp_micros(t)))
            {
                row[i] = format!("{:.2}", p.value);
            }
        }
    }
    // A step without a sample has no load to show (the collector gives 0):
    // before the agents streamed, or the step still being counted.
    let unsampled: BTreeSet<Micros> = response
        .coverage
        .iter()
        .filter(|c| c.value == 0.0)
        .filter_map(|c| c.at.as_ref().map(time::timestamp_micros))
        .collect();
    for (t, mut values) in steps {
        if unsampled.contains(&t) {
            values.iter_mut().for_each(|v| *v = "-".to_owned());
        }
        table.row(std::iter::once(time::rfc3339(t)).chain(values).collect());
    }
    table.row(
        std::iter::once("average".to_owned())
            .chain(response.series.iter().map(|s| format!("{:.2}", s.average)))
            .collect(),
    );
    let mut out = table.render();
    if by == "query" {
        out.push('\n');
        for s in response.series.iter().filter(|s| is_fingerprint(&s.key)) {
            let text = if s.text.is_empty() {
                "(its text is not kept)"
            } else {
                &s.text
            };
            out.push_str(&format!(
                "{}  {}\n",
                s.key,
                one_line(text, text_room(width, s.key.len() + 2))
            ));
        }
    }
    for note in gaps(response, request) {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// Why there is no series: no server selected, no samples, or no session.
fn nothing(response: &v1::QueryLoadResponse, request: &v1::QueryLoadRequest) -> String {
    if response.servers == 0 {
        return format!(
            "No server matches {}: `pgfleet servers` lists the server_ids and labels to give.",
            if request.matchers.is_empty() {
                "(the collector knows none yet)".to_owned()
            } else {
                request.matchers.join(", ")
            }
        );
    }
    let servers = match response.servers {
        1 => "the selected server".to_owned(),
        n => format!("the {n} selected servers"),
    };
    if response.coverage.iter().all(|c| c.value == 0.0) {
        return format!(
            "No samples of {servers} in that range: load is counted per 10 s as agents stream, and kept 24 h per 10 s and 30 days per minute."
        );
    }
    let which = match v1::LoadSessions::try_from(request.sessions) {
        Ok(v1::LoadSessions::IdleInTransaction) => "session was idle in a transaction",
        Ok(v1::LoadSessions::Background) => "background process was at work",
        _ => "session was active",
    };
    format!("No {which} on {servers} in that range: the load was 0.")
}

/// A series' key as a column title (a query's fingerprint cut to 8 hex
/// digits, unless `whole`) or as CSV's key column.
fn key_name(by: &str, key: &str, whole: bool) -> String {
    match key {
        "" => match by {
            "" => "load",
            "query" => "(no text)",
            "client" => "local",
            _ => "(none)",
        }
        .to_owned(),
        k if by == "query" && !whole && is_fingerprint(k) => k[..8].to_owned(),
        k => k.to_owned(),
    }
}

/// Whether a key is a query's fingerprint: 16 hex digits.
fn is_fingerprint(key: &str) -> bool {
    key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

fn at(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(String::new, |t| time::rfc3339(time::timestamp_micros(t)))
}

/// A line for each run of steps that miss samples (fewer than [`COVERED`]
/// of those expected); the steps that end in the range's last 10 s are
/// still being counted, and are not gaps.
fn gaps(response: &v1::QueryLoadResponse, request: &v1::QueryLoadRequest) -> Vec<String> {
    let step = response.step.as_ref().map_or(0, time::duration_micros);
    let end = request
        .end
        .as_ref()
        .map_or(Micros::MAX, time::timestamp_micros);
    if step <= 0 {
        return Vec::new();
    }
    // (first step, last step, least coverage) of each run.
    let mut runs: Vec<(Micros, Micros, f64)> = Vec::new();
    let mut last: Option<Micros> = None;
    for c in &response.coverage {
        let Some(t) = c.at.as_ref().map(time::timestamp_micros) else {
            continue;
        };
        if c.value >= COVERED || t.saturating_add(step) > end.saturating_sub(OPEN_US) {
            continue;
        }
        match runs.last_mut() {
            Some(run) if last == Some(t - step) => {
                run.1 = t;
                run.2 = run.2.min(c.value);
            }
            _ => runs.push((t, t, c.value)),
        }
        last = Some(t);
    }
    let mut notes: Vec<String> = runs
        .iter()
        .take(MOST_GAPS)
        .map(|(from, to, least)| {
            format!(
                "samples missing between {} and {} ({:.0}% taken at the least): load there is the average of the samples taken",
                time::rfc3339(*from),
                time::rfc3339(to + step),
                least * 100.0
            )
        })
        .collect();
    if runs.len() > MOST_GAPS {
        notes.push(format!(
            "and {} more gaps; --output json gives each step's coverage",
            runs.len() - MOST_GAPS
        ));
    }
    notes
}
