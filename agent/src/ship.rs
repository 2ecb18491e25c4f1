//! The stream client: connect, say Hello, send batches, drop them on Ack, and
//! reconnect with capped backoff when the collector goes away.

use std::time::Duration;

use pgfleet_proto::model::Snapshot;
use pgfleet_proto::v1::{self, collector_message};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Endpoint;
use tracing::{debug, error, info, warn};

use crate::config::Compression;
use crate::encode::Encoder;
use crate::outgoing::Outgoing;
use crate::pack::{MAX_BATCH_SNAPSHOT_BYTES, pack};
use crate::spool::Spool;
use pgfleet_common::backoff::Backoff;
use pgfleet_common::error::chain;
use pgfleet_common::settings::Token;
use pgfleet_common::tls::ClientTls;
use tonic::codec::CompressionEncoding;

pub use pgfleet_proto::MAX_MESSAGE_BYTES;

/// The Ingest service's Stream method.
const INGEST_STREAM: &str = "/pgfleet.v1.Ingest/Stream";

/// How many snapshots one batch holds at most.
const MAX_SNAPSHOTS_PER_BATCH: usize = 256;

/// How long to wait for the collector's Welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Over how long the first attempt after a lost stream is spread at random:
/// a collector that restarts loses every agent's stream at once, and its
/// whole fleet then comes back over these seconds rather than in one burst.
pub const RECONNECT_SPREAD: Duration = Duration::from_secs(5);

/// How long a graceful stop waits for the last acks.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// One stream to the collector, or the time of the next attempt. There is one
/// value per agent, so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Connection {
    Connected {
        tx: mpsc::Sender<Outgoing>,
        inbound: tonic::Streaming<v1::CollectorMessage>,
    },
    Disconnected {
        retry_at: Instant,
    },
}

/// What happened on a live stream.
enum Event {
    Continue,
    Lost(String),
}

/// How the agent reaches its collector.
#[derive(Debug, Clone)]
pub struct Link {
    /// The collectors' URLs: the first, then those to fail over to.
    pub collectors: Vec<String>,
    /// The one in use.
    pub current: usize,
    /// The bearer token presented on every stream, if any.
    pub token: Option<Token>,
    /// TLS, for an https:// collector.
    pub tls: Option<ClientTls>,
    /// How batches are compressed.
    pub compression: Compression,
}

impl Link {
    /// The URL of the collector in use.
    pub fn collector(&self) -> &str {
        self.collectors.get(self.current).map_or("", String::as_str)
    }
}

/// Owns the spool and the stream; fed snapshots by the samplers.
pub struct Shipper {
    link: Link,
    hello: v1::Hello,
    spool: Spool,
    encoder: Encoder,
    snapshots: mpsc::Receiver<Snapshot>,
    backoff: Backoff,
    /// When and why the collector became unreachable, for logging once.
    outage: Option<(Instant, String)>,
    /// The samplers are gone; nothing more will be queued.
    inputs_closed: bool,
    /// The spool's drop count when the encoder was last told of drops.
    dropped_seen: u64,
    /// Whether the current stream was sent the whole dictionary.
    dictionary_sent: bool,
    /// The batch that holds (or will) the keyframes made after a drop.
    keyframes_at: Option<u64>,
    /// Collectors tried since the last success or backoff, the current one
    /// included.
    tried: usize,
    /// Snapshots left out because one alone would not fit in a message.
    oversized: u64,
    /// The zstd context batches are compressed with, when the current
    /// stream's collector takes zstd batches (one context for the agent's
    /// life, where gRPC's zstd sets one up for every message).
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// Whether the current stream sends zstd batches.
    zstd_batches: bool,
    /// The collectors (by their place in `link.collectors`) that do not
    /// take zstd batches (older than this agent): to them zstd goes through
    /// gRPC's message compression instead, until a stream to them is lost.
    grpc_zstd: Vec<usize>,
}

