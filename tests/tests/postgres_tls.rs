//! TLS to the monitored PostgreSQL, its PgBouncer and the collector's store,
//! as libpq does it: a real PostgreSQL 15 with `ssl = on` and a pg_hba.conf
//! that allows `hostssl` only, with certificates the test makes (rcgen).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgfleet_cli::sandbox::TempCluster;
use pgfleet_collector::config::CollectorConfig;
use pgfleet_collector::store::StoreConfig;
use pgfleet_tests::TempPgBouncer;
use pgfleet_tests::pki;
use serde_json::Value;

/// The name on the server's certificate; connections give it as `host`, and
/// `hostaddr=127.0.0.1` to reach it.
const NAME: &str = "db.pgfleet.test";

/// A CA, the server's certificate and a client certificate (for the role
/// `certuser`) that it signed, and a CA that signed neither.
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
        for (name, sans, cn) in [
            ("server", vec![NAME.to_owned()], NAME),
            ("client", vec![], "certuser"),
        ] {
            let (cert, key) = pki::issue(&fleet_ca, sans, Some(cn));
            write(&format!("{name}.pem"), &cert);
            write(&format!("{name}.key"), &key);
        }
        Pki {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// Turns `cluster` into a server that speaks TLS only: its certificate, the
/// CA for client certificates, and `hostssl` rules (certuser must show a
/// certificate).
async fn tls_only(cluster: &TempCluster, pki: &Pki) {
    let data = cluster.dir().join("data");
    for (from, to) in [
        ("server.pem", "server.crt"),
        ("server.key", "server.key"),
        ("ca.pem", "root.crt"),
    ] {
        let path = data.join(to);
        std::fs::copy(pki.dir.join(from), &path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if pgfleet_cli::sandbox::running_as_root() {
            assert!(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success()
            );
        }
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all certuser 127.0.0.1/32 trust clientcert=verify-full\n\
         hostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    let admin = cluster.connect("tls-setup").await.unwrap();
    // One statement at a time: ALTER SYSTEM refuses a transaction block.
    for statement in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl_ca_file = 'root.crt'",
        "CREATE ROLE certuser LOGIN",
        "GRANT pg_monitor TO certuser",
        "SELECT pg_reload_conf()",
    ] {
        admin.simple_query(statement).await.unwrap();
    }
    // The reload is asynchronous: wait until a plain connection is refused.
    for _ in 0..50 {
        if cluster.connect("tls-probe").await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server still accepts plain connections");
}

/// `pgfleet-agent --once` on `target`: its exit status and the target's JSON.
fn once(target: &str) -> (bool, Value) {
    let out = Command::new(pgfleet_tests::agent_binary())
        .args([
            "--once",
            "--collector",
            "http://127.0.0.1:1",
            "--target",
            target,
        ])
        .env("PGFLEET_POOL_REPORTER_LISTEN", "off")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {stderr} {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), json[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_the_store_and_pgbouncer_speak_tls_as_libpq_does() {
    let cluster = TempCluster::start().await.unwrap();
    let pki = Pki::make(&cluster.dir().join("pki"));
    tls_only(&cluster, &pki).await;
    let port = cluster.port();
    let at = |user: &str, rest: &str| {
        format!("host={NAME} hostaddr=127.0.0.1 port={port} user={user} dbname=postgres {rest}")
    };

    // require: encrypted, nothing checked; --once says the version.
    let (ok, t) = once(&at("postgres", "sslmode=require"));
    assert!(ok, "{t}");
    assert!(t["tls"].as_str().unwrap().starts_with("TLSv1."), "{t}");
    // prefer (the default) takes TLS when offered.
    let (ok, t) = once(&at("postgres", ""));
    assert!(
        ok && t["tls"].as_str().unwrap().starts_with("TLSv1."),
        "{t}"
    );
    // verify-full with the right CA.
    let (ok, t) = once(&at(
        "postgres",
        &format!("sslmode=verify-full sslrootcert={}", pki.path("ca.pem")),
    ));
    assert!(ok, "{t}");
    // A certificate signed by another CA is refused, saying so.
    let other = pki.path("other-ca.pem");
    let (ok, t) = once(&at(
        "postgres",
        &format!("sslmode=verify-full sslrootcert={other}"),
    ));
    let reason = t["reason"].as_str().unwrap();
    assert!(!ok, "{t}");
    assert!(
        reason.contains(&format!("TLS handshake with {NAME}:{port} failed"))
            && reason.contains("unknown CA")
            && reason.contains(&format!("sslrootcert={other}")),
        "{reason}"
    );
    assert!(
        !reason.contains("Error occurred while creating"),
        "{reason}"
    );
    // verify-ca, and require with a root (which then checks the chain, as
    // libpq does), refuse it too.
    for mode in ["verify-ca", "require"] {
        let (ok, t) = once(&at(
            "postgres",
            &format!("sslmode={mode} sslrootcert={other}"),
        ));
        assert!(!ok, "{mode}: {t}");
        assert!(
            t["reason"].as_str().unwrap().contains("unknown CA"),
            "{mode}: {t}"
        );
    }
    // A host name the certificate does not carry: refused by verify-full,
    // accepted by verify-ca (which checks the chain only).
    let by_ip = format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres sslrootcert={}",
        pki.path("ca.pem")
    );
    let (ok, t) = once(&format!("{by_ip} sslmode=verify-full"));
    assert!(!ok, "{t}");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("does not name the host"),
        "{t}"
    );
    let (ok, t) = once(&format!("{by_ip} sslmode=verify-ca"));
    assert!(ok, "{t}");
    // A client certificate, for a clientcert=verify-full rule; without it,
    // PostgreSQL refuses.
    let (ok, t) = once(&at(
        "certuser",
        &format!(
            "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            pki.path("ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key")
        ),
    ));
    assert!(ok, "{t}");
    let (ok, t) = once(&at("certuser", "sslmode=require"));
    assert!(!ok, "{t}");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("valid client certificate"),
        "{t}"
    );
    // disable, against hostssl only: PostgreSQL's own reason.
    let (ok, t) = once(&at("postgres", "sslmode=disable"));
    assert!(!ok, "{t}");
    let reason = t["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "{NAME}:{port} refused: FATAL: no pg_hba.conf entry"
        )),
        "{reason}"
    );
    // The variables, as libpq's.
    let out = Command::new(pgfleet_tests::agent_binary())
        .args(["--once", "--collector", "http://127.0.0.1:1", "--target"])
        .arg(at("postgres", ""))
        .env("PGFLEET_POOL_REPORTER_LISTEN", "off")
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown CA"));

    // The collector's store, the same cases: it opens over TLS as asked, and
    // a refusal says why at start.
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let named = |user: &str, query: &str| {
        format!("postgres://{user}@{NAME}:{port}/postgres?hostaddr=127.0.0.1&{query}")
    };
    // certuser's first: it makes the tables, in its own schema.
    let cases: Vec<(String, Option<&str>)> = vec![
        (
            named(
                "certuser",
                &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
            ),
            None,
        ),
        (named("postgres", "sslmode=require"), None),
        (
            named("postgres", &format!("sslmode=verify-full&sslrootcert={ca}")),
            None,
        ),
        (
            named(
                "postgres",
                &format!("sslmode=verify-full&sslrootcert={other}"),
            ),
            Some("unknown CA"),
        ),
        (
            format!(
                "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
            ),
            Some("does not name the host"),
        ),
        (
            named("postgres", "sslmode=disable"),
            Some("no pg_hba.conf entry"),
        ),
    ];
    // The store creates its tables (over the socket, which the rules above
    // leave open, the schema is made for certuser).
    let local = tokio_postgres::Config::new()
        .host_path(cluster.dir())
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await;
    let (client, connection) = local.expect("the socket takes local connections");
    tokio::spawn(connection);
    // Its schema belongs to certuser, so that every case below may use it.
    for statement in [
        "GRANT CREATE ON DATABASE postgres TO certuser",
        "CREATE SCHEMA pgfleet AUTHORIZATION certuser",
    ] {
        client.simple_query(statement).await.unwrap();
    }
    for (i, (url, refused)) in cases.into_iter().enumerate() {
        let mut config = CollectorConfig::new(
            ([127, 0, 0, 1], 0).into(),
            cluster.dir().join(format!("collector-tls-{i}")),
        );
        config.http_listen = None;
        config.store = StoreConfig::Postgres(url.clone());
        match (pgfleet_collector::server::start(config).await, refused) {
            (Ok(collector), None) => collector.stop().await,
            (Err(e), Some(why)) => {
                let e = e.to_string();
                assert!(e.contains(why), "{url}: {e}");
                if why != "no pg_hba.conf entry" {
                    assert!(e.contains("TLS handshake"), "{url}: {e}");
                }
            }
            (Ok(_), Some(why)) => panic!("{url}: opened, though it should be refused ({why})"),
            (Err(e), None) => panic!("{url}: {e}"),
        }
    }

    // PgBouncer's admin console with client_tls_sslmode = require.
    let bouncer = TempPgBouncer::start_with(
        &cluster,
        1,
        &[
            ("client_tls_sslmode", "require"),
            ("client_tls_cert_file", &pki.path("server.pem")),
            ("client_tls_key_file", &pki.path("server.key")),
            ("server_tls_sslmode", "require"),
        ],
    )
    .await
    .unwrap();
    let admin = format!(
        "postgres://postgres@127.0.0.1:{}/pgbouncer?sslmode=require",
        bouncer.port()
    );
    let out = Command::new(pgfleet_tests::agent_binary())
        .args(["--once", "--collector", "http://127.0.0.1:1", "--target"])
        .arg(at("postgres", "sslmode=require"))
        .args(["--pgbouncer", &admin])
        .env("PGFLEET_POOL_REPORTER_LISTEN", "off")
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bouncer_sample = &json[0]["pgbouncer"];
    assert_eq!(bouncer_sample["up"], true, "{bouncer_sample}");
    // And without TLS, PgBouncer refuses it.
    let plain = admin.replace("sslmode=require", "sslmode=disable");
    let out = Command::new(pgfleet_tests::agent_binary())
        .args(["--once", "--collector", "http://127.0.0.1:1", "--target"])
        .arg(at("postgres", "sslmode=require"))
        .args(["--pgbouncer", &plain])
        .env("PGFLEET_POOL_REPORTER_LISTEN", "off")
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["pgbouncer"]["up"], false, "{json}");
    drop(bouncer);
    cluster.destroy().await;
}
