//! `pgfleet demo`: two throwaway PostgreSQL servers in two "data centres", with
//! varied activity, a collector and an agent for each, all started here; what
//! the collector reports about them; and, at a terminal, `pgfleet top` on it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use pgfleet_common::settings;
use pgfleet_proto::time::now_micros;
use pgfleet_proto::v1;

use super::output::Output;
use super::{CliError, fleet, remote};
use crate::sandbox::{DemoWorkload, Fleet, SandboxError, TempCluster};

/// The demo servers' names in the fleet.
const SERVER_ID: &str = "demo-db-1";
const SECOND_ID: &str = "demo-db-2";

/// How often the demo refreshes what it shows.
const REFRESH: Duration = Duration::from_secs(2);

/// Everything the demo started, torn down in reverse order.
#[derive(Default)]
struct Parts {
    fleet: Option<Fleet>,
    workload: Option<DemoWorkload>,
    /// The second server, and its agent.
    second: Option<(TempCluster, pgfleet_agent::Agent)>,
    second_workload: Option<DemoWorkload>,
}

/// Runs the demo; Ctrl-C at any point stops everything and cleans up.
pub async fn run(keep_running: bool, duration: &str, output: Output) -> Result<(), CliError> {
    let duration = settings::parse_duration(
        "duration",
        duration,
        Duration::from_secs(1)..=Duration::from_secs(86_400),
    )?;
    let mut parts = Parts::default();
    let result = tokio::select! {
        r = show(&mut parts, keep_running, duration, output) => r,
        _ = stop_signal() => {
            eprintln!("\nInterrupted.");
            Ok(())
        }
    };
    drop(parts.workload.take());
    drop(parts.second_workload.take());
    let mut removed = Vec::new();
    if let Some((cluster, agent)) = parts.second.take() {
        agent.stop().await;
        removed.push(cluster.dir().display().to_string());
        cluster.destroy().await;
    }
    if let Some(fleet) = parts.fleet.take() {
        removed.insert(0, fleet.cluster.dir().display().to_string());
        fleet.stop().await;
        eprintln!("Stopped the demo and removed {}.", removed.join(" and "));
    }
    result
}

async fn show(
    parts: &mut Parts,
    keep_running: bool,
    duration: Duration,
    output: Output,
) -> Result<(), CliError> {
    let failed = |e: SandboxError| CliError::Failed(format!("demo: {e}"));
    eprintln!("Starting two throwaway PostgreSQL servers, a collector and their agents…");
    let labels = [("dc", "demo-dc1"), ("cluster", "demo")];
    let cluster = with_statements().await.map_err(failed)?;
    let fleet = parts.fleet.insert(
        Fleet::start_on(cluster, SERVER_ID, &labels)
            .await
            .map_err(failed)?,
    );
    let (url, port) = (fleet.url.clone(), fleet.cluster.port());
    eprintln!(
        "PostgreSQL on 127.0.0.1:{port} ({}); collector on {url}; the agent samples {SERVER_ID} every second.",
        fleet.cluster.dir().display()
    );
    let web = fleet.web().unwrap_or_default();
    eprintln!("The web UI is at {web} (open it in a browser).");
    parts.workload = Some(DemoWorkload::start(&fleet.cluster).await.map_err(failed)?);
    let second = with_statements().await.map_err(failed)?;
    let agent = fleet
        .start_agent(
            SECOND_ID,
            &[("dc", "demo-dc2"), ("cluster", "demo")],
            second.config("pgfleet"),
        )
        .map_err(failed)?;
    eprintln!(
        "A second PostgreSQL on 127.0.0.1:{} is {SECOND_ID}, in demo-dc2.",
        second.port()
    );
    parts.second_workload = Some(DemoWorkload::start(&second).await.map_err(failed)?);
    parts.second = Some((second, agent));

    let mut client = remote::connect(&remote::Remote::plain(url.clone())).await?;
    wait_for_lock_waiter(&mut client).await;

    let tty = std::io::stdout().is_terminal();
    let until = tokio::time::Instant::now() + duration;
    loop {
        frame(&mut client, &url, output, tty).await?;
        if keep_running || tokio::time::Instant::now() + REFRESH > until {
            break;
        }
        tokio::time::sleep(REFRESH).await;
    }
    if keep_running {
        println!(
            "\nThe demo keeps running until Ctrl-C. Open {web} in a browser, or in another terminal:\n  \
             pgfleet --collector {url} top\n  \
             pgfleet --collector {url} servers\n  \
             pgfleet --collector {url} activity {SERVER_ID}\n  \
             pgfleet --collector {url} activity {SERVER_ID} --state idle-in-transaction --output json\n  \
             pgfleet --collector {url} pools {SERVER_ID}\n  \
             pgfleet --collector {url} databases {SERVER_ID}\n  \
             psql -h 127.0.0.1 -p {port} -U postgres"
        );
        std::future::pending::<()>().await;
    } else if tty
        && std::io::stdin().is_terminal()
        && ask("\nOpen `pgfleet top` on this fleet now? [Y/n] ").await
    {
        super::top::top(
            &remote::Remote::plain(url.clone()),
            super::top::TopArgs::default(),
        )
        .await?;
    } else {
        println!(
            "\nThat was pgfleet. `pgfleet demo --keep-running` leaves the demo up to query it yourself."
        );
    }
    Ok(())
}

