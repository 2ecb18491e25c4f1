//! Assembling and running the collector's gRPC server.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pgfleet_proto::v1::ingest_server::{Ingest, IngestServer};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tracing::{debug, error, info, warn};

use crate::aggregator::{Aggregator, AggregatorHandle, Command};
use crate::auth::{Access, Tokens};
use crate::config::CollectorConfig;
use crate::ingest::{IngestService, MAX_MESSAGE_BYTES};
use crate::query::{QueryRoutes, QueryService};
use crate::store::Store;

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address of `--listen`.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The data directory cannot be created or locked.
    #[error("cannot use data directory {}: {message}", dir.display())]
    DataDir {
        /// The directory of `--data-dir`.
        dir: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The history store cannot be opened.
    #[error("cannot open the history: {0}")]
    Store(String),
    /// The TLS settings were refused.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// The aggregator's thread could not be started.
    #[error("cannot start the aggregator: {0}")]
    Aggregator(std::io::Error),
    /// The readers' threads could not be started.
    #[error("cannot start the threads that serve readers: {0}")]
    Reads(std::io::Error),
    /// gRPC reflection could not be built from the descriptors.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
}

/// A running collector; dropping it stops the gRPC server.
pub struct Collector {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where /metrics and /healthz are served, if anywhere.
    pub http_addr: Option<SocketAddr>,
    http_server: Option<JoinHandle<()>>,
    /// Where readers alone are served (`--query-listen`), if anywhere.
    pub query_addr: Option<SocketAddr>,
    query_server: Option<JoinHandle<()>>,
    /// The runtime of the HTTP port and the readers' port.
    _reads: ReadsRuntime,
    store: Store,
    /// The aggregator, for in-process readers.
    pub aggregator: AggregatorHandle,
    shutdown: Option<oneshot::Sender<()>>,
    /// Fired (or dropped) to end every open stream.
    streams: watch::Sender<()>,
    server: JoinHandle<()>,
    _lock: File,
}

/// The gRPC server's settings: HTTP/2 pings find agents that went away
/// without a word.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
}

/// The worker threads of the runtime that serves readers: the HTTP port
/// (web UI, JSON API, /metrics) and `--query-listen`. Two, so that one long
/// answer (a day of fleet-wide load) does not hold the others back.
const READ_WORKERS: usize = 2;

/// How many steps of nice the readers' workers take above the collector's
/// own (where the system allows it: CAP_SYS_NICE, or systemd's
/// `LimitNICE=`).
const READ_PRIORITY: i32 = 5;

/// The time slice the readers' workers ask for (Linux 6.12 and later): a
/// short one lets a waking reader run soon, not after a longer slice of
/// another thread, and gives it no more CPU.
const READ_SLICE: std::time::Duration = std::time::Duration::from_micros(100);

/// The runtime that serves readers, apart from the one that serves agents'
/// streams. A read on the agents' runtime waited for a worker behind
/// thousands of streams' batches: at 10,000 servers, GetActivity's p99 was
/// 12–17 ms there for some 0.35 ms of CPU, 7–9 ms on threads of its own,
/// and about 5 ms with them favoured (BENCHMARKS.md, "Collector load").
/// Its workers alone are favoured: history reads run on its blocking
/// threads, and may be long.
fn reads_runtime() -> std::io::Result<ReadsRuntime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(READ_WORKERS)
        .thread_name("pgfleet-reads")
        .on_thread_stop(crate::threads::thread_ends)
        // Only workers park: the first time, each favours itself.
        .on_thread_park(|| {
            thread_local!(static FAVOURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
            if !FAVOURED.replace(true) {
                favour_reader();
            }
        })
        .enable_all()
        .build()
        .map(|runtime| ReadsRuntime(Some(runtime)))
}

/// The readers' runtime, which shuts down without waiting for its threads
/// when dropped: the collector (or a start that failed) may be dropped
/// where blocking is not allowed, and a runtime dropped there panics.
struct ReadsRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for ReadsRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl Drop for ReadsRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Favours the calling worker ([`READ_PRIORITY`], [`READ_SLICE`]), or says
/// once why it could not.
fn favour_reader() {
    static TOLD: std::sync::Once = std::sync::Once::new();
    let told = match pgfleet_common::sched::favour_thread(READ_PRIORITY, READ_SLICE) {
        Ok(f) if f.raised => return debug!(nice = f.nice, "A readers' worker favoured."),
        Ok(_) => "the system refused a lower nice value".to_owned(),
        Err(e) => e.to_string(),
    };
    TOLD.call_once(|| {
        info!(
            error = %told,
            "The readers' threads run at the collector's own priority: on a busy collector, reads may wait behind agents' batches. Allow them {READ_PRIORITY} steps of nice more (LimitNICE=-{READ_PRIORITY} in the systemd unit, or CAP_SYS_NICE) for the quickest answers."
        )
    });
}

