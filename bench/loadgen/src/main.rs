//! pgfleet-loadgen: N simulated agents, each streaming one server of 100
//! sessions (about 10% changing each second) at 1 Hz to a collector over the
//! real protocol (Hello, Welcome, zstd-compressed batches of keyframes and
//! deltas made by the agent's own encoder, one HTTP/2 connection per agent),
//! and readers that time the collector's answers meanwhile. The agents'
//! snapshots are recorded once, a minute of a few dozen agents, and replayed
//! by every agent as its own (`script`); each batch is compressed as an agent
//! compresses it.
//!
//! It prints one JSON object of figures; `bench/collector_load.py` runs it
//! against a `pgfleet-collector` at rising N and writes BENCHMARKS.md.
#![forbid(unsafe_code)]

mod script;
#[path = "../../../agent/benches/support/wire_sim.rs"]
mod wire_sim;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Parser;
use pgfleet_agent::ship::RECONNECT_SPREAD;
use pgfleet_common::backoff::Backoff;
use pgfleet_proto::time::{self, now_micros};
use pgfleet_proto::v1::{
    self, agent_message, collector_message, ingest_client::IngestClient, query_client::QueryClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

use script::{RECORDED, Recording, Replay};

/// mimalloc, as the collector has: glibc's malloc took about an eighth of
/// the generator's CPU, which it shares the machine with the collector for.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How many steps of nice the reader takes above the generator's agents,
/// where the system allows it.
const READER_PRIORITY: i32 = 10;

/// The reader's time slice, as the collector's readers' threads ask.
const READER_SLICE: Duration = Duration::from_micros(100);

const DCS: &[&str] = &["eu1", "eu2", "us1", "us2", "ap1"];

#[derive(Debug, Parser)]
#[command(about = "Simulated pgfleet agents against one collector, and timed queries.")]
struct Args {
    /// The collector's gRPC address
    #[arg(long, default_value = "http://127.0.0.1:7600")]
    collector: String,
    /// Where the readers ask: the collector's readers' port
    /// (`--query-listen`) [default: --collector]
    #[arg(long)]
    query: Option<String>,
    /// With --query: every other GetActivity goes to --collector instead,
    /// timed apart, so that the two ports are compared in one run
    #[arg(long, requires = "query")]
    compare_listen: bool,
    /// The collector's pid, to read its memory and CPU from /proc
    #[arg(long)]
    collector_pid: Option<u32>,
    /// How many agents (one stream and connection each)
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// How many servers each agent watches: its Hello names them all and
    /// each batch carries a snapshot of each, as an agent with several
    /// `[[targets]]` sends them
    #[arg(long, default_value_t = 1)]
    servers_per_agent: usize,
    /// Sessions per server
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// The share of sessions that change each second
    #[arg(long, default_value_t = 0.1)]
    change: f64,
    /// How many agents connect per second while the fleet ramps up
    #[arg(long, default_value_t = 1000)]
    connect_rate: usize,
    /// Of the agents, how many first send an hour of history (as fast as the
    /// collector takes it), so that `GetActivity … at` 1 h back can be timed
    #[arg(long, default_value_t = 0)]
    history_agents: usize,
    /// How many agents share one HTTP/2 connection (real agents each have
    /// their own; more shows what a connection costs the collector)
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// How agents compress their messages: zstd (batches as zstd frames,
    /// the agent's default), grpc-zstd (gRPC's message compression, as
    /// agents before zstd batches did), gzip or none
    #[arg(long, default_value = "zstd")]
    compression: String,
    /// How long after the last agent connected before measuring
    #[arg(long, default_value = "20s")]
    warmup: humantime::Duration,
    /// How long to measure
    #[arg(long, default_value = "60s")]
    measure: humantime::Duration,
    /// When a stream ends (the collector restarted), connect again and go
    /// on, as real agents do (bench/soak.py, bench/collector_load.py's
    /// storm): the first attempt at a random time within the agent's
    /// reconnect spread, then with its backoff. Otherwise it counts as an
    /// error and the agent stops. With it, a line of JSON goes to stderr
    /// every second: the streams live then (past Welcome and a first batch)
    #[arg(long)]
    reconnect: bool,
    /// Time no reads: only the collector's CPU and memory over the window
    /// (against a server with no Query service, as the transport's floor of
    /// bench/transport_floor.py)
    #[arg(long)]
    no_reads: bool,
    /// Write a line per GetActivity answer in the measuring window to this
    /// file: the time (Unix ms), the freshness (ms) and how long the answer
    /// took (µs), to see when in the minute the live view falls behind
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
}

/// Counters the agents share.
#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    batches: AtomicU64,
    /// Snapshots in those batches.
    snapshots: AtomicU64,
    bytes_raw: AtomicU64,
    keyframe_requests: AtomicU64,
    errors: AtomicU64,
    /// Streams opened again after one ended (--reconnect).
    reconnects: AtomicU64,
    /// Streams past Welcome and their first batch, now.
    live: AtomicI64,
    /// Attempts to stream that failed before Welcome (--reconnect).
    failed_attempts: AtomicU64,
    /// Reads that failed while the collector was away (--reconnect).
    read_errors: AtomicU64,
    /// Agents done sending their hour of history.
    history_done: AtomicU64,
    /// The time batch sends waited for the stream, in µs (the collector's
    /// back-pressure).
    send_wait_us: AtomicU64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = runtime.block_on(run(args))?;
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

/// A Query client of the collector at `url`, taking answers of up to 64 MiB.
async fn query_client(url: &str) -> Result<QueryClient<Channel>, tonic::transport::Error> {
    Ok(QueryClient::new(endpoint(url)?.connect().await?).max_decoding_message_size(64 << 20))
}

fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10)))
}

