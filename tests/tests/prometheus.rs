//! A real Prometheus (the Debian package `prometheus`) scrapes the collector's
//! `/metrics`; a PromQL query through its HTTP API returns the number of
//! sessions the server really has.

use std::process::Stdio;
use std::time::Duration;

use pgfleet_agent::AgentConfig;
use pgfleet_cli::sandbox::{TempCluster, free_port};
use pgfleet_collector::config::CollectorConfig;
use pgfleet_collector::server;
use pgfleet_common::settings::Token;
use pgfleet_tests::wait_for;

/// A plain HTTP/1.0 GET; the status line and the body.
async fn get(addr: &str, path: &str) -> Result<(String, String), String> {
    pgfleet_tests::http_get(addr, path, None).await
}

/// The token Prometheus presents for /metrics.
const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

/// The alerting rules that deploy/ gives.
const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/pgfleet-alerts.yml"
);

fn prometheus_binary() -> std::path::PathBuf {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .expect("Prometheus is not installed: `apt-get install prometheus` (.ci/run installs it)")
}

/// Percent-encodes a PromQL query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_session_count_the_server_really_has() {
    pgfleet_tests::init_logs();
    let prometheus = prometheus_binary();
    let cluster = TempCluster::start().await.unwrap();
    let mut config =
        CollectorConfig::new(([127, 0, 0, 1], 0).into(), cluster.dir().join("collector"));
    config.http_listen = Some(([127, 0, 0, 1], 0).into());
    // /metrics takes a token, which Prometheus sends (its `authorization`).
    config.metrics_tokens = vec![Token::new("metrics_token_file", METRICS_TOKEN).unwrap()];
    let collector = server::start(config).await.unwrap();
    let metrics_addr = collector.http_addr.unwrap().to_string();

    let mut agent_config = AgentConfig::new(
        &format!("http://{}", collector.addr),
        cluster.config("pgfleet"),
    );
    agent_config.targets[0].server_id = "db-prom".into();
    agent_config.labels.insert("dc".into(), "eu1".into());
    agent_config.pool_reporter = None;
    let agent = pgfleet_agent::start(agent_config).unwrap();

    // Sessions to count: a few idle, one busy, and the probe itself.
    let mut sessions = Vec::new();
    for i in 0..6 {
        sessions.push(cluster.connect(&format!("prom-app-{i}")).await.unwrap());
    }
    let busy = cluster.connect("prom-busy").await.unwrap();
    let sleeping = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(120)").await });
    let probe = cluster.connect("prom-probe").await.unwrap();

    // The endpoints themselves.
    let (head, body) = get(&metrics_addr, "/healthz").await.unwrap();
    assert!(head.starts_with("HTTP/1.0 200") && body == "ok\n", "{head}");
    let (head, body) = get(&metrics_addr, "/metrics").await.unwrap();
    assert!(head.starts_with("HTTP/1.0 401"), "{head}");
    assert!(head.contains("www-authenticate: Bearer"), "{head}");
    assert!(body.contains("--metrics-token-file"), "{body}");
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let (head, text) = pgfleet_tests::http_get(&metrics_addr, "/metrics", Some(&bearer))
        .await
        .unwrap();
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(text.contains("# TYPE pg_stat_activity_count gauge"));

    let dir = cluster.dir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("prometheus.yml");
    let token_path = dir.join("metrics-token");
    std::fs::write(&token_path, METRICS_TOKEN).unwrap();
    std::fs::write(
        &config_path,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: pgfleet\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['{metrics_addr}']\n",
            ALERTS,
            token_path.display()
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port().unwrap());
    let _prometheus = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("Prometheus starts");

    let query = encode(r#"sum(pg_stat_activity_count{server="db-prom"})"#);
    wait_for(
        "Prometheus to report the server's real session count",
        Duration::from_secs(60),
        || {
            let probe = &probe;
            let path = format!("/api/v1/query?query={query}");
            let web = web.clone();
            async move {
                let real: i64 = probe
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name <> $1",
                        &[&pgfleet_agent::target::APPLICATION_NAME],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                let (_, body) = get(&web, &path).await?;
                let json: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
                let seen = json["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| format!("no value yet: {body}"))?;
                if seen as i64 == real && real >= 8 {
                    Ok(())
                } else {
                    Err(format!("Prometheus says {seen}, the server has {real}"))
                }
            }
        },
    )
    .await;

    // DB load: the sleeping session is one active session waiting on
    // Timeout (pg_sleep), once a 10 s bucket has closed and been scraped.
    let load = encode(r#"pgfleet_db_load{server="db-prom",wait_event_type="Timeout"}"#);
    wait_for(
        "Prometheus to report the sleeping session's DB load",
        Duration::from_secs(60),
        || {
            let path = format!("/api/v1/query?query={load}");
            let web = web.clone();
            async move {
                let (_, body) = get(&web, &path).await?;
                let json: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
                let seen = json["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| format!("no value yet: {body}"))?;
                if (seen - 1.0).abs() < 1e-9 {
                    Ok(())
                } else {
                    Err(format!("load on Timeout is {seen}, not 1"))
                }
            }
        },
    )
    .await;

    // The Grafana dashboard's every query runs, and each panel shows data
    // (PgBouncer's, which this server lacks, excepted).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/pgfleet-fleet.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let stacked = panels
        .iter()
        .find(|p| p["title"] == "DB load by wait type")
        .expect("a DB load panel");
    assert_eq!(
        stacked["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"], "normal",
        "DB load is stacked"
    );
    // Rates need two scrapes of the counters.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let mut shown = 0;
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$dc", ".*")
                .replace("$__rate_interval", "1m");
            let (_, body) = get(&web, &format!("/api/v1/query?query={}", encode(&expr)))
                .await
                .unwrap();
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["status"], "success", "{title}: {expr}: {body}");
            let result = json["data"]["result"].as_array().unwrap();
            if title == "Servers per data centre" && target["legendFormat"] == "up" {
                assert_eq!(result.len(), 1, "{body}");
                assert_eq!(result[0]["metric"]["dc"], "eu1", "{body}");
                assert_eq!(result[0]["value"][1], "1", "{body}");
            }
            if !result.is_empty() && !expr.contains("pgbouncer") {
                shown += 1;
            }
        }
        assert!(shown > 0, "the panel {title:?} shows nothing");
    }
    // The alerting rules: each evaluates, and each one's query (before its
    // threshold) finds the collector's figures, so that none watches a name
    // the collector does not have.
    let rules = std::fs::read_to_string(ALERTS).unwrap();
    let exprs: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .collect();
    assert!(exprs.len() >= 6, "{exprs:?}");
    for expr in &exprs {
        let (query, _) = expr
            .rsplit_once(" > ")
            .unwrap_or_else(|| panic!("{expr}: no threshold last"));
        let (_, body) = get(&web, &format!("/api/v1/query?query={}", encode(query)))
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "success", "{query}: {body}");
        assert!(
            !json["data"]["result"].as_array().unwrap().is_empty(),
            "the alert on {query} finds nothing: {body}"
        );
    }
    wait_for(
        "every alerting rule to be evaluated",
        Duration::from_secs(30),
        || {
            let web = web.clone();
            let count = exprs.len();
            async move {
                let (_, body) = get(&web, "/api/v1/rules").await?;
                let json: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| e.to_string())?;
                let rules: Vec<&serde_json::Value> = json["data"]["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|g| g["name"] == "pgfleet")
                    .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                    .collect();
                if rules.len() == count && rules.iter().all(|r| r["health"] == "ok") {
                    Ok(())
                } else {
                    Err(body)
                }
            }
        },
    )
    .await;

    let (_, body) = get(
        &web,
        &format!(
            "/api/v1/query?query={}",
            encode("group by (dc) (pgfleet_server_info)")
        ),
    )
    .await
    .unwrap();
    assert!(
        body.contains(r#""dc":"eu1""#),
        "the dc variable's values: {body}"
    );

    // Bounded cardinality: nothing per session or per query.
    let (_, text) = pgfleet_tests::http_get(&metrics_addr, "/metrics", Some(&bearer))
        .await
        .unwrap();
    if std::env::var_os("PGFLEET_SHOW_METRICS").is_some() {
        println!("{text}");
    }
    for forbidden in ["pid=", "query=", "backend_start"] {
        assert!(!text.contains(forbidden), "a series carries {forbidden}");
    }
    // The collector's own process: its aggregator's thread has worked, and
    // the file descriptors are counted against their limit.
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    };
    assert!(value(r#"pgfleet_collector_thread_cpu_seconds_total{thread="aggregator"}"#) > 0.0);
    assert!(value("process_open_fds") <= value("process_max_fds"));
    assert!(value("process_resident_memory_bytes") > 0.0);
    sleeping.abort();
    agent.stop().await;
    collector.stop().await;
    cluster.destroy().await;
}
