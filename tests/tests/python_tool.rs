//! deploy/examples/python/pgfleet_fleet_report.py, the example internal tool,
//! against a real collector: its stubs come from proto/ at run time.

use std::time::Duration;

use pgfleet_proto::v1;
use pgfleet_tests::{fleet, wait_for, wait_for_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_tool_lists_the_servers_and_the_longest_transactions() {
    let fleet = fleet("py-db-1", &[("dc", "eu1")]).await;
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "py-db-1", "up", Duration::from_secs(20)).await;
    let long = fleet.cluster.connect("py-long-xact").await.unwrap();
    long.batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();
    let pid: i32 = long
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    wait_for("the open transaction", Duration::from_secs(15), || {
        let mut c = client.clone();
        async move {
            let top = c
                .top_sessions(v1::TopSessionsRequest::default())
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            top.sessions
                .iter()
                .any(|s| s.session.as_ref().is_some_and(|s| s.pid == pid))
                .then_some(())
                .ok_or_else(|| format!("{top:?}"))
        }
    })
    .await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/python/pgfleet_fleet_report.py"
    );
    let collector = fleet.url.trim_start_matches("http://").to_owned();
    let out = tokio::process::Command::new("python3")
        .args([
            script,
            "--collector",
            &collector,
            "--label",
            "dc=eu1",
            "--json",
        ])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let servers = report["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{report}");
    assert_eq!(servers[0]["server_id"], "py-db-1");
    assert_eq!(servers[0]["status"], "up");
    assert_eq!(servers[0]["labels"]["dc"], "eu1");
    let top = &report["top_sessions"][0];
    assert_eq!(top["pid"], pid, "{report}");
    assert_eq!(top["application_name"], "py-long-xact");
    assert_eq!(top["state"], "idle in transaction");
    assert!(top["xact_age_seconds"].as_f64().unwrap() > 0.0);

    // The table, and a label no server has.
    let out = tokio::process::Command::new("python3")
        .args([script, "--collector", &collector, "--label", "dc=nowhere"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("0 servers"),
        "{text}"
    );
    drop(long);
    fleet.stop().await;
}
