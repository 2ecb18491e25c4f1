//! `pgfleet top-queries`: the statements that loaded the servers most over a
//! range, each with its waits and its pg_stat_statements increments.

use std::collections::BTreeSet;

use pgfleet_proto::time;
use pgfleet_proto::v1;

use super::{Selection, fitted, names};
use crate::CliError;
use crate::output::{Output, Table, json, one_line, terminal_width};
use crate::remote::{Remote, call_failed, connect};

/// How `pgfleet top-queries` ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// DB load over the range
    #[default]
    Load,
    /// Calls
    Calls,
    /// Total execution time
    #[value(alias = "total-time", alias = "total_time")]
    Time,
    /// Mean execution time per call
    #[value(alias = "mean_time")]
    MeanTime,
}

impl Order {
    /// Its name in `TopQueriesRequest.order_by`.
    pub fn order_by(self) -> &'static str {
        match self {
            Order::Load => "load",
            Order::Calls => "calls",
            Order::Time => "total_time",
            Order::MeanTime => "mean_time",
        }
    }
}

const EXAMPLES: &str = "\
Examples:
  pgfleet top-queries --range 1h                   # by load, every server
  pgfleet top-queries orders-db-1 --range 15m --by mean-time
  pgfleet top-queries --range 1d --by calls --label dc=eu1 --limit 50
  pgfleet top-queries --range 1h --match wait_type=Lock

Calls, times and rows come from pg_stat_statements, which the server needs in
shared_preload_libraries and as an extension (CREATE EXTENSION pg_stat_statements).";

/// What `pgfleet top-queries` asks.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct TopQueriesArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Rank by load, calls, time (total) or mean-time; all but load need pg_stat_statements on the servers
    #[arg(long, value_enum, default_value_t = Order::Load)]
    pub by: Order,
    /// How many statements (at most 500) [default: 20]
    #[arg(long)]
    pub limit: Option<u32>,
}

impl TopQueriesArgs {
    /// The `TopQueries` request these flags make.
    pub fn request(&self) -> Result<v1::TopQueriesRequest, CliError> {
        let chosen = self.selection.choose()?;
        Ok(v1::TopQueriesRequest {
            start: Some(time::timestamp(chosen.start)),
            end: Some(time::timestamp(chosen.end)),
            server_id: chosen.server_id,
            matchers: chosen.matchers,
            order_by: self.by.order_by().to_owned(),
            limit: self.limit.unwrap_or(0),
        })
    }
}

/// `pgfleet top-queries [SERVER]`.
pub async fn top_queries(
    remote: &Remote,
    output: Output,
    args: TopQueriesArgs,
) -> Result<(), CliError> {
    let request = args.request()?;
    let mut client = connect(remote).await?;
    let response = client
        .top_queries(request.clone())
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!(
        "{}",
        render_top_queries(&response, &request, output, terminal_width())
    );
    if output == Output::Csv && !response.statements {
        eprintln!("pgfleet: {}", no_statements(&response, &request));
    }
    Ok(())
}

/// The statements as a table fitted to `width` (the terminal's) with a note
/// when no pg_stat_statements statistics arrived, as CSV with whole texts, or
/// as the JSON of `TopQueriesResponse`.
pub fn render_top_queries(
    response: &v1::TopQueriesResponse,
    request: &v1::TopQueriesRequest,
    output: Output,
    width: Option<usize>,
) -> String {
    if output == Output::Json {
        return json(response);
    }
    let mut table = Table::new(&[
        "LOAD",
        "CALLS",
        "TOTAL MS",
        "MEAN MS",
        "ROWS",
        "TOP WAIT",
        "SERVERS",
        "FINGERPRINT",
        "TEXT",
    ]);
    let csv = output == Output::Csv;
    let absent = if csv { "" } else { "-" };
    for q in &response.queries {
        let stat = |f: &dyn Fn(&v1::StatementTotals) -> String| {
            q.statistics.as_ref().map_or_else(|| absent.to_owned(), f)
        };
        let top_wait = q.waits.first().map_or_else(String::new, |w| {
            if q.load > 0.0 {
                format!("{} {:.0}%", w.key, w.value / q.load * 100.0)
            } else {
                w.key.clone()
            }
        });
        table.row(vec![
            if csv {
                format!("{}", q.load)
            } else {
                format!("{:.2}", q.load)
            },
            stat(&|s| s.calls.to_string()),
            stat(&|s| millis(s.total_time_ms, csv)),
            stat(&|s| millis(s.mean_time_ms, csv)),
            stat(&|s| s.rows.to_string()),
            top_wait,
            q.servers.len().to_string(),
            q.fingerprint.clone(),
            one_line(&q.text, usize::MAX),
        ]);
    }
    if csv {
        return table.csv();
    }
    let mut out = if response.queries.is_empty() {
        format!(
            "No statement was active on {} in that range: load is counted per 10 s as agents stream.\n",
            servers(response, request)
        )
    } else {
        fitted(&table, width)
    };
    if !response.statements {
        out.push_str(&no_statements(response, request));
        out.push('\n');
    }
    out
}

