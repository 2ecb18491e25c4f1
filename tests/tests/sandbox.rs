//! The throwaway cluster is always torn down, even when nobody calls destroy.

use std::time::Duration;

use pgfleet_tests::TempCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_cluster_stops_its_server_and_removes_its_directory() {
    let cluster = TempCluster::start().await.unwrap();
    let dir = cluster.dir().to_owned();
    let port = cluster.port();
    let client = cluster.connect("t-drop").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);

    drop(cluster);
    assert!(!dir.exists(), "{} is still there", dir.display());
    // Nothing listens on the port any more. (A login attempt would not tell:
    // a server left running without its data directory refuses logins too.)
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let listening = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(
        listening.is_err(),
        "the server still listens on port {port}"
    );
}
