//! Fault test 5: TLS and mutual TLS on the collector's port, with certificates
//! the test makes itself (rcgen). A plaintext client, a client that trusts
//! another CA, and (with mutual TLS) a client without a certificate are all
//! refused; a client with the right CA and certificate gets through. The
//! HTTP port serves HTTPS with the same certificate, asking no client for
//! one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgfleet_agent::AgentConfig;
use pgfleet_cli::Remote;
use pgfleet_cli::sandbox::TempCluster;
use pgfleet_collector::config::CollectorConfig;
use pgfleet_collector::server;
use pgfleet_common::tls::{ClientTls, ClientTlsFiles, ServerTls};
use pgfleet_proto::v1;
use pgfleet_tests::pki;
use pgfleet_tests::{agent_stream, wait_for_status};

/// PEM files: a CA, a server and a client certificate it signed, and a CA
/// that signed neither.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let fleet_ca = pki::ca("pgfleet test CA");
        let other_ca = pki::ca("some other CA");
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write("ca.pem", &fleet_ca.pem());
        write("other-ca.pem", &other_ca.pem());
        for (name, sans) in [
            (
                "server",
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ),
            ("client", vec!["agent-1.example".to_owned()]),
        ] {
            let (cert, key) = pki::issue(&fleet_ca, sans, None);
            write(&format!("{name}.pem"), &cert);
            write(&format!("{name}.key"), &key);
        }
        Pki {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A client of `url` trusting `ca`, with the client certificate if `cert`.
    fn client(&self, url: &str, ca: &str, cert: bool) -> Remote {
        let (c, k) = (self.path("client.pem"), self.path("client.key"));
        let ca = self.path(ca);
        let tls = ClientTls::load(
            url,
            ClientTlsFiles {
                ca: Some(&ca),
                cert: cert.then_some(c.as_path()),
                key: cert.then_some(k.as_path()),
                server_name: None,
            },
        )
        .unwrap();
        Remote {
            tls,
            ..Remote::plain(url.to_owned())
        }
    }
}

/// A collector on a free port with TLS, mutual if `mutual`.
async fn collector(pki: &Pki, cluster: &TempCluster, mutual: bool) -> server::Collector {
    let mut config = CollectorConfig::new(
        ([127, 0, 0, 1], 0).into(),
        cluster
            .dir()
            .join(format!("collector-{}", if mutual { "mtls" } else { "tls" })),
    );
    let client_ca = pki.path("ca.pem");
    config.tls = ServerTls::load(
        Some(&pki.path("server.pem")),
        Some(&pki.path("server.key")),
        mutual.then_some(client_ca.as_path()),
    )
    .unwrap();
    config.http_listen = Some(([127, 0, 0, 1], 0).into());
    server::start(config).await.unwrap()
}

/// GET `path` from the HTTP port at `addr` over TLS, as `localhost`,
/// trusting the CA in the PEM file `ca`: the response's head and body.
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> Result<(String, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // The server may close without TLS's close_notify once it has answered.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    Ok((head.to_owned(), body.to_owned()))
}

/// The HTTP port answers over TLS a client that trusts the fleet's CA
/// (with no certificate of its own), and no one else.
async fn https_only(pki: &Pki, collector: &server::Collector) {
    let http = collector.http_addr.expect("an HTTP port");
    let (head, body) = https_get(http, &pki.path("ca.pem"), "/healthz")
        .await
        .expect("HTTPS with the fleet's CA");
    assert!(head.contains(" 200 ") && body == "ok\n", "{head}{body}");
    let (head, _) = https_get(http, &pki.path("ca.pem"), "/api/v1/servers")
        .await
        .unwrap();
    assert!(head.contains(" 200 "), "{head}");
    let other = https_get(http, &pki.path("other-ca.pem"), "/healthz").await;
    assert!(
        other.as_ref().is_err_and(|e| e.contains("handshake")),
        "a client that trusts another CA: {other:?}"
    );
    let plain = pgfleet_tests::http_get(&http.to_string(), "/healthz", None).await;
    assert!(
        plain.as_ref().is_err() || plain.as_ref().is_ok_and(|(h, _)| !h.contains(" 200 ")),
        "plain HTTP was answered: {plain:?}"
    );
}

/// Whether a Query call through `remote` is answered.
async fn answered(remote: &Remote) -> Result<(), String> {
    let mut client = pgfleet_cli::connect(remote)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(
        Duration::from_secs(10),
        client.list_servers(v1::ListServersRequest::default()),
    )
    .await
    .map_err(|_| "no answer in 10 s".to_owned())?
    .map(|_| ())
    .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_in_only_clients_with_the_right_ca_and_certificate() {
    let cluster = TempCluster::start().await.unwrap();
    let pki = Pki::make(&cluster.dir().join("pki"));
    let collector = collector(&pki, &cluster, true).await;
    let url = format!("https://127.0.0.1:{}", collector.addr.port());
    let plain = format!("http://127.0.0.1:{}", collector.addr.port());

    // A real agent over mutual TLS streams its server.
    let mut config = AgentConfig::new(&url, cluster.config("pgfleet"));
    config.agent_id = "agent-mtls".into();
    config.targets[0].server_id = "db-mtls".into();
    config.pool_reporter = None;
    config.tls = pki.client(&url, "ca.pem", true).tls;
    let agent = pgfleet_agent::start(config).unwrap();
    let good = pki.client(&url, "ca.pem", true);
    let client = pgfleet_cli::connect(&good).await.unwrap();
    wait_for_status(&client, "db-mtls", "up", Duration::from_secs(20)).await;
    answered(&good).await.expect("the right CA and certificate");

    for (who, remote) in [
        ("a plaintext client", Remote::plain(plain.clone())),
        (
            "a client that trusts another CA",
            pki.client(&url, "other-ca.pem", true),
        ),
        (
            "a client without a certificate",
            pki.client(&url, "ca.pem", false),
        ),
    ] {
        let refused = answered(&remote).await;
        assert!(refused.is_err(), "{who} was let in");
    }
    // A plaintext agent stream gets no Welcome, and nothing of it is kept.
    assert!(agent_stream(&plain, "db-plain", None).await.is_err());
    let servers = client
        .clone()
        .list_servers(v1::ListServersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .servers;
    let ids: Vec<_> = servers.iter().map(|s| s.server_id.as_str()).collect();
    assert_eq!(ids, ["db-mtls"]);
    https_only(&pki, &collector).await;

    agent.stop().await;
    collector.stop().await;
    cluster.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_client_certificates_checks_the_server_only() {
    let cluster = TempCluster::start().await.unwrap();
    let pki = Pki::make(&cluster.dir().join("pki"));
    let collector = collector(&pki, &cluster, false).await;
    let url = format!("https://localhost:{}", collector.addr.port());
    answered(&pki.client(&url, "ca.pem", false))
        .await
        .expect("the right CA is enough");
    assert!(
        answered(&pki.client(&url, "other-ca.pem", false))
            .await
            .is_err(),
        "a client that trusts another CA was let in"
    );
    https_only(&pki, &collector).await;
    collector.stop().await;
    cluster.destroy().await;
}
