//! The load commands' flags as requests, and `pgfleet load`'s table and CSV
//! from hand-built answers (top-queries' and churn's are tested beside them).

use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;

use super::series::render_load;
use super::*;
use crate::output::Output;
use crate::{Cli, Command};

/// 2026-11-18T…, a whole minute.
const AT: Micros = 1_795_000_020_000_000;
const MINUTE: Micros = 60_000_000;

fn parse(args: &[&str]) -> Command {
    let argv = std::iter::once("pgfleet").chain(args.iter().copied());
    <Cli as clap::Parser>::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .command
}

#[test]
fn labels_and_the_server_become_matchers() {
    let selection = Selection {
        server: Some("orders-db-1".into()),
        range: "5m".into(),
        end: Some("2026-11-24T04:00:00Z".into()),
        labels: vec!["dc=eu1".into(), "cluster = orders".into()],
        matchers: vec![" user=~\"app.*\" ".into()],
    };
    let chosen = selection.choose().unwrap();
    assert_eq!(chosen.end - chosen.start, 300_000_000);
    assert_eq!(time::rfc3339(chosen.end), "2026-11-24T04:00:00Z");
    assert_eq!(
        chosen.matchers,
        ["cluster=\"orders\"", "dc=\"eu1\"", "user=~\"app.*\""]
    );
    assert_eq!(chosen.server_id, "orders-db-1");
    assert_eq!(
        chosen.matchers_with_server()[0],
        "server_id=\"orders-db-1\""
    );
    let every = Selection {
        range: "1h".into(),
        ..Selection::default()
    };
    assert!(every.choose().unwrap().matchers_with_server().is_empty());
}

#[test]
fn a_bad_range_or_label_says_what_to_write() {
    let bad = |range: &str, label: &str| {
        Selection {
            range: range.into(),
            labels: vec![label.into()],
            ..Selection::default()
        }
        .choose()
        .unwrap_err()
        .to_string()
    };
    assert!(bad("soon", "dc=eu1").contains("range"));
    assert!(bad("10s", "dc=eu1").contains("between 1m"));
    assert!(bad("1h", "dc").contains("name=value"));
    assert_eq!(
        names(&["a".into(), "b".into(), "c".into()], 2),
        "a, b and 1 more"
    );
}

#[test]
fn load_flags_make_the_request() {
    let Command::Load(args) = parse(&[
        "load",
        "db-1",
        "--by",
        "wait",
        "--range",
        "1h",
        "--end",
        "2026-11-24T04:00:00Z",
        "--step",
        "1m",
        "--label",
        "dc=eu1",
        "--match",
        "user=app",
        "--sessions",
        "idle-in-transaction",
        "--limit",
        "5",
    ]) else {
        panic!("not load");
    };
    let r = args.request().unwrap();
    let end = time::timestamp_micros(r.end.as_ref().unwrap());
    assert_eq!(time::rfc3339(end), "2026-11-24T04:00:00Z");
    assert_eq!(
        end - time::timestamp_micros(r.start.as_ref().unwrap()),
        60 * MINUTE
    );
    assert_eq!(r.step.map(|s| time::duration_micros(&s)), Some(MINUTE));
    assert_eq!(r.group_by, "wait");
    assert_eq!(r.matchers, ["server_id=\"db-1\"", "dc=\"eu1\"", "user=app"]);
    assert_eq!(r.sessions, v1::LoadSessions::IdleInTransaction as i32);
    assert_eq!(r.limit, 5);

    // The defaults: the total of active sessions, the collector's step and limit.
    let Command::Load(args) = parse(&["load", "--sessions", "idle_in_transaction"]) else {
        panic!("not load");
    };
    let r = args.request().unwrap();
    assert_eq!((r.group_by.as_str(), r.step, r.limit), ("", None, 0));
    assert!(r.matchers.is_empty());
    assert_eq!(r.sessions, v1::LoadSessions::IdleInTransaction as i32);
    let Command::Load(args) = parse(&["load"]) else {
        panic!("not load");
    };
    assert_eq!(
        args.request().unwrap().sessions,
        v1::LoadSessions::Active as i32
    );

    // A step that is no duration is said here; one the collector does not
    // serve (5s) is for it to say.
    let Command::Load(args) = parse(&["load", "--step", "often"]) else {
        panic!("not load");
    };
    assert!(args.request().unwrap_err().to_string().contains("--step"));
    let argv = ["pgfleet", "load", "--sessions", "idle"];
    let e = <Cli as clap::Parser>::try_parse_from(argv).unwrap_err();
    assert!(e.to_string().contains("idle-in-transaction"), "{e}");
}