async fn run(args: Args) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let args = Arc::new(args);
    let stats = Arc::new(Stats::default());
    let base_rss = args.collector_pid.and_then(rss_kib);
    let started = Instant::now();
    if args.reconnect {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "unix_s": std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64()),
                        "live": stats.live.load(Relaxed),
                        "reconnects": stats.reconnects.load(Relaxed),
                        "failed_attempts": stats.failed_attempts.load(Relaxed),
                        "errors": stats.errors.load(Relaxed),
                    })
                );
            }
        });
    }
    // The agents' minutes, recorded before any connects; agents take them
    // in turn.
    let changed = ((args.sessions as f64 * args.change).round() as usize).max(1);
    let recordings: Vec<Arc<Recording>> = (0..RECORDED.min(args.agents) as u64)
        .map(|seed| {
            Arc::new(Recording::new(
                seed,
                args.servers_per_agent.max(1),
                args.sessions,
                changed,
            ))
        })
        .collect();
    let mut agents = Vec::with_capacity(args.agents);
    let per = args.streams_per_connection.max(1);
    let mut shared: Option<Channel> = None;
    for i in 0..args.agents {
        let channel = if per == 1 {
            None
        } else {
            if i.is_multiple_of(per) || shared.is_none() {
                shared = Some(endpoint(&args.collector)?.connect_lazy());
            }
            shared.clone()
        };
        let recording = recordings[i % recordings.len()].clone();
        agents.push(tokio::spawn(agent(
            i,
            args.clone(),
            stats.clone(),
            channel,
            recording,
        )));
        if (i + 1).is_multiple_of(args.connect_rate.max(1)) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // Every agent connected, and the history sent: a history still going
    // after 3 minutes is left to go on, and `GetActivity … at` is not timed.
    let deadline = Instant::now() + Duration::from_secs(180);
    let histories = args.history_agents.min(args.agents) as u64;
    while (stats.connected.load(Relaxed) + stats.errors.load(Relaxed)) < args.agents as u64
        || stats.history_done.load(Relaxed) < histories
    {
        if Instant::now() > deadline {
            if (stats.connected.load(Relaxed) + stats.errors.load(Relaxed)) < args.agents as u64 {
                return Err(
                    "the agents did not all connect within 3 minutes: the collector (or this machine) does not keep up".into(),
                );
            }
            eprintln!(
                "{} of {histories} agents' hour of history not sent within 3 minutes; measuring without `GetActivity … at`",
                histories - stats.history_done.load(Relaxed)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history_complete = stats.history_done.load(Relaxed) >= histories;
    let ramp = started.elapsed();
    tokio::time::sleep(*args.warmup).await;

    // The readers run on a thread and runtime of their own, so that the
    // agents' tasks do not delay (and inflate) the times they take.
    let reader_args = args.clone();
    let reader_stats = stats.clone();
    // It is named, so that its scheduling can be looked at (and changed)
    // apart from the agents' threads.
    let (done, readings) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pgfleet-reader".into())
        .spawn(move || {
            // The reader stands for a tool on another machine, where no
            // agent competes with it for a core: it is raised, where the
            // system allows it, so that what it times is the collector's
            // answer rather than its own turn behind the agents.
            let nice = pgfleet_common::sched::favour_thread(READER_PRIORITY, READER_SLICE)
                .ok()
                .filter(|f| f.raised)
                .map(|f| f.nice);
            let read = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|runtime| {
                    runtime
                        .block_on(read(&reader_args, &reader_stats, history_complete))
                        .map_err(|e| e.to_string())
                });
            let _ = done.send((nice, read));
        })?;
    let (reader_nice, readings) = readings.await?;
    let mut r = readings?;
    let connected = stats.connected.load(Relaxed);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(serde_json::json!({
        "agents": args.agents,
        "sessions_per_server": args.sessions,
        "connected": connected,
        "errors": stats.errors.load(Relaxed),
        "reconnects": stats.reconnects.load(Relaxed),
        "failed_attempts": stats.failed_attempts.load(Relaxed),
        "read_errors": stats.read_errors.load(Relaxed),
        // The reader's nice value, if it was raised.
        "reader_nice": reader_nice,
        "history_complete": history_complete,
        "ramp_s": ramp.as_secs_f64(),
        "measured_s": r.measured.as_secs_f64(),
        "batches_per_s": r.batches as f64 / r.measured.as_secs_f64(),
        "servers_per_agent": args.servers_per_agent.max(1),
        "snapshots_per_s": r.snapshots as f64 / r.measured.as_secs_f64(),
        "wire_bytes_per_batch": stats.bytes_raw.load(Relaxed) as f64 / stats.batches.load(Relaxed).max(1) as f64,
        "keyframe_requests": stats.keyframe_requests.load(Relaxed),
        "send_wait_ms_per_batch": stats.send_wait_us.load(Relaxed) as f64 / 1e3 / stats.batches.load(Relaxed).max(1) as f64,
        "servers_up": r.up,
        "sessions_seen": r.sessions,
        "freshness_p50_ms": percentile(&mut r.freshness, 50.0).map(ms),
        "freshness_p99_ms": percentile(&mut r.freshness, 99.0).map(ms),
        "freshness_max_ms": percentile(&mut r.freshness, 100.0).map(ms),
        "freshness_samples": r.freshness.len(),
        "get_activity_p50_ms": percentile(&mut r.activity, 50.0).map(ms),
        "get_activity_p99_ms": percentile(&mut r.activity, 99.0).map(ms),
        "get_activity_calls": r.activity.len(),
        "get_activity_listen_p50_ms": percentile(&mut r.activity_listen, 50.0).map(ms),
        "get_activity_listen_p99_ms": percentile(&mut r.activity_listen, 99.0).map(ms),
        "get_activity_listen_calls": r.activity_listen.len(),
        "fleet_summary_p50_ms": percentile(&mut r.summary, 50.0).map(ms),
        "fleet_summary_p99_ms": percentile(&mut r.summary, 99.0).map(ms),
        "fleet_summary_calls": r.summary.len(),
        "at_1h_p50_ms": percentile(&mut r.at_times, 50.0).map(ms),
        "at_1h_max_ms": percentile(&mut r.at_times, 100.0).map(ms),
        "at_1h_sessions": r.at_sessions,
        "collector_rss_base_kib": base_rss,
        "collector_rss_kib": r.rss,
        "collector_kib_per_server": match (r.rss, base_rss) {
            (Some(r), Some(b)) if connected > 0 => Some(
                (r.saturating_sub(b)) as f64 / (connected * args.servers_per_agent.max(1) as u64) as f64,
            ),
            _ => None,
        },
        "collector_cores": match (r.cpu_before, r.cpu_after) {
            (Some(b), Some(a)) => Some((a - b) as f64 / 100.0 / r.measured.as_secs_f64()),
            _ => None,
        },
    }))
}

/// What the readers measured.
struct Readings {
    measured: Duration,
    batches: u64,
    snapshots: u64,
    freshness: Vec<Duration>,
    activity: Vec<Duration>,
    /// GetActivity on --collector's port (--compare-listen).
    activity_listen: Vec<Duration>,
    summary: Vec<Duration>,
    at_times: Vec<Duration>,
    at_sessions: Vec<usize>,
    up: u32,
    sessions: u32,
    cpu_before: Option<u64>,
    cpu_after: Option<u64>,
    rss: Option<u64>,
}

/// Times GetActivity (and the freshness of what it returns) and
/// FleetSummary for the measuring window, then `GetActivity … at` an hour
/// back, and reads the collector's memory and CPU.
async fn read(
    args: &Args,
    stats: &Stats,
    history_complete: bool,
) -> Result<Readings, Box<dyn std::error::Error>> {
    let cpu_before = args.collector_pid.and_then(cpu_ticks);
    let batches_before = stats.batches.load(Relaxed);
    let snapshots_before = stats.snapshots.load(Relaxed);
    let measure_start = Instant::now();
    if args.no_reads {
        tokio::time::sleep(*args.measure).await;
        return Ok(Readings {
            measured: measure_start.elapsed(),
            batches: stats.batches.load(Relaxed) - batches_before,
            snapshots: stats.snapshots.load(Relaxed) - snapshots_before,
            freshness: Vec::new(),
            activity: Vec::new(),
            activity_listen: Vec::new(),
            summary: Vec::new(),
            at_times: Vec::new(),
            at_sessions: Vec::new(),
            up: 0,
            sessions: 0,
            cpu_before,
            cpu_after: args.collector_pid.and_then(cpu_ticks),
            rss: args.collector_pid.and_then(rss_kib),
        });
    }
    let mut query = query_client(args.query.as_deref().unwrap_or(&args.collector)).await?;
    let mut freshness = Vec::new();
    let mut activity = Vec::new();
    let mut activity_listen = Vec::new();
    let mut on_listen = match (&args.query, args.compare_listen) {
        (Some(_), true) => Some(query_client(&args.collector).await?),
        _ => None,
    };
    let mut turn = 0u64;
    let mut summary = Vec::new();
    let mut rng = wire_sim::Rng(0x5eed);
    let mut trace = match &args.trace {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => None,
    };
    let mut last_summary = Instant::now() - Duration::from_secs(1);
    while measure_start.elapsed() < *args.measure {
        if last_summary.elapsed() >= Duration::from_millis(250) {
            last_summary = Instant::now();
            let t = Instant::now();
            let answer = query
                .fleet_summary(v1::FleetSummaryRequest {
                    group_by: "dc".into(),
                    labels: Default::default(),
                })
                .await;
            match answer {
                Ok(_) => summary.push(t.elapsed()),
                // The collector restarting (--reconnect): read again later.
                Err(_) if args.reconnect => {
                    stats.read_errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let server_id = server_id(rng.below(args.agents * args.servers_per_agent.max(1)));
        turn += 1;
        let (client, times) = match &mut on_listen {
            Some(listen) if turn.is_multiple_of(2) => (listen, &mut activity_listen),
            _ => (&mut query, &mut activity),
        };
        let t = Instant::now();
        let response = match client
            .get_activity(v1::GetActivityRequest {
                server_id,
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(_) if args.reconnect => {
                stats.read_errors.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // An agent that could not register (counted in `errors`): its
            // server is not known, which is not the reader's failure.
            Err(e) if e.code() == tonic::Code::NotFound => {
                stats.read_errors.fetch_add(1, Relaxed);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        times.push(t.elapsed());
        if let Some(at) = &response.sampled_at {
            freshness.push(Duration::from_micros(
                (now_micros() - time::timestamp_micros(at)).max(0) as u64,
            ));
            if let Some(trace) = &mut trace {
                let line = format!(
                    "{} {} {}\n",
                    now_micros() / 1000,
                    freshness.last().map_or(0, Duration::as_millis),
                    times.last().map_or(0, Duration::as_micros),
                );
                trace.write_all(line.as_bytes())?;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let measured = measure_start.elapsed();
    if let Some(mut trace) = trace {
        trace.flush()?;
    }
    let cpu_after = args.collector_pid.and_then(cpu_ticks);
    let rss = args.collector_pid.and_then(rss_kib);
    let batches = stats.batches.load(Relaxed) - batches_before;
    let snapshots = stats.snapshots.load(Relaxed) - snapshots_before;

    // The fleet as the collector sees it.
    let rows = query
        .fleet_summary(v1::FleetSummaryRequest::default())
        .await?
        .into_inner()
        .rows;
    let up: u32 = rows.iter().map(|r| r.servers_up).sum();
    let sessions: u32 = rows.iter().map(|r| r.sessions).sum();

    // A past instant an hour back, rebuilt from the store.
    let mut at_times = Vec::new();
    let mut at_sessions = Vec::new();
    // The servers of the agents that sent history come first.
    let timed = if history_complete {
        (args.history_agents.min(args.agents) * args.servers_per_agent.max(1)).min(20)
    } else {
        0
    };
    for i in 0..timed {
        let t = Instant::now();
        let response = query
            .get_activity(v1::GetActivityRequest {
                server_id: server_id(i),
                at: Some(time::timestamp(now_micros() - 3_600_000_000)),
                ..Default::default()
            })
            .await?
            .into_inner();
        at_times.push(t.elapsed());
        at_sessions.push(response.sessions.len());
    }

    Ok(Readings {
        measured,
        batches,
        snapshots,
        freshness,
        activity,
        activity_listen,
        summary,
        at_times,
        at_sessions,
        up,
        sessions,
        cpu_before,
        cpu_after,
        rss,
    })
}

fn server_id(i: usize) -> String {
    format!("load-{i:05}")
}

/// The `p`th percentile (nearest rank); None when there are no samples.
fn percentile(samples: &mut [Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// One simulated agent: connect, Hello, then a batch every second.
async fn agent(
    i: usize,
    args: Arc<Args>,
    stats: Arc<Stats>,
    channel: Option<Channel>,
    recording: Arc<Recording>,
) {
    // The agent's own timings (pgfleet_agent::ship).
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut channel = channel;
    loop {
        let mut live = false;
        let ended = stream(i, &args, &stats, channel.take(), &recording, &mut live)
            .await
            .map_err(|e| e.to_string());
        if live {
            stats.live.fetch_sub(1, Relaxed);
        }
        match ended {
            Err(_) if args.reconnect => {
                // A stream that was live: again within the spread; an
                // attempt that failed: with backoff.
                let wait = if live {
                    stats.reconnects.fetch_add(1, Relaxed);
                    backoff.reset();
                    backoff.spread(RECONNECT_SPREAD)
                } else {
                    stats.failed_attempts.fetch_add(1, Relaxed);
                    backoff.next_delay()
                };
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                stats.errors.fetch_add(1, Relaxed);
                eprintln!("agent {i}: {e}");
                return;
            }
            Ok(()) => return,
        }
    }
}

async fn stream(
    i: usize,
    args: &Args,
    stats: &Stats,
    channel: Option<Channel>,
    recording: &Arc<Recording>,
    streaming: &mut bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let per = args.servers_per_agent.max(1);
    let ids: Vec<String> = (i * per..(i + 1) * per).map(server_id).collect();
    let id = &ids[0];
    let channel: Channel = match channel {
        Some(c) => c,
        None => endpoint(&args.collector)?.connect().await?,
    };
    let mut client = IngestClient::new(channel).accept_compressed(CompressionEncoding::Zstd);
    match args.compression.as_str() {
        "grpc-zstd" => client = client.send_compressed(CompressionEncoding::Zstd),
        "gzip" => client = client.send_compressed(CompressionEncoding::Gzip),
        _ => {}
    }
    let (tx, rx) = mpsc::channel(4);
    let hello = v1::Hello {
        agent_id: format!("agent-{id}"),
        agent_version: "loadgen".into(),
        labels: [
            ("dc".to_owned(), DCS[i % DCS.len()].to_owned()),
            ("cluster".to_owned(), format!("c{:03}", i / 4)),
            (
                "role".to_owned(),
                if i.is_multiple_of(4) {
                    "primary"
                } else {
                    "replica"
                }
                .to_owned(),
            ),
        ]
        .into_iter()
        .collect(),
        targets: ids
            .iter()
            .map(|id| v1::Target {
                server_id: id.clone(),
                labels: Default::default(),
            })
            .collect(),
        sample_interval_ms: 1000,
    };
    tx.send(message(agent_message::Msg::Hello(hello))).await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let welcome = match inbound.message().await? {
        Some(v1::CollectorMessage {
            msg: Some(collector_message::Msg::Welcome(w)),
        }) => w,
        other => return Err(format!("expected Welcome, got {other:?}").into()),
    };
    stats.connected.fetch_add(1, Relaxed);
    let mut seq = welcome.resume_after_seq;
    let mut zstd = match args.compression.as_str() {
        "zstd" if welcome.config.is_some_and(|c| c.zstd_batches) => Some(
            zstd::bulk::Compressor::new(pgfleet_agent::outgoing::ZSTD_LEVEL)?,
        ),
        "zstd" => return Err("the collector does not take zstd batches".into()),
        _ => None,
    };

    let history = i < args.history_agents;
    let now = now_micros();
    let start = if history {
        now - 3_600_000_000 - 60_000_000
    } else {
        now
    };
    // Each stream starts the recording again, with a keyframe and the whole
    // dictionary, as an agent's new stream does.
    let mut replay = Replay::new(recording.clone(), per);
    let mut dictionary = recording.dictionary.clone();
    let mut at = start;
    let mut n = 0u64;
    // Seconds spread over the fleet, as real agents' ticks are.
    let phase = Duration::from_micros((i as u64 * 7_919_000) % 1_000_000);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The history's timestamps run up to now; live sampling follows.
    let mut live = !history;
    loop {
        if live {
            tokio::select! {
                _ = tick.tick() => {}
                message = inbound.message() => {
                    handle(message?, &mut replay, &ids, stats)?;
                    continue;
                }
            }
            at = now_micros();
        } else {
            at += 1_000_000;
            if at >= now_micros() {
                live = true;
                stats.history_done.fetch_add(1, Relaxed);
                continue;
            }
            // Keyframe requests are read between history batches too.
            while let Ok(message) = tokio::time::timeout(Duration::ZERO, inbound.message()).await {
                handle(message?, &mut replay, &ids, stats)?;
            }
        }
        n += 1;
        seq += 1;
        let batch = v1::Batch {
            seq,
            dictionary_additions: std::mem::take(&mut dictionary),
            snapshots: replay.next(&ids, at, n),
        };
        let (msg, raw) = match &mut zstd {
            Some(z) => {
                let bytes = prost::Message::encode_to_vec(&batch);
                (
                    agent_message::Msg::ZstdBatch(z.compress(&bytes)?),
                    bytes.len(),
                )
            }
            None => {
                let raw = prost::Message::encoded_len(&batch);
                (agent_message::Msg::Batch(batch), raw)
            }
        };
        // The hour of history is not counted: it is sent as fast as the
        // collector takes it, and may still go on while the fleet is measured.
        if live {
            stats.bytes_raw.fetch_add(raw as u64, Relaxed);
        }
        let waited = Instant::now();
        tx.send(message(msg)).await?;
        stats
            .send_wait_us
            .fetch_add(waited.elapsed().as_micros() as u64, Relaxed);
        if live {
            stats.batches.fetch_add(1, Relaxed);
            stats.snapshots.fetch_add(per as u64, Relaxed);
        }
        if !*streaming {
            *streaming = true;
            stats.live.fetch_add(1, Relaxed);
        }
    }
}

fn message(msg: agent_message::Msg) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(msg) }
}

/// An Ack is noted; a KeyframeRequest makes the next snapshot of each
/// server it names (of the agent's, `ids`) a keyframe.
fn handle(
    message: Option<v1::CollectorMessage>,
    replay: &mut Replay,
    ids: &[String],
    stats: &Stats,
) -> Result<(), Box<dyn std::error::Error>> {
    match message {
        None => Err("the collector ended the stream".into()),
        Some(v1::CollectorMessage {
            msg: Some(collector_message::Msg::KeyframeRequest(r)),
        }) => {
            stats.keyframe_requests.fetch_add(1, Relaxed);
            replay.keyframe(ids, &r.server_ids);
            Ok(())
        }
        Some(_) => Ok(()),
    }
}
