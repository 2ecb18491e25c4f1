//! `pgfleet churn`: sessions started and ended over a range, by
//! application, user and client host, and how long the ended ones lived.

use pgfleet_proto::time;
use pgfleet_proto::v1;

use super::Selection;
use crate::CliError;
use crate::output::{Output, Table, duration_cell, human_duration, json};
use crate::remote::{Remote, call_failed, connect};

const EXAMPLES: &str = "\
Examples:
  pgfleet churn --range 1h
  pgfleet churn orders-db-1 --range 15m
  pgfleet churn --range 1d --label dc=eu1 --match application=~\"web.*\"

Many sessions started and ended per second, with short lifetimes, point at an
application that connects per request without a pool.";

/// The application of the row of sessions no sample saw.
const BETWEEN_SAMPLES: &str = "(between samples)";

/// What `pgfleet churn` asks.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub selection: Selection,
}

impl ChurnArgs {
    /// The `GetChurn` request these flags make.
    pub fn request(&self) -> Result<v1::GetChurnRequest, CliError> {
        let chosen = self.selection.choose()?;
        Ok(v1::GetChurnRequest {
            start: Some(time::timestamp(chosen.start)),
            end: Some(time::timestamp(chosen.end)),
            server_id: chosen.server_id,
            matchers: chosen.matchers,
        })
    }
}

/// `pgfleet churn [SERVER]`.
pub async fn churn(remote: &Remote, output: Output, args: ChurnArgs) -> Result<(), CliError> {
    let request = args.request()?;
    let mut client = connect(remote).await?;
    let response = client
        .get_churn(request)
        .await
        .map_err(|s| call_failed(remote, s))?
        .into_inner();
    print!("{}", render_churn(&response, output));
    Ok(())
}

/// The rows as a table followed by the lifetimes' percentiles, as CSV (the
/// rows, lifetimes in seconds), or as the JSON of `GetChurnResponse`.
pub fn render_churn(response: &v1::GetChurnResponse, output: Output) -> String {
    if output == Output::Json {
        return json(response);
    }
    let csv = output == Output::Csv;
    let mut table = Table::new(&[
        "DATABASE",
        "APPLICATION",
        "USER",
        "CLIENT",
        "STARTED",
        "ENDED",
        "STARTED/S",
        "ENDED/S",
        "MEAN LIFETIME",
    ]);
    let rate = |r: f64| {
        if csv {
            format!("{r}")
        } else {
            format!("{r:.2}")
        }
    };
    for r in &response.rows {
        table.row(vec![
            r.database.clone(),
            r.application.clone(),
            r.user.clone(),
            if r.client.is_empty() && r.application != BETWEEN_SAMPLES {
                "local".to_owned()
            } else {
                r.client.clone()
            },
            r.started.to_string(),
            r.ended.to_string(),
            rate(r.started_per_second),
            rate(r.ended_per_second),
            // Lifetimes are of the sessions the samples saw end.
            if r.seen_ended == 0 && r.lifetime_mean == 0.0 {
                String::new()
            } else {
                duration_cell(micros(r.lifetime_mean), output)
            },
        ]);
    }
    if csv {
        return table.csv();
    }
    let over = human_duration(micros(response.seconds));
    if response.seconds <= 0.0 {
        return "No samples of the selected servers in that range: churn is counted as agents stream.\n"
            .to_owned();
    }
    let mut out = if response.rows.is_empty() {
        format!("No session started or ended in that range ({over} of samples).\n")
    } else {
        table.render()
    };
    if response.lifetime_max > 0.0 {
        out.push_str(&format!(
            "Lifetimes of the sessions that ended: p50 {}, p90 {}, p99 {}, max {} (over {over} of samples per server).\n",
            human_duration(micros(response.lifetime_p50)),
            human_duration(micros(response.lifetime_p90)),
            human_duration(micros(response.lifetime_p99)),
            human_duration(micros(response.lifetime_max)),
        ));
    } else if !response.rows.is_empty() {
        out.push_str(&format!(
            "No session the samples saw ended in that range ({over} of samples per server).\n"
        ));
    }
    if response
        .rows
        .iter()
        .any(|r| r.application == BETWEEN_SAMPLES)
    {
        out.push_str(
            "\"(between samples)\": sessions that began and ended between two samples, counted from pg_stat_database.sessions (PostgreSQL 14 and later).\n",
        );
    }
    out
}

/// Seconds as microseconds.
fn micros(seconds: f64) -> i64 {
    (seconds * 1e6).round().clamp(0.0, i64::MAX as f64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_is_a_row_per_application_user_and_client_then_the_lifetimes() {
        let response = v1::GetChurnResponse {
            rows: vec![
                v1::ChurnRow {
                    database: "shop".into(),
                    application: "web".into(),
                    user: "app".into(),
                    client: "10.0.0.7".into(),
                    started: 3600,
                    ended: 3590,
                    started_per_second: 1.0,
                    ended_per_second: 0.997,
                    lifetime_mean: 0.25,
                    seen_started: 3600,
                    seen_ended: 3590,
                },
                v1::ChurnRow {
                    database: "shop".into(),
                    application: "psql".into(),
                    user: "dba".into(),
                    client: String::new(),
                    started: 1,
                    ended: 0,
                    started_per_second: 1.0 / 3600.0,
                    ended_per_second: 0.0,
                    lifetime_mean: 0.0,
                    seen_started: 1,
                    seen_ended: 0,
                },
                v1::ChurnRow {
                    database: "shop".into(),
                    application: "(between samples)".into(),
                    started: 40,
                    ended: 40,
                    ..Default::default()
                },
            ],
            seconds: 3600.0,
            lifetime_p50: 0.2,
            lifetime_p90: 0.5,
            lifetime_p99: 3.0,
            lifetime_max: 7384.0,
        };
        let text = render_churn(&response, Output::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "DATABASE  APPLICATION        USER  CLIENT    STARTED  ENDED  STARTED/S  ENDED/S  MEAN LIFETIME",
                "shop      web                app   10.0.0.7  3600     3590   1.00       1.00     0.2s",
                "shop      psql               dba   local     1        0      0.00       0.00",
                "shop      (between samples)                  40       40     0.00       0.00",
                "Lifetimes of the sessions that ended: p50 0.2s, p90 0.5s, p99 3.0s, max 2h03m (over 1h00m of samples per server).",
                "\"(between samples)\": sessions that began and ended between two samples, counted from pg_stat_database.sessions (PostgreSQL 14 and later).",
            ],
            "{text}"
        );
        let csv = render_churn(&response, Output::Csv);
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(
            rows[0],
            "DATABASE,APPLICATION,USER,CLIENT,STARTED,ENDED,STARTED/S,ENDED/S,MEAN LIFETIME"
        );
        assert_eq!(rows[1], "shop,web,app,10.0.0.7,3600,3590,1,0.997,0.250");
        assert_eq!(rows.len(), 4, "{csv}");
        let quiet = v1::GetChurnResponse {
            seconds: 600.0,
            ..Default::default()
        };
        assert_eq!(
            render_churn(&quiet, Output::Table),
            "No session started or ended in that range (10m00s of samples).\n"
        );
        assert!(
            render_churn(&v1::GetChurnResponse::default(), Output::Table).starts_with("No samples")
        );
    }
}
