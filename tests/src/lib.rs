//! The harness of pgfleet's end-to-end suites.
//!
//! The throwaway cluster and the in-process fleet come from
//! `pgfleet_cli::sandbox`, which `pgfleet demo` uses too; this crate adds
//! what only tests need: waiting for a condition, and finding sessions.
#![forbid(unsafe_code)]

pub mod faultproxy;
mod pgbouncer;
pub mod pki;
pub mod stored;

use std::future::Future;
use std::time::Duration;

pub use pgbouncer::TempPgBouncer;
pub use pgfleet_cli::sandbox::{Fleet, PASSWORD_GROUP, TempCluster, free_port};
use pgfleet_proto::v1;
use tokio::time::Instant;

/// A Query client.
pub use pgfleet_cli::Client;

/// A bench's setting from the environment (`PGFLEET_BENCH_…`), or `default`
/// when unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Logs of the code under test go to the test's output (shown when it fails).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGFLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// Starts a fleet of one server, or fails the test saying why.
pub async fn fleet(server_id: &str, labels: &[(&str, &str)]) -> Fleet {
    init_logs();
    match Fleet::start(server_id, labels).await {
        Ok(f) => f,
        Err(e) => panic!("cannot start the test fleet: {e}"),
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, or panics after `limit`
/// naming `what` and the last thing the probe saw.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match probe().await {
            Ok(found) => return found,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}; last saw: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a fleet of one server on a cluster with extra settings.
pub async fn fleet_with(server_id: &str, settings: &[(&str, &str)]) -> Fleet {
    init_logs();
    let cluster = match TempCluster::start_with(settings).await {
        Ok(c) => c,
        Err(e) => panic!("cannot start the test cluster: {e}"),
    };
    match Fleet::start_on(cluster, server_id, &[]).await {
        Ok(f) => f,
        Err(e) => panic!("cannot start the test fleet: {e}"),
    }
}

/// The pools of `server_id` as the collector holds them.
pub async fn pools(client: &mut Client, server_id: &str) -> Result<v1::GetPoolsResponse, String> {
    client
        .get_pools(v1::GetPoolsRequest {
            server_id: server_id.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("GetPools failed: {s}"))
}

/// The database totals of `server_id` as the collector holds them.
pub async fn databases(
    client: &mut Client,
    server_id: &str,
) -> Result<Vec<v1::DatabaseCounters>, String> {
    client
        .get_databases(v1::GetDatabasesRequest {
            server_id: server_id.to_owned(),
        })
        .await
        .map(|r| {
            r.into_inner()
                .databases
                .into_iter()
                .filter_map(|d| d.totals)
                .collect()
        })
        .map_err(|s| format!("GetDatabases failed: {s}"))
}

/// The `pgfleet-agent` binary that `cargo test --workspace` built next to
/// the tests.
pub fn agent_binary() -> std::path::PathBuf {
    workspace_binary("pgfleet-agent")
}

/// A binary of the workspace, built next to the tests.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing; run the tests with `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// A child process that is killed (SIGKILL) when dropped, test failed or not.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every session of `server_id` the collector holds, background processes too.
pub async fn sessions(client: &mut Client, server_id: &str) -> Result<Vec<v1::Session>, String> {
    client
        .get_activity(v1::GetActivityRequest {
            server_id: server_id.to_owned(),
            include_background: true,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().sessions)
        .map_err(|s| format!("GetActivity failed: {s}"))
}

/// The server as ListServers shows it.
pub async fn server(client: &mut Client, server_id: &str) -> Result<v1::Server, String> {
    let servers = client
        .list_servers(v1::ListServersRequest::default())
        .await
        .map_err(|s| format!("ListServers failed: {s}"))?
        .into_inner()
        .servers;
    servers
        .into_iter()
        .find(|s| s.server_id == server_id)
        .ok_or_else(|| format!("{server_id} is not listed"))
}

/// Waits until ListServers shows `server_id` with `status` ("up", "down" or
/// "stale") and returns it, or panics after `limit` with the status it had.
pub async fn wait_for_status(
    client: &Client,
    server_id: &str,
    status: &str,
    limit: Duration,
) -> v1::Server {
    let what = format!("{server_id} to be {status}");
    wait_for(&what, limit, || {
        let mut c = client.clone();
        async move {
            let s = server(&mut c, server_id).await?;
            if s.status == status {
                Ok(s)
            } else {
                Err(format!("{} ({})", s.status, s.reason))
            }
        }
    })
    .await
}

/// The one session with this application_name, or a description of what there is.
pub fn by_app<'a>(sessions: &'a [v1::Session], app: &str) -> Result<&'a v1::Session, String> {
    sessions
        .iter()
        .find(|s| s.application_name == app)
        .ok_or_else(|| {
            let apps: Vec<_> = sessions
                .iter()
                .map(|s| s.application_name.as_str())
                .collect();
            format!("no session of {app:?} among {apps:?}")
        })
}

/// An Ingest stream opened as an agent would open it: the sender of the
/// agent's messages, and the collector's side.
pub type AgentStream = (
    tokio::sync::mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::CollectorMessage>,
);

/// Opens an Ingest stream to `url` (with `authorization` metadata when given)
/// and says Hello for `server_id`; returns the stream once the collector's
/// Welcome came, or the collector's refusal.
pub async fn agent_stream(
    url: &str,
    server_id: &str,
    authorization: Option<&str>,
) -> Result<AgentStream, tonic::Status> {
    agent_hello(url, server_id, authorization)
        .await
        .map(|(stream, _)| stream)
}

/// As [`agent_stream`], with the collector's Welcome.
pub async fn agent_hello(
    url: &str,
    server_id: &str,
    authorization: Option<&str>,
) -> Result<(AgentStream, v1::Welcome), tonic::Status> {
    use v1::{agent_message, collector_message};
    let mut client = v1::ingest_client::IngestClient::connect(url.to_owned())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let hello = v1::Hello {
        agent_id: format!("raw-{server_id}"),
        targets: vec![v1::Target {
            server_id: server_id.to_owned(),
            ..Default::default()
        }],
        sample_interval_ms: 1000,
        ..Default::default()
    };
    tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .map_err(|_| tonic::Status::internal("the stream's channel closed"))?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(a) = authorization {
        let value = a
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("not a header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client.stream(request).await?.into_inner();
    match inbound.message().await?.and_then(|m| m.msg) {
        Some(collector_message::Msg::Welcome(welcome)) => Ok(((tx, inbound), welcome)),
        other => Err(tonic::Status::internal(format!(
            "expected Welcome, got {other:?}"
        ))),
    }
}

/// A plain HTTP/1.0 GET of `path` from `addr`, with `authorization` if given;
/// the response's head and body.
pub async fn http_get(
    addr: &str,
    path: &str,
    authorization: Option<&str>,
) -> Result<(String, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    Ok((head.to_owned(), body.to_owned()))
}

/// A batch of `snapshots` as the agent's stream carries it, with no
/// dictionary entries.
pub fn batch_message(seq: u64, snapshots: Vec<v1::Snapshot>) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Batch(v1::Batch {
            seq,
            dictionary_additions: vec![],
            snapshots,
        })),
    }
}