#[test]
fn top_queries_and_churn_flags_make_their_requests() {
    for (by, order_by) in [
        ("load", "load"),
        ("calls", "calls"),
        ("time", "total_time"),
        ("mean-time", "mean_time"),
        ("mean_time", "mean_time"),
    ] {
        let Command::TopQueries(args) = parse(&["top-queries", "--by", by]) else {
            panic!("not top-queries");
        };
        assert_eq!(args.request().unwrap().order_by, order_by);
    }
    let Command::TopQueries(args) = parse(&[
        "top-queries",
        "db-1",
        "--range",
        "15m",
        "--label",
        "dc=eu1",
        "--match",
        "wait_type=Lock",
        "--limit",
        "50",
    ]) else {
        panic!("not top-queries");
    };
    let r = args.request().unwrap();
    assert_eq!(r.server_id, "db-1");
    assert_eq!(r.matchers, ["dc=\"eu1\"", "wait_type=Lock"]);
    assert_eq!((r.order_by.as_str(), r.limit), ("load", 50));
    let range = |s: &Option<prost_types::Timestamp>| time::timestamp_micros(s.as_ref().unwrap());
    assert_eq!(range(&r.end) - range(&r.start), 15 * MINUTE);

    let Command::Churn(args) = parse(&["churn", "db-1", "--match", "application=web"]) else {
        panic!("not churn");
    };
    let r = args.request().unwrap();
    assert_eq!(r.server_id, "db-1");
    assert_eq!(r.matchers, ["application=web"]);
    assert_eq!(range(&r.end) - range(&r.start), 60 * MINUTE);
}

fn point(at: Micros, value: f64) -> v1::MetricPoint {
    v1::MetricPoint {
        at: Some(time::timestamp(at)),
        value,
    }
}

fn series(key: &str, text: &str, values: &[f64]) -> v1::LoadSeries {
    v1::LoadSeries {
        key: key.into(),
        text: text.into(),
        average: values.iter().sum::<f64>() / values.len() as f64,
        points: values
            .iter()
            .enumerate()
            .map(|(i, v)| point(AT + i as i64 * MINUTE, *v))
            .collect(),
    }
}

/// A request for four one-minute steps from AT, grouped `by`.
fn load_request(by: &str) -> v1::QueryLoadRequest {
    v1::QueryLoadRequest {
        start: Some(time::timestamp(AT)),
        end: Some(time::timestamp(AT + 4 * MINUTE)),
        group_by: by.into(),
        ..Default::default()
    }
}

/// Four steps: the second and third short of samples, the fourth (in
/// progress at the range's end) too.
fn load_response(series: Vec<v1::LoadSeries>) -> v1::QueryLoadResponse {
    v1::QueryLoadResponse {
        step: Some(time::duration(MINUTE)),
        series,
        coverage: [1.0, 0.5, 0.8, 0.3]
            .iter()
            .enumerate()
            .map(|(i, c)| point(AT + i as i64 * MINUTE, *c))
            .collect(),
        servers: 2,
    }
}

