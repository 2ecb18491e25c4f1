//! Fault test 4: agent and collector on either side of a bad WAN, as separate
//! processes. Each lives in its own network namespace joined to this one by a
//! veth pair; the agent's link is throttled with `tbf` and cut for 20 s with
//! `ip link set … down`. This machine's kernel has no `netem`, so the 200 ms
//! of delay each way comes from the fault-injecting proxy that joins the two
//! links. Where namespaces cannot be made (not root, no `ip`), the same test
//! runs on loopback with the proxy doing the throttling and the cut too, and
//! says so.
//!
//! The stream must recover by itself, and once the link is back the p99
//! freshness (from sample to visible at the collector) must stay under 3 s
//! with the delay in place.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfleet_cli::Remote;
use pgfleet_cli::sandbox::{TempCluster, free_port, running_as_root};
use pgfleet_proto::time::{Micros, now_micros, timestamp_micros};
use pgfleet_proto::v1;
use pgfleet_tests::faultproxy::{FaultProxy, Faults};
use pgfleet_tests::{server, wait_for_status, workspace_binary};

const DELAY: Duration = Duration::from_millis(200);
/// 512 kbit/s.
const BYTES_PER_SEC: u64 = 64_000;
const CUT: Duration = Duration::from_secs(20);
const FRESHNESS_LIMIT: Duration = Duration::from_secs(3);

/// Runs `ip` (or `tc`) with `args`; an error carries what it printed.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces, each joined to this one by a veth pair; deleted on drop.
struct Namespaces {
    agent_ns: String,
    collector_ns: String,
    /// This namespace's end of the agent's link: the cable to pull.
    agent_link: String,
}

const ROOT_TO_AGENT: &str = "10.231.0.1";
const AGENT_ADDR: &str = "10.231.0.2";
const ROOT_TO_COLLECTOR: &str = "10.231.0.5";
const COLLECTOR_ADDR: &str = "10.231.0.6";