/// A demo server that keeps statement statistics, so that the top queries
/// and the query pages show calls and times beside load. The extension is
/// made before an agent watches the server (an agent that finds none looks
/// again only ten minutes later).
async fn with_statements() -> Result<TempCluster, SandboxError> {
    let cluster =
        TempCluster::start_with(&[("shared_preload_libraries", "pg_stat_statements")]).await?;
    let fail = |e: tokio_postgres::Error| SandboxError::Workload(pgfleet_common::error::chain(&e));
    let client = cluster.connect("demo-setup").await.map_err(fail)?;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .map_err(fail)?;
    Ok(cluster)
}

/// Ctrl-C, or the terminal closing (SIGHUP), or a polite kill (SIGTERM):
/// each ends the demo the same way, cleaning up.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = hup.recv() => {}
        _ = term.recv() => {}
    }
}

/// Asks a yes-or-no question at the terminal; yes unless the answer says no.
async fn ask(question: &str) -> bool {
    print!("{question}");
    let _ = std::io::stdout().flush();
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    match answer {
        Ok(Ok(line)) => !line.trim().to_lowercase().starts_with('n'),
        _ => false,
    }
}

/// Waits (up to 15 s) until the collector shows the session waiting on a lock, so
/// the first screen already has everything.
async fn wait_for_lock_waiter(client: &mut crate::Client) {
    for _ in 0..60 {
        if let Ok(r) = client.get_activity(activity_request()).await
            && r.get_ref()
                .sessions
                .iter()
                .any(|s| !s.blocked_by.is_empty())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the demo shows of its server: the client sessions, as `pgfleet activity`.
fn activity_request() -> v1::GetActivityRequest {
    v1::GetActivityRequest {
        server_id: SERVER_ID.to_owned(),
        ..Default::default()
    }
}

/// One screen: the servers, then the demo server's activity.
async fn frame(
    client: &mut crate::Client,
    url: &str,
    output: Output,
    tty: bool,
) -> Result<(), CliError> {
    let servers = client
        .list_servers(v1::ListServersRequest::default())
        .await
        .map_err(|s| remote::call_failed_at(url, remote::DEFAULT_TIMEOUT, s))?
        .into_inner();
    let activity = client
        .get_activity(activity_request())
        .await
        .map_err(|s| remote::call_failed_at(url, remote::DEFAULT_TIMEOUT, s))?
        .into_inner();
    let pools = client
        .get_pools(v1::GetPoolsRequest {
            server_id: SERVER_ID.to_owned(),
        })
        .await
        .map_err(|s| remote::call_failed_at(url, remote::DEFAULT_TIMEOUT, s))?
        .into_inner();
    let now = now_micros();
    let mut screen = String::new();
    if tty {
        screen.push_str("\x1b[H\x1b[2J");
    }
    screen.push_str(&format!(
        "── pgfleet demo · {} ─────────────────────────────\n$ pgfleet servers\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    ));
    screen.push_str(&fleet::render_servers(&servers.servers, output, now));
    screen.push_str(&format!("\n$ pgfleet activity {SERVER_ID}\n"));
    screen.push_str(&fleet::render_activity(&activity, output, now));
    screen.push_str(&format!("\n$ pgfleet pools {SERVER_ID}\n"));
    screen.push_str(&super::pools::render_pools(&pools, output, now));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(screen.as_bytes());
    let _ = stdout.flush();
    Ok(())
}