/// A collector on free ports with its HTTP port on (the web UI and the JSON
/// API), whose readers need `read_token`.
pub async fn collector_with_read_token(
    cluster: &TempCluster,
    read_token: &str,
) -> pgfleet_collector::server::Collector {
    let mut config = pgfleet_collector::config::CollectorConfig::new(
        ([127, 0, 0, 1], 0).into(),
        cluster.dir().join("collector"),
    );
    config.http_listen = Some(([127, 0, 0, 1], 0).into());
    config.read_tokens =
        vec![pgfleet_common::settings::Token::new("read_tokens_file", read_token).unwrap()];
    pgfleet_collector::server::start(config).await.unwrap()
}

/// An agent (`agent-<server_id>`) that streams to `collector` and watches
/// `cluster` as `server_id`, labelled `dc`.
pub fn agent_in_dc(
    collector: &pgfleet_collector::server::Collector,
    cluster: &TempCluster,
    server_id: &str,
    dc: &str,
) -> pgfleet_agent::Agent {
    let mut config = pgfleet_agent::AgentConfig::new(
        &format!("http://{}", collector.addr),
        cluster.config("pgfleet"),
    );
    config.targets[0].server_id = server_id.into();
    config.agent_id = format!("agent-{server_id}");
    config.labels.insert("dc".into(), dc.into());
    config.pool_reporter = None;
    pgfleet_agent::start(config).unwrap()
}

/// A figure of the collector's `/metrics`.
pub async fn metric(http: &str, name: &str) -> Result<f64, String> {
    let (_, body) = http_get(http, "/metrics", None).await?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {name} in /metrics"))
}