/// `service` as the Ingest service is served: messages up to
/// [`MAX_MESSAGE_BYTES`], and gRPC's compression for older agents.
pub fn ingest_server<T: Ingest>(service: T) -> IngestServer<T> {
    IngestServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .accept_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip)
}

/// Binds, locks the data directory and starts serving.
pub async fn start(config: CollectorConfig) -> Result<Collector, StartError> {
    let lock = lock_data_dir(&config.data_dir)?;
    let listener = crate::listen::listen(config.listen).map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let reads = reads_runtime().map_err(StartError::Reads)?;
    // The readers' listeners belong to the readers' runtime from the start.
    let bind_reads = |addr: Option<SocketAddr>| -> Result<_, StartError> {
        let Some(addr) = addr else { return Ok(None) };
        let _reads = reads.enter();
        let bound = crate::listen::listen(addr).and_then(|l| {
            let bound = l.local_addr()?;
            Ok((l, bound))
        });
        bound
            .map(Some)
            .map_err(|source| StartError::Listen { addr, source })
    };
    let http = bind_reads(config.http_listen)?;
    let query_listener = bind_reads(config.query_listen)?;
    let (store, loaded) = Store::open(
        &config.store,
        &config.data_dir,
        config.retention,
        &config.collector_id,
        config.frame_dictionaries,
    )
    .await
    .map_err(|e| StartError::Store(e.to_string()))?;
    let (aggregator, handle) = Aggregator::with_policy(config.duplicate_server_id);
    // The aggregator has a thread of its own: with thousands of agents its
    // rounds are long, and on the runtime's workers they would hold queries
    // back behind them.
    let aggregator = aggregator
        .with_store(store.clone(), loaded)
        .keeping_load(config.load);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(StartError::Aggregator)?;
    std::thread::Builder::new()
        .name("pgfleet-aggregator".into())
        .spawn(move || runtime.block_on(aggregator.run()))
        .map_err(StartError::Aggregator)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IngestServer<IngestService>>().await;
    health.set_serving::<QueryRoutes>().await;
    let services = [
        "pgfleet.v1.Ingest",
        "pgfleet.v1.Query",
        pgfleet_proto::reflection::HEALTH,
    ];
    let (reflection, reflection_v1alpha) = pgfleet_proto::reflection::servers(&services)
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    let (streams, streams_rx) = watch::channel(());
    crate::follow::spawn(store.clone(), handle.clone(), streams_rx.clone());
    let http_addr = http.as_ref().map(|(_, a)| *a);
    let tokens = Tokens {
        ingest: Arc::new(config.tokens.clone()),
        read: Arc::new(config.read_tokens.clone()),
        metrics: Arc::new(config.metrics_tokens.clone()),
    };
    let query_service = QueryService::new(handle.clone())
        .with_store(store.clone())
        .keeping_load(config.load)
        .with_shutdown(streams_rx.clone());
    let http_server = http.map(|(listener, _)| {
        let mut stop = streams_rx.clone();
        let _reads = reads.enter();
        crate::http::serve(
            listener,
            config.tls.as_ref().map(|t| t.http.clone()),
            handle.clone(),
            query_service.clone(),
            tokens.clone(),
            async move {
                let _ = stop.changed().await;
            },
        )
    });
    let ingest = ingest_server(
        IngestService::new(handle.clone(), tokens.clone(), streams_rx.clone())
            .with_store(store.clone()),
    );
    let query = QueryRoutes::new(query_service, MAX_MESSAGE_BYTES);
    // Reading the fleet takes a read token, when there are any.
    let query = InterceptedService::new(query, tokens.interceptor(Access::Read));
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let mut builder = grpc_server();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.config.clone())
            .map_err(|e| StartError::Tls(pgfleet_common::error::chain(&e)))?;
    }
    let query_addr = query_listener.as_ref().map(|(_, a)| *a);
    let query_server = match query_listener {
        None => None,
        Some((listener, _)) => {
            let services = ["pgfleet.v1.Query", pgfleet_proto::reflection::HEALTH];
            let (reflection, reflection_v1alpha) = pgfleet_proto::reflection::servers(&services)
                .map_err(|e| StartError::Reflection(e.to_string()))?;
            // Its health answers for what it serves: Query, and the whole.
            let (health, health_service) = tonic_health::server::health_reporter();
            health.set_serving::<QueryRoutes>().await;
            let router = builder
                .clone()
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .add_service(query.clone());
            let mut stop = streams_rx.clone();
            Some(reads.spawn(async move {
                let incoming = crate::listen::incoming(listener);
                if let Err(e) = router
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.changed().await;
                    })
                    .await
                {
                    error!(error = %pgfleet_common::error::chain(&e), "The readers' gRPC server stopped.");
                }
            }))
        }
    };
    let router = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .add_service(query);
    let server = tokio::spawn(async move {
        let incoming = crate::listen::incoming(listener);
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            })
            .await
        {
            error!(error = %pgfleet_common::error::chain(&e), "gRPC server stopped.");
        }
    });
    info!(
        listen = %addr,
        http_listen = ?http_addr,
        query_listen = ?query_addr,
        data_dir = %config.data_dir.display(),
        tokens = config.tokens.len(),
        read_tokens = config.read_tokens.len(),
        metrics_tokens = config.metrics_tokens.len(),
        tls = match &config.tls {
            None => "off",
            Some(t) if t.mutual => "mutual",
            Some(_) => "on",
        },
        duplicate_server_id = ?config.duplicate_server_id,
        store = match &config.store {
            crate::store::StoreConfig::Sqlite => "sqlite",
            crate::store::StoreConfig::Postgres(_) => "postgres",
        },
        collector_id = %config.collector_id,
        "Collector started{}.",
        if config.tokens.is_empty() {
            "; any agent may stream (no --tokens-file)"
        } else {
            "; agents must present a bearer token"
        }
    );
    if !config.tokens.is_empty() && config.read_tokens.is_empty() {
        warn!(
            listen = %addr,
            "Agents need a token, but reading does not: anyone who reaches this port reads every session of the fleet (users, client addresses, query texts). Give --read-tokens-file to require read tokens."
        );
    }
    Ok(Collector {
        store,
        addr,
        http_addr,
        http_server,
        query_addr,
        query_server,
        _reads: reads,
        aggregator: handle,
        shutdown: Some(shutdown),
        streams,
        server,
        _lock: lock,
    })
}