#[test]
fn load_is_a_row_per_step_a_column_per_series_then_the_averages_and_the_gaps() {
    let mut response = load_response(vec![
        series("CPU", "", &[1.0, 2.5, 1.5, 0.0]),
        series("Lock:transactionid", "", &[0.0, 0.5, 0.25, 0.0]),
    ]);
    // The last step, in progress, has no sample yet.
    response.coverage[3].value = 0.0;
    let text = render_load(&response, &load_request("wait"), Output::Table, None);
    let lines: Vec<&str> = text.lines().collect();
    let t = |i: i64| time::rfc3339(AT + i * MINUTE);
    assert_eq!(
        lines[0], "TIME                  CPU   Lock:transactionid",
        "{text}"
    );
    assert_eq!(lines[1], format!("{}  1.00  0.00", t(0)));
    assert_eq!(lines[2], format!("{}  2.50  0.50", t(1)));
    assert_eq!(lines[4], format!("{}  -     -", t(3)), "{text}");
    assert_eq!(lines[5], "average               1.25  0.19", "{text}");
    // One run of two steps; the last step is still being counted.
    assert_eq!(
        lines[6],
        format!(
            "samples missing between {} and {} (50% taken at the least): load there is the average of the samples taken",
            t(1),
            t(3)
        ),
        "{text}"
    );
    assert_eq!(lines.len(), 7, "{text}");

    let csv = render_load(&response, &load_request("wait"), Output::Csv, None);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "TIME,KEY,VALUE");
    assert_eq!(rows[1], format!("{},CPU,1", t(0)));
    assert_eq!(rows[6], format!("{},Lock:transactionid,0.5", t(1)));
    assert_eq!(rows.len(), 9, "{csv}");

    let json: serde_json::Value = serde_json::from_str(&render_load(
        &response,
        &load_request("wait"),
        Output::Json,
        None,
    ))
    .unwrap();
    assert_eq!(json["series"][1]["key"], "Lock:transactionid");
    assert_eq!(json["coverage"][1]["value"], 0.5);
}

#[test]
fn queries_are_columns_by_short_fingerprint_with_a_legend_of_their_texts() {
    let long = format!(
        "SELECT * FROM orders WHERE id = $1 {}",
        "AND x = $2 ".repeat(20)
    );
    let mut response = load_response(vec![
        series("3f2a9c0d1e4b5a67", &long, &[1.0, 1.0, 1.0, 1.0]),
        series("", "", &[0.5, 0.5, 0.5, 0.5]),
        series("other", "", &[0.25, 0.25, 0.25, 0.25]),
    ]);
    response.coverage.iter_mut().for_each(|c| c.value = 1.0);
    let text = render_load(&response, &load_request("query"), Output::Table, Some(60));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "TIME                  3f2a9c0d  (no text)  other",
        "{text}"
    );
    let legend = lines
        .iter()
        .find(|l| l.starts_with("3f2a9c0d1e4b5a67  SELECT * FROM orders"));
    assert!(
        legend.is_some_and(|l| l.chars().count() == 60 && l.ends_with('…')),
        "{text}"
    );
    assert!(!text.contains("samples missing"), "{text}");
    // CSV keeps the whole fingerprint.
    let csv = render_load(&response, &load_request("query"), Output::Csv, None);
    assert!(csv.contains(",3f2a9c0d1e4b5a67,1\r\n"), "{csv}");
}

#[test]
fn no_load_says_why() {
    let mut request = load_request("");
    request.matchers = vec!["server_id=\"nope\"".into()];
    let none = v1::QueryLoadResponse {
        servers: 0,
        ..Default::default()
    };
    let text = render_load(&none, &request, Output::Table, None);
    assert!(
        text.starts_with("No server matches server_id=\"nope\"")
            && text.contains("pgfleet servers"),
        "{text}"
    );
    let mut idle = load_response(Vec::new());
    let text = render_load(&idle, &load_request(""), Output::Table, None);
    assert_eq!(
        text,
        "No session was active on the 2 selected servers in that range: the load was 0.\n"
    );
    idle.coverage.iter_mut().for_each(|c| c.value = 0.0);
    let text = render_load(&idle, &load_request(""), Output::Table, None);
    assert!(
        text.starts_with("No samples of the 2 selected servers"),
        "{text}"
    );
    // A key that is empty: servers without the label, or the total.
    let mut unlabelled = load_response(vec![series("", "", &[1.0, 1.0, 1.0, 1.0])]);
    unlabelled.coverage.iter_mut().for_each(|c| c.value = 1.0);
    let text = render_load(&unlabelled, &load_request("dc"), Output::Table, None);
    assert!(text.starts_with("TIME                  (none)"), "{text}");
    let text = render_load(&unlabelled, &load_request(""), Output::Table, None);
    assert!(text.starts_with("TIME                  load\n"), "{text}");
}