impl Namespaces {
    fn make() -> Result<Namespaces, String> {
        if !running_as_root() {
            return Err("network namespaces need root".to_owned());
        }
        if std::env::var_os("PGFLEET_TEST_NO_NETNS").is_some() {
            return Err("PGFLEET_TEST_NO_NETNS is set".to_owned());
        }
        let tag = std::process::id() % 100_000;
        let ns = Namespaces {
            agent_ns: format!("pgfa{tag}"),
            collector_ns: format!("pgfc{tag}"),
            agent_link: format!("pgfa{tag}"),
        };
        let collector_link = format!("pgfc{tag}");
        let rate = format!("{}kbit", BYTES_PER_SEC * 8 / 1000);
        for (name, link, root_addr, addr) in [
            (&ns.agent_ns, &ns.agent_link, ROOT_TO_AGENT, AGENT_ADDR),
            (
                &ns.collector_ns,
                &collector_link,
                ROOT_TO_COLLECTOR,
                COLLECTOR_ADDR,
            ),
        ] {
            let _ = run("ip", &["netns", "del", name]);
            run("ip", &["netns", "add", name])?;
            run(
                "ip",
                &[
                    "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", name,
                ],
            )?;
            run(
                "ip",
                &["addr", "add", &format!("{root_addr}/30"), "dev", link],
            )?;
            run("ip", &["link", "set", link, "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    name,
                    "addr",
                    "add",
                    &format!("{addr}/30"),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", name, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        }
        // The agent's link is slow both ways.
        let tbf = [
            "root", "tbf", "rate", &rate, "burst", "32kbit", "latency", "400ms",
        ];
        let mut root_side = vec!["qdisc", "add", "dev", ns.agent_link.as_str()];
        root_side.extend(tbf);
        run("tc", &root_side)?;
        let mut agent_side = vec![
            "netns",
            "exec",
            &ns.agent_ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
        ];
        agent_side.extend(tbf);
        run("ip", &agent_side)?;
        Ok(ns)
    }

    fn cut(&self, down: bool) {
        let state = if down { "down" } else { "up" };
        run("ip", &["link", "set", &self.agent_link, state])
            .unwrap_or_else(|e| panic!("cannot set the agent's link {state}: {e}"));
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, and so their peers.
        let _ = run("ip", &["netns", "del", &self.agent_ns]);
        let _ = run("ip", &["netns", "del", &self.collector_ns]);
    }
}

/// Prefix for a command run inside `ns` (nothing outside namespaces).
fn inside(ns: Option<&str>, program: std::path::PathBuf) -> tokio::process::Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    };
    cmd.env_remove("PGFLEET_CONFIG")
        .env("PGFLEET_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// For each snapshot the collector showed: when it was sampled, and how long
/// after that it was first visible in GetActivity.
type Seen = Arc<Mutex<BTreeMap<Micros, Micros>>>;

fn watch_freshness(remote: Remote, server_id: &'static str) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut client = loop {
            match pgfleet_cli::connect(&remote).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        loop {
            let answer = client
                .get_activity(v1::GetActivityRequest {
                    server_id: server_id.to_owned(),
                    ..Default::default()
                })
                .await;
            if let Ok(r) = answer
                && let Some(at) = r.into_inner().sampled_at
            {
                let sampled = timestamp_micros(&at);
                let now = now_micros();
                out.lock().unwrap().entry(sampled).or_insert(now - sampled);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

/// The 99th percentile and the count of the freshness of snapshots sampled
/// in `from..to`.
fn p99(seen: &Seen, from: Micros, to: Micros) -> (Duration, usize) {
    let mut lags: Vec<Micros> = seen
        .lock()
        .unwrap()
        .range(from..to)
        .map(|(_, lag)| *lag)
        .collect();
    lags.sort_unstable();
    let n = lags.len();
    let at = (n * 99).div_ceil(100).saturating_sub(1);
    let p = lags.get(at).copied().unwrap_or(Micros::MAX);
    (Duration::from_micros(p.max(0) as u64), n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_recovers_by_itself_from_a_slow_lossy_wan_and_stays_fresh() {
    pgfleet_tests::init_logs();
    let cluster = TempCluster::start().await.unwrap();
    let namespaces = match Namespaces::make() {
        Ok(ns) => Some(ns),
        Err(why) => {
            eprintln!(
                "NOTE: no network namespaces ({why}); running agent and collector on loopback, with the proxy throttling and cutting the link."
            );
            None
        }
    };
    let (collector_listen, proxy_listen): (SocketAddr, SocketAddr) = match &namespaces {
        Some(_) => (
            format!("{COLLECTOR_ADDR}:7600").parse().unwrap(),
            format!("{ROOT_TO_AGENT}:0").parse().unwrap(),
        ),
        None => (
            ([127, 0, 0, 1], free_port().unwrap()).into(),
            ([127, 0, 0, 1], 0).into(),
        ),
    };
    let mut collector = inside(
        namespaces.as_ref().map(|n| n.collector_ns.as_str()),
        workspace_binary("pgfleet-collector"),
    )
    .args([
        "--listen",
        &collector_listen.to_string(),
        "--http-listen",
        "off",
        "--data-dir",
    ])
    .arg(cluster.dir().join("collector"))
    .spawn()
    .unwrap();
    let proxy = FaultProxy::start(proxy_listen, collector_listen)
        .await
        .unwrap();
    let throttle = namespaces.is_none().then_some(BYTES_PER_SEC);
    proxy.set(Faults {
        delay: DELAY,
        bytes_per_sec: throttle,
        cut: false,
    });
    // The agent reaches PostgreSQL by its Unix socket, which no namespace
    // hides, and the collector through the proxy.
    let target = format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.dir().display(),
        cluster.port()
    );
    let mut agent = inside(
        namespaces.as_ref().map(|n| n.agent_ns.as_str()),
        pgfleet_tests::agent_binary(),
    )
    .args([
        "--collector",
        &format!("http://{}", proxy.addr),
        "--target",
        &target,
        "--server-id",
        "db-wan",
        "--agent-id",
        "agent-wan",
        "--pool-reporter-listen",
        "off",
    ])
    .spawn()
    .unwrap();

    let remote = Remote::plain(format!("http://{collector_listen}"));
    let client = loop {
        if let Ok(c) = pgfleet_cli::connect(&remote).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_for_status(&client, "db-wan", "up", Duration::from_secs(30)).await;
    let (seen, watcher) = watch_freshness(remote, "db-wan");

    // Before the cut: slow and far, but fresh.
    let start = now_micros();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (before, n_before) = p99(&seen, start, now_micros() - 3_000_000);

    // The cable is pulled for 20 s.
    let stream = |s: v1::Server| s.stream.unwrap_or_default();
    let before_cut = stream(server(&mut client.clone(), "db-wan").await.unwrap());
    let cut_at = now_micros();
    match &namespaces {
        Some(ns) => ns.cut(true),
        None => proxy.set(Faults {
            cut: true,
            ..proxy.faults()
        }),
    }
    tokio::time::sleep(CUT).await;
    match &namespaces {
        Some(ns) => ns.cut(false),
        None => proxy.set(Faults {
            cut: false,
            ..proxy.faults()
        }),
    }
    let back_at = now_micros();

    // The stream comes back by itself: a snapshot sampled after the link
    // returned shows up fresh.
    let recovered_at = pgfleet_tests::wait_for(
        "the stream to recover after the cut",
        Duration::from_secs(60),
        || {
            let seen = seen.clone();
            async move {
                let s = seen.lock().unwrap();
                match s.range(back_at..).find(|(_, lag)| **lag < 3_000_000) {
                    Some((at, _)) => Ok(*at),
                    None => Err(format!(
                        "{} snapshots seen since the cut",
                        s.range(cut_at..).count()
                    )),
                }
            }
        },
    )
    .await;
    // Nothing of the outage is missing: the batches of the samples taken
    // during the cut arrived too (late, as they must), each once.
    let after_cut = stream(server(&mut client.clone(), "db-wan").await.unwrap());
    assert_eq!(after_cut.missing_batches, 0, "{after_cut:?}");
    assert!(
        after_cut.applied_snapshots >= before_cut.applied_snapshots + 19,
        "the cut's batches did not all arrive: before {before_cut:?}, after {after_cut:?}"
    );

    // Once back, with the delay still in place: p99 freshness under 3 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (after, n_after) = p99(&seen, recovered_at, now_micros() - 3_000_000);
    watcher.abort();
    let recovery = Duration::from_micros((recovered_at - back_at).max(0) as u64);
    println!(
        "WAN ({}): p99 freshness {before:?} over {n_before} snapshots before the cut, {after:?} over {n_after} after; recovered {recovery:?} after the link came back",
        if namespaces.is_some() {
            "namespaces, tbf, proxy delay"
        } else {
            "loopback, proxy only"
        }
    );
    assert!(n_before >= 5 && n_after >= 10, "too few snapshots seen");
    assert!(before < FRESHNESS_LIMIT, "p99 before the cut: {before:?}");
    assert!(after < FRESHNESS_LIMIT, "p99 after the cut: {after:?}");
    // The processes first: a namespace lives on while a process is in it.
    let _ = agent.kill().await;
    let _ = collector.kill().await;
    drop(namespaces);
    cluster.destroy().await;
}