impl Collector {
    /// Stops accepting, ends every stream (its agent reconnects, here or
    /// elsewhere), and waits for the server to finish.
    pub async fn stop(mut self) {
        self.streams.send_replace(());
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Scrapers and readers keep their connections open; they get a
        // moment, then go (both in the same 2 s).
        let end = |server: Option<JoinHandle<()>>| async move {
            if let Some(mut server) = server
                && tokio::time::timeout(std::time::Duration::from_secs(2), &mut server)
                    .await
                    .is_err()
            {
                server.abort();
            }
        };
        tokio::join!(end(self.http_server.take()), end(self.query_server.take()));
        // A stream that still stays open would hold a graceful shutdown forever.
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        // What the streams applied, and the minutes being rolled up, are
        // committed before the collector is gone: on a large fleet, one
        // write a server or more, queued as the store takes them.
        let (done, stored) = oneshot::channel::<()>();
        if self
            .aggregator
            .send(Command::StoreMinutes { reply: done })
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(15), stored).await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.store.flush()).await;
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
        for server in [&self.http_server, &self.query_server]
            .into_iter()
            .flatten()
        {
            server.abort();
        }
    }
}

/// Creates the data directory and holds an exclusive lock on it, so that two
/// collectors never share one.
fn lock_data_dir(dir: &std::path::Path) -> Result<File, StartError> {
    let fail = |message: String| StartError::DataDir {
        dir: dir.to_owned(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    let file = File::create(dir.join("collector.lock")).map_err(|e| fail(e.to_string()))?;
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => {
            fail("another collector is using it; give each collector its own --data-dir".to_owned())
        }
        std::fs::TryLockError::Error(e) => fail(e.to_string()),
    })?;
    Ok(file)
}
