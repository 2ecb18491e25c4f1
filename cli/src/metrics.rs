//! `pgfleet metrics`: a metric over a past range, from the collector's
//! per-minute rollups.

use std::time::Duration;

use pgfleet_common::settings;
use pgfleet_proto::time::{self, Micros, now_micros};
use pgfleet_proto::v1;

use super::CliError;
use super::fleet::parse_time;
use super::output::{Output, Table, json};
use super::remote::{Remote, call_failed, connect};

/// What `pgfleet metrics` asks.
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// sessions, waiting_sessions, blocked_sessions, max_xact_age_seconds, pool_utilisation, pool_waiting, pool_max_wait_seconds, commits_per_second, rollbacks_per_second or deadlocks_per_second
    pub metric: String,
    /// How far back the range reaches from its end, like 1h or 7d
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub range: String,
    /// The range's end, like 2026-11-24T04:00:00Z [default: now]
    #[arg(long, value_name = "TIME")]
    pub end: Option<String>,
    /// One point per step, a whole number of minutes, like 1m or 1h
    #[arg(long, default_value = "1m", value_name = "DURATION")]
    pub step: String,
    /// A label to group servers by (dc, cluster, server_id, …), repeatable [default: the whole fleet]
    #[arg(long, value_name = "LABEL")]
    pub by: Vec<String>,
    /// Only what matches, PromQL-style, repeatable: dc=eu1, dc!=eu1, role=~"prim.*", state=active
    #[arg(long = "match", value_name = "MATCHER")]
    pub matchers: Vec<String>,
}

/// `pgfleet metrics METRIC`.
pub async fn metrics(remote: &Remote, output: Output, args: MetricsArgs) -> Result<(), CliError> {
    let (start, end) = parse_range(&args.range, args.end.as_deref())?;
    let step = parse_step(&args.step)?;
    let request = v1::QueryMetricsRequest {
        metric: args.metric.trim().to_owned(),
        matchers: args.matchers,
        start: Some(time::timestamp(start)),
        end: Some(time::timestamp(end)),
        step: Some(step),
        group_by: args
            .by
            .iter()
            .flat_map(|b| b.split(','))
            .map(|b| b.trim().to_owned())
            .collect(),
    };
    let mut client = connect(remote).await?;
    let response = client
        .query_metrics(request)
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!("{}", render_metrics(&response, output));
    Ok(())
}

/// `--range` (how far back from the end, like 1h) and `--end` (RFC 3339;
/// default now) as the range's start and end: the parsing of every command
/// over a past range (`metrics`, `load`, `top-queries`, `churn`).
pub(crate) fn parse_range(range: &str, end: Option<&str>) -> Result<(Micros, Micros), CliError> {
    let range = settings::parse_duration(
        "range",
        range,
        Duration::from_secs(60)..=Duration::from_secs(400 * 86_400),
    )?;
    let end = match end {
        Some(text) => parse_time("--end", text)?,
        None => now_micros(),
    };
    Ok((end - range.as_micros() as i64, end))
}

/// `--step` as a duration; whether the collector serves it is for the
/// collector to say.
pub(crate) fn parse_step(text: &str) -> Result<prost_types::Duration, CliError> {
    let step = humantime::parse_duration(text.trim())
        .map_err(|e| CliError::Usage(format!("--step {text:?} is not a duration like 1m ({e})")))?;
    Ok(time::duration(step.as_micros().min(i64::MAX as u128) as i64))
}

/// The series as one row per point (their labels, the time, the value), or as
/// the JSON of `QueryMetricsResponse`.
pub fn render_metrics(response: &v1::QueryMetricsResponse, output: Output) -> String {
    if output == Output::Json {
        return json(response);
    }
    if response.series.is_empty() && output == Output::Table {
        return format!(
            "No data for {} in that range: rollups begin when agents stream, a minute at a time.\n",
            response.metric
        );
    }
    let names: Vec<String> = response
        .series
        .first()
        .map(|s| s.labels.keys().cloned().collect())
        .unwrap_or_default();
    let titles: Vec<String> = names.iter().map(|n| n.to_uppercase()).collect();
    let mut table = Table::new(&["TIME", "VALUE"]);
    for (i, title) in titles.iter().enumerate() {
        table.insert_column(i, title);
    }
    for series in &response.series {
        for point in &series.points {
            let mut row: Vec<String> = names
                .iter()
                .map(|n| series.labels.get(n).cloned().unwrap_or_default())
                .collect();
            row.push(
                point
                    .at
                    .as_ref()
                    .map_or_else(String::new, |t| time::rfc3339(time::timestamp_micros(t))),
            );
            row.push(value(point.value, output));
            table.row(row);
        }
    }
    table.show(output)
}

fn value(v: f64, output: Output) -> String {
    match output {
        Output::Csv => format!("{v}"),
        _ if v == v.trunc() => format!("{v:.0}"),
        _ => format!("{v:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_rows_with_their_series_labels() {
        let at = 1_795_000_000_000_000;
        let response = v1::QueryMetricsResponse {
            metric: "sessions".into(),
            step: Some(time::duration(60_000_000)),
            series: vec![v1::MetricSeries {
                labels: [
                    ("dc".to_owned(), "eu1".to_owned()),
                    ("state".to_owned(), "active".to_owned()),
                ]
                .into_iter()
                .collect(),
                points: vec![
                    v1::MetricPoint {
                        at: Some(time::timestamp(at)),
                        value: 2.0,
                    },
                    v1::MetricPoint {
                        at: Some(time::timestamp(at + 60_000_000)),
                        value: 2.5,
                    },
                ],
            }],
        };
        let table = render_metrics(&response, Output::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "DC   STATE   TIME                  VALUE");
        assert!(
            lines[1].starts_with("eu1  active  2026-11-18T") && lines[1].ends_with("  2"),
            "{table}"
        );
        assert!(lines[2].ends_with("  2.500"), "{table}");
        let csv = render_metrics(&response, Output::Csv);
        assert!(
            csv.starts_with("DC,STATE,TIME,VALUE\r\neu1,active,2026-11-18T"),
            "{csv}"
        );
        let json = render_metrics(&response, Output::Json);
        assert!(
            json.contains("\"labels\"") && json.contains("\"value\": 2.5"),
            "{json}"
        );
    }
}
