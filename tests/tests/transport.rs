//! The stream's transport: zstd compression (gRPC's zstd for a collector too
//! old for zstd batches, and gzip for one without zstd), measured on the
//! wire through a proxy, and a second agent claiming a
//! server_id.

use std::time::Duration;

use pgfleet_agent::config::Compression;
use pgfleet_collector::aggregator::Aggregator;
use pgfleet_collector::config::DuplicateServerId;
use pgfleet_collector::ingest::IngestService;
use pgfleet_proto::v1::ingest_server::IngestServer;
use pgfleet_tests::faultproxy::FaultProxy;
use pgfleet_tests::{fleet, wait_for, wait_for_status};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;

/// Sessions whose texts repeat, as an application's do.
async fn chatty_sessions(cluster: &pgfleet_tests::TempCluster) -> Vec<tokio_postgres::Client> {
    let mut clients = Vec::new();
    for i in 0..20 {
        let db = cluster.connect(&format!("orders-api-{i}")).await.unwrap();
        db.simple_query(
            "SELECT o.id, o.customer_id, o.total FROM orders_placeholder_for_a_long_text AS o WHERE false",
        )
        .await
        .ok();
        clients.push(db);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_makes_the_stream_smaller_on_the_wire() {
    let fleet = fleet("db-wire-host", &[]).await;
    let _sessions = chatty_sessions(&fleet.cluster).await;
    let upstream = fleet.url.trim_start_matches("http://").parse().unwrap();
    let mut sent = Vec::new();
    for compression in [Compression::None, Compression::Zstd] {
        let proxy = FaultProxy::start(([127, 0, 0, 1], 0).into(), upstream)
            .await
            .unwrap();
        let id = format!("db-wire-{compression:?}");
        let mut config = fleet.agent_config(&id, fleet.cluster.config("pgfleet-wire"));
        config.collector = format!("http://{}", proxy.addr);
        config.compression = compression;
        config.interval = Duration::from_millis(200);
        config.pool_reporter = None;
        let agent = fleet.start_agent_with(config).unwrap();
        let client = fleet.client().await.unwrap();
        wait_for_status(&client, &id, "up", Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        agent.stop().await;
        sent.push(proxy.bytes_up());
    }
    let (plain, zstd) = (sent[0], sent[1]);
    println!("on the wire in 3 s: no compression {plain} B, zstd {zstd} B");
    // The dictionary already sends each string once, so zstd has less left to
    // find than in JSON; still well under two thirds (about 0.43 measured).
    assert!(
        zstd * 5 < plain * 3,
        "zstd sent {zstd} bytes, no compression {plain}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_falls_back_to_gzip_for_a_collector_without_zstd() {
    let fleet = fleet("db-gzip-host", &[]).await;
    // A collector that takes gzip only, and does not offer zstd batches (as
    // collectors before them did not): the agent tries gRPC's zstd, then gzip.
    let (aggregator, handle) = Aggregator::new();
    tokio::spawn(aggregator.run());
    let (_shutdown, shutdown_rx) = tokio::sync::watch::channel(());
    let ingest = IngestServer::new(
        IngestService::new(handle.clone(), Default::default(), shutdown_rx)
            .offering_zstd_batches(false),
    )
    .accept_compressed(CompressionEncoding::Gzip);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ingest)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut config = fleet.agent_config("db-gzip", fleet.cluster.config("pgfleet-gzip"));
    config.collector = format!("http://{addr}");
    config.pool_reporter = None;
    assert_eq!(config.compression, Compression::Zstd, "zstd is the default");
    let agent = fleet.start_agent_with(config).unwrap();
    wait_for(
        "the agent's snapshots at the gzip-only collector",
        Duration::from_secs(20),
        || {
            let view = handle.view();
            async move {
                match view.servers.get("db-gzip") {
                    Some(s) if s.last_seen_us.is_some() => Ok(()),
                    other => Err(format!("{:?}", other.map(|s| &s.status))),
                }
            }
        },
    )
    .await;
    agent.stop().await;
    server.abort();
    fleet.stop().await;
}

/// A second live agent that claims a server_id is refused by default, and
/// takes the server over when the collector allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_of_a_server_is_refused_unless_takeover_is_allowed() {
    let fleet = fleet("db-claimed", &[]).await;
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "db-claimed", "up", Duration::from_secs(20)).await;
    let status = pgfleet_tests::agent_stream(&fleet.url, "db-claimed", None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(
        status.message().contains("--duplicate-server-id takeover"),
        "{status:?}"
    );

    // A collector that allows it: the newer agent streams the server.
    let dir = fleet.cluster.dir().join("collector-takeover");
    let mut config =
        pgfleet_collector::config::CollectorConfig::new(([127, 0, 0, 1], 0).into(), dir);
    config.duplicate_server_id = DuplicateServerId::Takeover;
    let collector = pgfleet_collector::server::start(config).await.unwrap();
    let url = format!("http://{}", collector.addr);
    let start = |agent_id: &str| {
        let mut c = pgfleet_agent::AgentConfig::new(&url, fleet.cluster.config("pgfleet-ha"));
        c.agent_id = agent_id.to_owned();
        c.targets[0].server_id = "db-ha".into();
        c.pool_reporter = None;
        pgfleet_agent::start(c).unwrap()
    };
    let primary = start("agent-primary");
    let client = pgfleet_cli::connect(&pgfleet_cli::Remote::plain(url.clone()))
        .await
        .unwrap();
    let first = wait_for_status(&client, "db-ha", "up", Duration::from_secs(20)).await;
    assert_eq!(first.agent_id, "agent-primary");
    let standby = start("agent-standby");
    wait_for(
        "agent-standby to stream db-ha",
        Duration::from_secs(20),
        || {
            let mut c = client.clone();
            async move {
                let s = pgfleet_tests::server(&mut c, "db-ha").await?;
                if s.agent_id == "agent-standby" && s.status == "up" {
                    Ok(())
                } else {
                    Err(format!("{} {}", s.agent_id, s.status))
                }
            }
        },
    )
    .await;
    standby.stop().await;
    primary.stop().await;
    collector.stop().await;
    fleet.stop().await;
}
