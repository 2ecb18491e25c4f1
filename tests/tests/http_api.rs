//! The JSON API on the collector's HTTP port, end to end: real PostgreSQL, a
//! real agent streaming to a collector with read tokens on, asked over HTTP
//! and, for the same questions, over gRPC.

use std::time::Duration;

use pgfleet_cli::sandbox::TempCluster;
use pgfleet_cli::{Remote, connect};
use pgfleet_common::settings::Token;
use pgfleet_proto::time::{micros_to_system_time, now_micros, system_time_to_micros};
use pgfleet_proto::v1;
use pgfleet_tests::{agent_in_dc, collector_with_read_token, http_get, wait_for};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READ: &str = "read-token-for-the-json-api-0123";
const BEARER: &str = "Bearer read-token-for-the-json-api-0123";

/// A GET's status code and JSON body.
async fn get(addr: &str, path: &str, auth: Option<&str>) -> Result<(u16, Value), String> {
    let (head, body) = http_get(addr, path, auth).await?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    if !head
        .to_ascii_lowercase()
        .contains("content-type: application/json")
    {
        return Err(format!("not JSON: {head}"));
    }
    let json = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    Ok((status, json))
}

/// The first Server-Sent Event of `path`: its name and JSON data.
async fn first_event(addr: &str, path: &str) -> Result<(String, Value), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {BEARER}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .map_err(|_| "no event within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "the stream ended: {}",
                String::from_utf8_lossy(&raw)
            ));
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        if !head.contains("text/event-stream") {
            return Err(format!("not an event stream: {head}"));
        }
        // The body is chunked: the event's lines sit between chunk sizes.
        let Some(event) = body.lines().find_map(|l| l.strip_prefix("event: ")) else {
            continue;
        };
        let Some(data) = body.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        let data = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
        return Ok((event.to_owned(), data));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_rpc_answers_as_json_over_http_with_read_tokens() {
    pgfleet_tests::init_logs();
    let cluster = TempCluster::start().await.unwrap();
    let collector = collector_with_read_token(&cluster, READ).await;
    let http = collector.http_addr.unwrap().to_string();
    let agent = agent_in_dc(&collector, &cluster, "db-json", "eu1");
    let sleeper = cluster.connect("json-sleeper").await.unwrap();
    let sleeping = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(40)").await });

    // Without a token: refused, as JSON, saying what to send.
    let (status, body) = get(&http, "/api/v1/servers", None).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("token"),
        "{body}"
    );
    let (status, _) = get(
        &http,
        "/api/v1/servers",
        Some("Bearer wrong-token-0000000000000000"),
    )
    .await
    .unwrap();
    assert_eq!(status, 401);

    // The server, keyed by proto field names.
    let servers = wait_for("the server to be up", Duration::from_secs(30), || async {
        let (status, body) = get(&http, "/api/v1/servers?label=dc=eu1", Some(BEARER)).await?;
        let up = status == 200
            && body["servers"][0]["server_id"] == "db-json"
            && body["servers"][0]["status"] == "up";
        if up {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    assert_eq!(servers["servers"][0]["labels"]["dc"], "eu1");
    let (_, none) = get(&http, "/api/v1/servers?label=dc=us1", Some(BEARER))
        .await
        .unwrap();
    assert_eq!(none["servers"].as_array().map(Vec::len), Some(0), "{none}");

    // Sessions now, with the sleeping one.
    let activity = wait_for(
        "the sleeper in the activity",
        Duration::from_secs(30),
        || async {
            let (status, body) = get(
                &http,
                "/api/v1/servers/db-json/activity?state=active",
                Some(BEARER),
            )
            .await?;
            let sessions = body["sessions"].as_array().cloned().unwrap_or_default();
            match sessions
                .iter()
                .find(|s| s["application_name"] == "json-sleeper")
            {
                Some(s) => Ok(s.clone()),
                None => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
    assert_eq!(activity["wait_event"], "PgSleep");
    assert!(
        activity["query_start"].as_str().unwrap().ends_with('Z'),
        "{activity}"
    );

    // Errors: the HTTP status of the gRPC code, and what to change.
    let (status, body) = get(&http, "/api/v1/servers/nope/activity", Some(BEARER))
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    let (status, body) = get(&http, "/api/v1/load?rnage=1h", Some(BEARER))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"rnage\""),
        "{body}"
    );
    let (status, body) = get(&http, "/api/v1/load?range=1h&sessions=all", Some(BEARER))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&http, "/api/v1/nope", Some(BEARER)).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("top-queries"),
        "{body}"
    );

    // The rest answer, each with its response's fields.
    for (path, field) in [
        ("/api/v1/servers/db-json/pools", "sampled_at"),
        ("/api/v1/servers/db-json/databases", "databases"),
        ("/api/v1/fleet?group_by=dc", "rows"),
        (
            "/api/v1/top-sessions?order_by=query_age&limit=5",
            "sessions",
        ),
        ("/api/v1/blocking?server_id=db-json", "trees"),
        ("/api/v1/metrics?metric=sessions&range=5m", "series"),
        ("/api/v1/top-queries?range=5m&server_id=db-json", "queries"),
        ("/api/v1/churn?range=5m&server_id=db-json", "rows"),
    ] {
        let (status, body) = get(&http, path, Some(BEARER)).await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.get(field).is_some(), "{path} has no {field}: {body}");
    }
    // Each database's totals name it.
    let (_, body) = get(&http, "/api/v1/servers/db-json/databases", Some(BEARER))
        .await
        .unwrap();
    let named: Vec<&str> = body["databases"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .filter_map(|d| d["totals"]["database"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(named.contains(&"postgres"), "{body}");

    // Load: the sleeper on Timeout:PgSleep in a step that has closed, and
    // the same over HTTP as over gRPC.
    let (start, end) = wait_for(
        "load on PgSleep in a closed step",
        Duration::from_secs(60),
        || async {
            let (status, body) = get(
                &http,
                "/api/v1/load?range=2m&step=10s&group_by=wait",
                Some(BEARER),
            )
            .await?;
            let series = body["series"].as_array().cloned().unwrap_or_default();
            let points = series
                .iter()
                .find(|s| s["key"] == "Timeout:PgSleep")
                .and_then(|s| s["points"].as_array().cloned())
                .unwrap_or_default();
            let closed = now_micros() - 20_000_000;
            let at = |p: &Value| {
                let text = p["at"].as_str().unwrap_or_default();
                humantime::parse_rfc3339(text)
                    .map(system_time_to_micros)
                    .unwrap_or(i64::MAX)
            };
            match points
                .iter()
                .find(|p| p["value"].as_f64().unwrap_or(0.0) >= 0.9 && at(p) <= closed)
            {
                Some(p) if status == 200 => Ok((at(p) - 60_000_000, at(p) + 10_000_000)),
                _ => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
    let rfc3339 = |at: i64| humantime::format_rfc3339_micros(micros_to_system_time(at)).to_string();
    let (start, end) = (rfc3339(start), rfc3339(end));
    let path = format!("/api/v1/load?start={start}&end={end}&step=10s&group_by=wait");
    let (_, over_http) = get(&http, &path, Some(BEARER)).await.unwrap();
    let mut remote = Remote::plain(format!("http://{}", collector.addr));
    remote.token = Some(Token::new("token_file", READ).unwrap());
    let mut client = connect(&remote).await.unwrap();
    let parse = |t: &str| {
        pgfleet_proto::time::timestamp(system_time_to_micros(humantime::parse_rfc3339(t).unwrap()))
    };
    let over_grpc = client
        .query_load(v1::QueryLoadRequest {
            start: Some(parse(&start)),
            end: Some(parse(&end)),
            step: Some(pgfleet_proto::time::duration(10_000_000)),
            group_by: "wait".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        over_grpc.series.iter().any(|s| s.key == "Timeout:PgSleep"),
        "{over_grpc:?}"
    );
    assert_eq!(over_http, serde_json::to_value(&over_grpc).unwrap());

    // GetActivity: gRPC sends the sessions encoded straight from the
    // collector's state, HTTP prints the message; the same sample (a past
    // instant, so that both read one frame) gives the same sessions.
    let live = client
        .get_activity(v1::GetActivityRequest {
            server_id: "db-json".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let at = live.sampled_at.expect("a sampled server has a sample time");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let over_grpc = client
        .get_activity(v1::GetActivityRequest {
            server_id: "db-json".into(),
            at: Some(at),
            include_background: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let at = rfc3339(pgfleet_proto::time::timestamp_micros(&at));
    let path = format!("/api/v1/servers/db-json/activity?at={at}&include_background=true");
    let (status, over_http) = get(&http, &path, Some(BEARER)).await.unwrap();
    assert_eq!(status, 200, "{over_http}");
    assert!(
        over_grpc
            .sessions
            .iter()
            .any(|s| s.application_name == "json-sleeper" && s.duration.is_some()),
        "{over_grpc:?}"
    );
    let over_grpc = serde_json::to_value(&over_grpc).unwrap();
    for field in ["sampled_at", "sessions"] {
        assert_eq!(over_http[field], over_grpc[field], "{field}");
    }
    assert_eq!(over_http["server"]["server_id"], "db-json");
    assert_eq!(over_grpc["server"]["server_id"], "db-json");

    // Watch, as Server-Sent Events: the fleet first.
    let (event, data) = first_event(&http, "/api/v1/watch?label=dc=eu1")
        .await
        .unwrap();
    assert_eq!(event, "full");
    assert_eq!(data["servers"][0]["server_id"], "db-json", "{data}");

    sleeping.abort();
    agent.stop().await;
    collector.stop().await;
    cluster.destroy().await;
}