/// Milliseconds: whole ones from 100 in a table, to the microsecond in CSV.
fn millis(ms: f64, csv: bool) -> String {
    match ms {
        _ if csv => format!("{ms:.3}"),
        ms if ms >= 100.0 => format!("{ms:.0}"),
        ms => format!("{ms:.2}"),
    }
}

/// The servers the statements are of: SERVER, or those they ran on.
fn servers(response: &v1::TopQueriesResponse, request: &v1::TopQueriesRequest) -> String {
    if !request.server_id.is_empty() {
        return request.server_id.clone();
    }
    let ran_on: BTreeSet<&String> = response.queries.iter().flat_map(|q| &q.servers).collect();
    if ran_on.is_empty() {
        "the selected servers".to_owned()
    } else {
        names(&ran_on.into_iter().cloned().collect::<Vec<_>>(), 5)
    }
}

/// What to do when no pg_stat_statements statistics arrived.
fn no_statements(response: &v1::TopQueriesResponse, request: &v1::TopQueriesRequest) -> String {
    format!(
        "No pg_stat_statements statistics arrived for {} in that range, so calls, times and rows are empty and only load ranks. To have them, set shared_preload_libraries = 'pg_stat_statements' (then restart PostgreSQL) and run CREATE EXTENSION pg_stat_statements in the database the agent connects to.",
        servers(response, request)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top_query(fingerprint: &str, load: f64, stats: bool) -> v1::TopQuery {
        v1::TopQuery {
            fingerprint: fingerprint.into(),
            text: "UPDATE accounts\n   SET balance = balance + $1 WHERE id = $2".into(),
            load,
            waits: vec![
                v1::KeyValue {
                    key: "Lock:transactionid".into(),
                    value: load * 0.75,
                },
                v1::KeyValue {
                    key: "CPU".into(),
                    value: load * 0.25,
                },
            ],
            statistics: stats.then(|| v1::StatementTotals {
                calls: 1200,
                total_time_ms: 45_678.9,
                mean_time_ms: 38.07,
                rows: 1200,
                ..Default::default()
            }),
            servers: vec!["db-1".into(), "db-2".into()],
        }
    }

    #[test]
    fn top_queries_show_statistics_waits_and_texts_fitted_to_the_terminal() {
        let request = v1::TopQueriesRequest::default();
        let response = v1::TopQueriesResponse {
            queries: vec![top_query("3f2a9c0d1e4b5a67", 2.0, true)],
            statements: true,
        };
        let text = render_top_queries(&response, &request, Output::Table, Some(110));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "LOAD  CALLS  TOTAL MS  MEAN MS  ROWS  TOP WAIT                SERVERS  FINGERPRINT       TEXT"
        );
        assert!(
            lines[1].starts_with(
                "2.00  1200   45679     38.07    1200  Lock:transactionid 75%  2        3f2a9c0d1e4b5a67  UPDATE accounts SET"
            ) && lines[1].chars().count() == 110
                && lines[1].ends_with('…'),
            "{text}"
        );
        assert_eq!(lines.len(), 2, "no note with statistics: {text}");
        let csv = render_top_queries(&response, &request, Output::Csv, None);
        assert!(
            csv.ends_with(
                ",2,3f2a9c0d1e4b5a67,UPDATE accounts SET balance = balance + $1 WHERE id = $2\r\n"
            ) && csv.contains("2,1200,45678.900,38.070,1200,"),
            "{csv}"
        );

        // Without pg_stat_statements: dashes, and once what to do.
        let response = v1::TopQueriesResponse {
            queries: vec![
                top_query("3f2a9c0d1e4b5a67", 2.0, false),
                top_query("0000000000000abc", 1.0, false),
            ],
            statements: false,
        };
        let text = render_top_queries(&response, &request, Output::Table, None);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("2.00  -      -         -        -     Lock"),
            "{text}"
        );
        let notes: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("pg_stat_statements"))
            .collect();
        assert_eq!(notes.len(), 1, "{text}");
        assert!(
            notes[0].starts_with(
                "No pg_stat_statements statistics arrived for db-1, db-2 in that range"
            ) && notes[0].contains("shared_preload_libraries")
                && notes[0].contains("CREATE EXTENSION pg_stat_statements"),
            "{text}"
        );
        let empty = render_top_queries(
            &v1::TopQueriesResponse::default(),
            &v1::TopQueriesRequest {
                server_id: "db-9".into(),
                ..Default::default()
            },
            Output::Table,
            None,
        );
        assert!(
            empty.starts_with("No statement was active on db-9 in that range"),
            "{empty}"
        );
        assert!(empty.contains("arrived for db-9"), "{empty}");
    }
}