impl Shipper {
    /// A shipper that streams over `link`, introducing itself with `hello`.
    pub fn new(
        link: Link,
        hello: v1::Hello,
        mut spool: Spool,
        snapshots: mpsc::Receiver<Snapshot>,
    ) -> Self {
        let mut encoder = Encoder::default();
        encoder.restore_dictionary(spool.take_recovered_dictionary());
        Shipper {
            link,
            hello,
            spool,
            encoder,
            dictionary_sent: false,
            keyframes_at: None,
            tried: 1,
            oversized: 0,
            zstd: None,
            zstd_batches: false,
            grpc_zstd: Vec::new(),
            snapshots,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            outage: None,
            inputs_closed: false,
            dropped_seen: 0,
        }
    }

    /// Runs until `stop` changes, then tries for a moment to deliver what is left.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut conn = Connection::Disconnected {
            retry_at: Instant::now(),
        };
        loop {
            if self.inputs_closed && self.spool.is_empty() {
                return;
            }
            let next = match conn {
                Connection::Disconnected { retry_at } => {
                    tokio::select! {
                        _ = stop.changed() => break,
                        snapshot = self.snapshots.recv() => match snapshot {
                            Some(s) => { self.enqueue(s); Some(Connection::Disconnected { retry_at }) }
                            None => None,
                        },
                        _ = tokio::time::sleep_until(retry_at) => {
                            tokio::select! {
                                _ = stop.changed() => break,
                                c = self.connect() => Some(c),
                            }
                        }
                    }
                }
                Connection::Connected { tx, mut inbound } => {
                    let event = tokio::select! {
                        _ = stop.changed() => None,
                        event = self.step(&tx, &mut inbound) => Some(event),
                    };
                    match event {
                        None => {
                            self.drain(tx, &mut inbound).await;
                            return;
                        }
                        Some(Event::Continue) => Some(Connection::Connected { tx, inbound }),
                        Some(Event::Lost(reason)) => Some(self.lost(reason)),
                    }
                }
            };
            match next {
                Some(c) => conn = c,
                None => break,
            }
        }
        self.warn_unacknowledged();
    }

    /// Waits for one event on a live stream and handles it.
    async fn step(
        &mut self,
        tx: &mpsc::Sender<Outgoing>,
        inbound: &mut tonic::Streaming<v1::CollectorMessage>,
    ) -> Event {
        let has_unsent = self.spool.has_unsent();
        tokio::select! {
            biased;
            msg = inbound.message() => match msg {
                Ok(Some(msg)) => {
                    self.handle(msg);
                    Event::Continue
                }
                Ok(None) => Event::Lost("the collector closed the stream".to_owned()),
                Err(status) => Event::Lost(status_line(&status)),
            },
            permit = tx.reserve(), if has_unsent => match permit {
                Ok(permit) => {
                    if let Some(batch) = self.next_batch() {
                        permit.send(batch);
                        self.spool.mark_sent();
                    }
                    self.after_drops();
                    Event::Continue
                }
                Err(_) => Event::Lost("the stream closed".to_owned()),
            },
            snapshot = self.snapshots.recv(), if !self.inputs_closed => {
                match snapshot {
                    Some(s) => self.enqueue(s),
                    None => self.inputs_closed = true,
                }
                Event::Continue
            }
        }
    }

    fn handle(&mut self, msg: v1::CollectorMessage) {
        match msg.msg {
            Some(collector_message::Msg::Ack(ack)) => {
                self.spool.ack(ack.seq);
            }
            Some(collector_message::Msg::KeyframeRequest(req)) => {
                debug!(servers = ?req.server_ids, "Collector asked for keyframes.");
                self.encoder.keyframe(&req.server_ids);
                // It may lack dictionary entries too (it asks when a snapshot
                // refers to one it was never sent).
                self.dictionary_sent = false;
            }
            Some(collector_message::Msg::Welcome(_)) | None => {
                debug!("Ignored an unexpected message from the collector.");
            }
        }
    }

    /// Takes the snapshot and whatever else is waiting, as batches that each
    /// fit in a message.
    fn enqueue(&mut self, first: Snapshot) {
        let mut snapshots = vec![self.encode(first)];
        while snapshots.len() < MAX_SNAPSHOTS_PER_BATCH {
            match self.snapshots.try_recv() {
                Ok(s) => snapshots.push(self.encode(s)),
                Err(_) => break,
            }
        }
        let (batches, left_out) = pack(snapshots, MAX_BATCH_SNAPSHOT_BYTES);
        if !left_out.is_empty() {
            self.oversized += left_out.len() as u64;
            warn!(
                servers = ?left_out,
                left_out_total = self.oversized,
                limit_bytes = MAX_BATCH_SNAPSHOT_BYTES,
                "Left out snapshots too large for one message; their servers' next snapshots are keyframes."
            );
            // The collector never gets what their next deltas would build on.
            self.encoder.keyframe(&left_out);
        }
        // The entries the snapshots introduced go with the first batch, so
        // that each comes before its first use.
        let mut additions = Some(self.encoder.take_dictionary_additions());
        for snapshots in batches {
            let dropped = self
                .spool
                .push_batch(snapshots, additions.take().unwrap_or_default());
            if dropped > 0 {
                warn!(
                    dropped,
                    dropped_total = self.spool.dropped_batches(),
                    spool_bytes = self.spool.bytes(),
                    "Spool is full; dropped the oldest batches."
                );
            }
        }
        if let Some(additions) = additions.filter(|a| !a.is_empty()) {
            // Every snapshot was left out: the entries still go, alone.
            self.spool.push_batch(Vec::new(), additions);
        }
        self.after_drops();
    }

    /// The next batch to send on the current stream; the stream's first
    /// carries the whole dictionary, since the collector's dictionary is the
    /// stream's and the batches resent may refer to entries of any age.
    fn next_batch(&mut self) -> Option<Outgoing> {
        let mut batch = self.spool.next_unsent()?;
        if !self.dictionary_sent {
            if let Outgoing::Batch { dictionary, .. } = &mut batch {
                *dictionary = Outgoing::dictionary_fields(self.encoder.dictionary().entries());
            }
            self.dictionary_sent = true;
        }
        match &mut self.zstd {
            Some(context) if self.zstd_batches => Some(batch.compressed(context)),
            _ => Some(batch),
        }
    }

    /// Encodes a snapshot, with the spool's drop count in its agent counters.
    fn encode(&mut self, snapshot: Snapshot) -> v1::Snapshot {
        let mut wire = self.encoder.encode(snapshot);
        if let Some(agent) = &mut wire.agent {
            agent.spool_dropped_batches_total = self.spool.dropped_batches();
            agent.oversized_snapshots_dropped_total = self.oversized;
            agent.spool_disk_failed_batches_total = self.spool.disk_failed_batches();
        }
        wire
    }

    /// After batches were dropped, the deltas that followed them lack their
    /// base: the next snapshot of every target is a keyframe, so that the
    /// collector can pick the stream up from there. While that keyframe is
    /// still held, further drops (a long outage drops a batch at every push)
    /// need no other: making every snapshot a keyframe would only fill the
    /// spool faster. A dropped batch that was never sent may have carried
    /// dictionary entries, so the next batch sent carries the whole dictionary.
    fn after_drops(&mut self) {
        let dropped = self.spool.dropped_batches();
        if dropped > self.dropped_seen {
            self.dropped_seen = dropped;
            self.dictionary_sent = false;
            let keyframe_held = self
                .keyframes_at
                .zip(self.spool.oldest_seq())
                .is_some_and(|(at, oldest)| at >= oldest);
            if !keyframe_held {
                self.encoder.keyframe_all();
                self.keyframes_at = Some(self.spool.next_seq());
            }
        }
    }

    /// Opens a stream and completes the handshake, or schedules the next attempt.
    async fn connect(&mut self) -> Connection {
        match self.handshake().await {
            Ok((tx, inbound, welcome)) => {
                if !self.take_zstd(&welcome) {
                    // Again at once, with gRPC's zstd.
                    return Connection::Disconnected {
                        retry_at: Instant::now(),
                    };
                }
                self.spool.restart(welcome.resume_after_seq);
                // What follows what is resent starts from whole activity.
                self.encoder.keyframe_all();
                self.dictionary_sent = false;
                self.backoff.reset();
                self.tried = 1;
                match self.outage.take() {
                    Some((since, _)) => info!(
                        collector = %self.link.collector(),
                        outage = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                        resending = self.spool.len(),
                        "Connected to the collector again."
                    ),
                    None => {
                        info!(collector = %self.link.collector(), "Connected to the collector.")
                    }
                }
                Connection::Connected { tx, inbound }
            }
            Err((reason, _))
                if self.link.compression == Compression::Zstd && lacks_zstd(&reason) =>
            {
                warn!(collector = %self.link.collector(), reason = %reason, "The collector does not take zstd; compressing with gzip instead.");
                self.link.compression = Compression::Gzip;
                Connection::Disconnected {
                    retry_at: Instant::now(),
                }
            }
            // Another collector to try: at once, before any backoff.
            Err((reason, _)) if self.tried < self.link.collectors.len() => {
                let from = self.link.collector().to_owned();
                self.link.current = (self.link.current + 1) % self.link.collectors.len();
                self.tried += 1;
                warn!(collector = %from, reason = %reason, next = %self.link.collector(), "Cannot stream to the collector; failing over to the next.");
                let since = self.outage.take().map_or_else(Instant::now, |(t, _)| t);
                self.outage = Some((since, reason));
                Connection::Disconnected {
                    retry_at: Instant::now(),
                }
            }
            Err((reason, refused)) => {
                self.tried = 1;
                let delay = self.backoff.next_delay();
                let repeated = self.outage.as_ref().is_some_and(|(_, r)| *r == reason);
                if !repeated {
                    if refused {
                        error!(collector = %self.link.collector(), reason = %reason, retry_in = ?delay, "The collector refused this agent; retrying with backoff.");
                    } else {
                        warn!(collector = %self.link.collector(), reason = %reason, retry_in = ?delay, "Cannot reach the collector; retrying with backoff.");
                    }
                }
                let since = self.outage.take().map_or_else(Instant::now, |(t, _)| t);
                self.outage = Some((since, reason));
                Connection::Disconnected {
                    retry_at: Instant::now() + delay,
                }
            }
        }
    }

    /// Whether the stream the collector welcomed will do: with zstd, it
    /// sends zstd batches when the collector takes them; when it does not
    /// (an older collector), the agent notes to use gRPC's zstd and answers
    /// false, to connect again.
    fn take_zstd(&mut self, welcome: &v1::Welcome) -> bool {
        self.zstd_batches = false;
        if self.link.compression != Compression::Zstd || self.grpc_zstd() {
            return true;
        }
        if !welcome.config.as_ref().is_some_and(|c| c.zstd_batches) {
            info!(collector = %self.link.collector(), "The collector does not take zstd batches (it is older than this agent); compressing with gRPC's zstd instead.");
            self.grpc_zstd.push(self.link.current);
            return false;
        }
        if self.zstd.is_none() {
            match zstd::bulk::Compressor::new(crate::outgoing::ZSTD_LEVEL) {
                Ok(context) => self.zstd = Some(context),
                Err(e) => {
                    warn!(error = %e, "Cannot set up zstd; sending batches uncompressed.");
                    return true;
                }
            }
        }
        self.zstd_batches = true;
        true
    }

    /// Whether the collector in use is one that takes no zstd batches.
    fn grpc_zstd(&self) -> bool {
        self.grpc_zstd.contains(&self.link.current)
    }

    /// Connects, sends Hello and waits for Welcome. An error says why, and whether
    /// the collector refused (rather than could not be reached).
    async fn handshake(
        &self,
    ) -> Result<
        (
            mpsc::Sender<Outgoing>,
            tonic::Streaming<v1::CollectorMessage>,
            v1::Welcome,
        ),
        (String, bool),
    > {
        let unreachable = |reason: String| (reason, false);
        let mut endpoint = Endpoint::from_shared(self.link.collector().to_owned())
            .map_err(|e| unreachable(chain(&e)))?;
        if let Some(tls) = &self.link.tls {
            endpoint = tls
                .apply(endpoint)
                .map_err(|e| (format!("cannot set up TLS: {}", chain(&e)), true))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(chain(&e)))?;
        // The generated client's call, with a codec that sends what the agent
        // encoded already (see `outgoing`).
        let mut client = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .accept_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Gzip);
        // zstd goes in the batches themselves, unless the collector is too
        // old for that (see `take_zstd`).
        let grpc = match self.link.compression {
            Compression::Zstd if !self.grpc_zstd() => None,
            c => c.encoding(),
        };
        if let Some(encoding) = grpc {
            client = client.send_compressed(encoding);
        }
        let (tx, rx) = mpsc::channel(32);
        tx.send(Outgoing::Hello(self.hello.clone()))
            .await
            .map_err(|_| unreachable("the stream closed".to_owned()))?;
        let call = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            client
                .ready()
                .await
                .map_err(|e| unreachable(format!("the channel is not ready: {e}")))?;
            let codec = tonic_prost::ProstCodec::<Outgoing, v1::CollectorMessage>::default();
            let path = PathAndQuery::from_static(INGEST_STREAM);
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            if let Some(token) = &self.link.token {
                let value = token
                    .bearer()
                    .map_err(|_| ("the token cannot go in a header".to_owned(), true))?;
                request.metadata_mut().insert("authorization", value);
            }
            let mut inbound = client
                .streaming(request, path, codec)
                .await
                .map_err(|s| (status_line(&s), refused(&s)))?
                .into_inner();
            match inbound.message().await {
                Ok(Some(v1::CollectorMessage {
                    msg: Some(collector_message::Msg::Welcome(welcome)),
                })) => Ok((inbound, welcome)),
                Ok(_) => Err(unreachable(
                    "the collector did not answer Hello with Welcome".to_owned(),
                )),
                Err(s) => Err((status_line(&s), refused(&s))),
            }
        });
        match call.await {
            Ok(Ok((inbound, welcome))) => Ok((tx, inbound, welcome)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(unreachable(format!(
                "no Welcome within {}",
                humantime::format_duration(HANDSHAKE_TIMEOUT)
            ))),
        }
    }

    fn lost(&mut self, reason: String) -> Connection {
        let delay = self.backoff.spread(RECONNECT_SPREAD);
        // The collector may come back upgraded: zstd batches are offered
        // to it again.
        self.grpc_zstd.clear();
        warn!(collector = %self.link.collector(), reason = %reason, unacknowledged = self.spool.len(), retry_in = ?delay, "Lost the stream to the collector; reconnecting.");
        self.outage = Some((Instant::now(), reason));
        Connection::Disconnected {
            retry_at: Instant::now() + delay,
        }
    }

    /// Says what the collector has not acknowledged: lost with an in-memory
    /// spool, sent after the restart with one on disk.
    fn warn_unacknowledged(&self) {
        if self.spool.is_empty() {
            return;
        }
        if self.spool.is_durable() {
            info!(
                batches = self.spool.len(),
                "Stopped with batches the collector has not acknowledged; they stay in the spool directory and are sent after the restart."
            );
        } else {
            warn!(
                batches = self.spool.len(),
                "Stopped with batches the collector has not acknowledged; they are lost (--spool-dir keeps them across restarts)."
            );
        }
    }

    /// On a graceful stop: send what is queued, close this side of the stream
    /// (which asks the collector for its last ack), and wait briefly for the
    /// acks.
    async fn drain(
        &mut self,
        tx: mpsc::Sender<Outgoing>,
        inbound: &mut tonic::Streaming<v1::CollectorMessage>,
    ) {
        while let Ok(s) = self.snapshots.try_recv() {
            self.enqueue(s);
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while let Some(batch) = self.next_batch() {
            match tokio::time::timeout_at(deadline, tx.send(batch)).await {
                Ok(Ok(())) => self.spool.mark_sent(),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        drop(tx);
        while !self.spool.is_empty() {
            match tokio::time::timeout_at(deadline, inbound.message()).await {
                Ok(Ok(Some(msg))) => self.handle(msg),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            }
        }
        self.warn_unacknowledged();
    }
}

/// A gRPC status as one line: "the message (code)".
fn status_line(status: &tonic::Status) -> String {
    let message = status.message();
    let detail = std::error::Error::source(status)
        .map(chain)
        .filter(|d| !message.contains(d.as_str()));
    match detail {
        Some(d) => format!("{message}: {d} ({:?})", status.code()),
        None => format!("{message} ({:?})", status.code()),
    }
}

/// True when the collector refused the stream for its zstd compression (tonic
/// answers "Content is compressed with `zstd` which isn't supported").
fn lacks_zstd(reason: &str) -> bool {
    reason.contains("zstd") && reason.contains("Unimplemented")
}

/// True for statuses that mean the collector refused this agent, as opposed to
/// being away.
fn refused(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        InvalidArgument | AlreadyExists | PermissionDenied | Unauthenticated | FailedPrecondition
    )
}
