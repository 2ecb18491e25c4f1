//! The Ingest service: one stream per agent. It checks the Hello, decodes batches
//! off the aggregator's task, and acknowledges batches once they are applied
//! and committed to the history store (several at a time).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pgfleet_proto::DecodeError;
use pgfleet_proto::compact::Resolver;
use pgfleet_proto::model::Snapshot;
use pgfleet_proto::time::now_micros;
use pgfleet_proto::v1::{self, agent_message, collector_message, ingest_server::Ingest};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

mod bounds;
mod unzip;

pub use bounds::{
    MAX_CLOCK_SKEW, MAX_LABELS, MAX_SESSIONS_PER_SNAPSHOT, MAX_SNAPSHOTS_PER_BATCH,
    MAX_STRING_BYTES, MAX_TARGETS, Refusals,
};
use bounds::{check_batch, check_hello, check_times, inbound_error};
pub use unzip::batch as unzip_batch;

use crate::aggregator::{AggregatorHandle, Command};
use crate::auth::{Access, Tokens};
use crate::store::{self, Durable, Store};

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest an applied batch waits for its ack.
pub const ACK_EVERY: Duration = Duration::from_secs(5);

/// The most batches one ack waits for.
pub const ACK_AFTER: u32 = 16;

/// The largest message the collector accepts on any stream.
pub const MAX_MESSAGE_BYTES: usize = pgfleet_proto::MAX_MESSAGE_BYTES;

/// The Ingest service.
pub struct IngestService {
    aggregator: AggregatorHandle,
    /// The collector's tokens: a stream needs an ingest token, when there
    /// are any.
    tokens: Tokens,
    next_conn: Arc<AtomicU64>,
    shutdown: watch::Receiver<()>,
    /// What the store has committed; acks wait for it.
    durable: Durable,
    /// The store, when it is shared: an agent that connects is resumed
    /// where it says the agent stopped.
    shared: Option<Store>,
    /// Who was refused past a bound, to log each once.
    refusals: Refusals,
    /// Whether Welcome offers zstd batches.
    zstd_batches: bool,
    /// Whether each snapshot's frame is written for the history (see
    /// [`crate::store::Encoded`]): with a store, which the aggregator has
    /// too (`server::start` gives both the same).
    write_frames: bool,
}

impl IngestService {
    /// A service that feeds `aggregator` and ends every stream, telling its agent
    /// to reconnect, when `shutdown` fires or its sender is dropped.
    pub fn new(
        aggregator: AggregatorHandle,
        tokens: Tokens,
        shutdown: watch::Receiver<()>,
    ) -> Self {
        IngestService {
            aggregator,
            tokens,
            next_conn: Arc::new(AtomicU64::new(1)),
            shutdown,
            durable: Durable::always(),
            shared: None,
            refusals: Refusals::default(),
            zstd_batches: true,
            write_frames: false,
        }
    }

    /// Offers agents zstd batches, or not, as collectors before them did not
    /// (to test an agent's fallback to gRPC's compression): a zstd batch is
    /// then refused as an unknown message, as an older collector refuses it.
    pub fn offering_zstd_batches(self, offer: bool) -> Self {
        IngestService {
            zstd_batches: offer,
            ..self
        }
    }

    /// Acknowledges a batch only once `store` has committed it; with a
    /// shared store, resumes each agent where the store says it stopped.
    /// Writes each snapshot's frame for it, for the aggregator to hand on.
    pub fn with_store(self, store: Store) -> Self {
        IngestService {
            durable: store.durable(),
            shared: store.shared().then_some(store),
            write_frames: true,
            ..self
        }
    }
}

type Outbound = mpsc::Sender<Result<v1::CollectorMessage, Status>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReceiverStream<Result<v1::CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let authorization = request.metadata().get("authorization");
        if let Err(refused) = self
            .tokens
            .check(Access::Ingest, authorization.map(|v| v.as_bytes()))
        {
            warn!(peer = %peer, reason = %refused, "Refused a stream.");
            return Err(refused.into());
        }
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(v1::AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "the first message of a stream must be Hello",
                ));
            }
            Ok(Ok(None)) => return Err(Status::cancelled("the stream ended before Hello")),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Hello within {}s",
                    HELLO_TIMEOUT.as_secs()
                )));
            }
        };
        let (targets, interval) = check_hello(&hello)?;
        let agent_id = hello.agent_id;
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let resume = match &self.shared {
            Some(store) => {
                let ids: Vec<String> = targets.iter().map(|t| t.server_id.clone()).collect();
                store.resume(&agent_id, &ids).await.map_err(|e| {
                    warn!(agent.id = %agent_id, error = %e, "Cannot read where the shared store says the agent stopped.");
                    Status::unavailable(format!("{e}; the agent retries"))
                })?
            }
            None => None,
        };
        let (reply, answer) = oneshot::channel();
        self.aggregator
            .send(Command::Register {
                agent_id: agent_id.clone(),
                conn_id,
                targets,
                interval,
                resume,
                reply,
            })
            .await?;
        let resume_after_seq = answer
            .await
            .map_err(|_| Status::unavailable("the collector is shutting down"))??;
        info!(
            agent.id = %agent_id,
            agent.version = %hello.agent_version,
            peer = %peer,
            servers = hello.targets.len(),
            resume_after_seq,
            "Agent connected."
        );
        let (tx, rx) = mpsc::channel(64);
        // The channel is new and empty, so this cannot wait.
        let _ = tx.try_send(Ok(welcome(resume_after_seq, self.zstd_batches)));
        let aggregator = self.aggregator.clone();
        let refusals = self.refusals.clone();
        let mut shutdown = self.shutdown.clone();
        let mut durable = self.durable.clone();
        let (zstd_batches, write_frames) = (self.zstd_batches, self.write_frames);
        tokio::spawn(async move {
            let who = Who {
                agent_id: &agent_id,
                conn_id,
                refusals: &refusals,
                zstd_batches,
                write_frames,
            };
            let reason = receive(
                &aggregator,
                who,
                &mut inbound,
                &tx,
                &mut shutdown,
                &mut durable,
            )
            .await;
            info!(agent.id = %agent_id, peer = %peer, reason = %reason, "Agent stream ended.");
            let _ = aggregator
                .send(Command::Disconnect { agent_id, conn_id })
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Applies batches until the stream ends; returns why it ended.
///
/// Batches are handed to the aggregator as they arrive, up to [`IN_FLIGHT`]
/// ahead of its answers, so that an agent replaying a long outage is not held
/// to one batch per published view. Answers come back in order.
///
/// Acks are coalesced: one ack covers every batch applied before it, and goes
/// out [`ACK_EVERY`] after the first batch it covers, after [`ACK_AFTER`]
/// batches, or when either side closes the stream (the agent when it stops,
/// the collector when `shutdown` fires). An agent that samples every second
/// then wakes for an ack every few seconds rather than every second, and the
/// collector sends a fraction of the acks. No ack goes before the store has
/// committed what it covers (`durable`).
async fn receive(
    aggregator: &AggregatorHandle,
    who: Who<'_>,
    inbound: &mut Streaming<v1::AgentMessage>,
    tx: &Outbound,
    shutdown: &mut watch::Receiver<()>,
    durable: &mut Durable,
) -> String {
    let Who {
        agent_id,
        conn_id,
        refusals,
        zstd_batches,
        write_frames,
    } = who;
    let mut acks = Acks::default();
    // Batches handed over and not yet answered: their sequence, the servers
    // whose dictionary references could not be read, and the answer to come.
    let mut pending: VecDeque<(u64, Vec<String>, Answer)> = VecDeque::new();
    // Set once the agent closed its side: what is pending is settled, then
    // the last ack goes.
    let mut closing = false;
    // The stream's dictionary: the agent sends it whole on a new stream.
    let mut dictionary = Resolver::default();
    loop {
        if closing && pending.is_empty() {
            // The agent is stopping: it waits for this last ack.
            acks.flush(tx, durable).await;
            return "the agent closed the stream".to_owned();
        }
        let due = acks.due();
        let ticket = acks.ticket();
        let received = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                // What was applied is acknowledged, so that it is not sent
                // again to the next collector.
                acks.flush(tx, durable).await;
                let status = Status::unavailable("the collector is shutting down; reconnect");
                let _ = tx.send(Err(status)).await;
                return "the collector is shutting down".to_owned();
            }
            answer = async { (&mut pending.front_mut()?.2).await.ok() }, if !pending.is_empty() => {
                let Some((seq, unresolved, _)) = pending.pop_front() else { continue };
                let applied = answer
                    .unwrap_or_else(|| Err(Status::unavailable("the collector is shutting down")));
                if let Err(reason) = settle(tx, &mut acks, seq, unresolved, applied, durable.ticket()).await {
                    return reason;
                }
                continue;
            }
            m = inbound.message(), if !closing && pending.len() < IN_FLIGHT => m,
            committed = async {
                tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await;
                durable.reached(ticket).await
            }, if due.is_some() => {
                if !committed {
                    return "the history store's writer stopped".to_owned();
                }
                if !acks.send(tx).await {
                    return "the agent went away".to_owned();
                }
                continue;
            }
        };
        let mut batch = match received {
            Ok(Some(v1::AgentMessage {
                msg: Some(agent_message::Msg::Batch(batch)),
            })) => batch,
            Ok(Some(v1::AgentMessage {
                msg: Some(agent_message::Msg::ZstdBatch(frame)),
            })) if zstd_batches => match unzip::batch(&frame, MAX_MESSAGE_BYTES) {
                Ok(batch) => batch,
                Err(status) => {
                    return refuse(refusals, agent_id, "the zstd batches", status, tx).await;
                }
            },
            Ok(Some(v1::AgentMessage {
                msg: Some(agent_message::Msg::Hello(_)),
            })) => {
                let status = Status::invalid_argument("Hello may be sent only once per stream");
                let _ = tx.send(Err(status)).await;
                return "a second Hello".to_owned();
            }
            Ok(Some(v1::AgentMessage {
                msg: None | Some(agent_message::Msg::ZstdBatch(_)),
            })) => {
                let status = Status::unimplemented(
                    "unknown message type; this collector is older than the agent",
                );
                let _ = tx.send(Err(status)).await;
                return "an unknown message type".to_owned();
            }
            Ok(None) => {
                closing = true;
                continue;
            }
            Err(status) => {
                // The agent hears why its stream ends (it may be gone, and
                // then nobody does): a message over the limit would
                // otherwise be resent for ever.
                let status = inbound_error(status);
                let reason = format!("{} ({:?})", status.message(), status.code());
                if status.code() == tonic::Code::ResourceExhausted {
                    refusals.warn(agent_id, "the message size", status.message());
                }
                let _ = tx.send(Err(status)).await;
                return reason;
            }
        };
        let seq = batch.seq;
        if let Err(status) = check_batch(&batch) {
            return refuse(refusals, agent_id, "the batch bounds", status, tx).await;
        }
        if let Err(why) = dictionary.add(std::mem::take(&mut batch.dictionary_additions)) {
            let _ = tx.send(Err(Status::invalid_argument(why.clone()))).await;
            return why;
        }
        let (snapshots, unresolved) = decode(agent_id, batch, &dictionary);
        if let Err(status) = check_times(&snapshots, now_micros()) {
            return refuse(refusals, agent_id, "the clock skew", status, tx).await;
        }
        // Written here, off the store's writer (see `Encoded`).
        let frames = if write_frames {
            snapshots.iter().map(store::frame_bytes).collect()
        } else {
            Vec::new()
        };
        let (reply, answer) = oneshot::channel();
        let command = Command::Apply {
            agent_id: agent_id.to_owned(),
            conn_id,
            seq,
            snapshots,
            frames,
            reply,
        };
        if let Err(status) = aggregator.send(command).await {
            let reason = status.message().to_owned();
            let _ = tx.send(Err(status)).await;
            return reason;
        }
        pending.push_back((seq, unresolved, answer));
    }
}

/// Ends a stream past `bound`: logged once per agent and bound, the agent
/// told why; returns the reason, for the stream's end.
async fn refuse(
    refusals: &Refusals,
    agent_id: &str,
    bound: &'static str,
    status: Status,
    tx: &Outbound,
) -> String {
    refusals.warn(agent_id, bound, status.message());
    let reason = status.message().to_owned();
    let _ = tx.send(Err(status)).await;
    reason
}

/// A stream's agent, as [`receive`] names it.
struct Who<'a> {
    agent_id: &'a str,
    conn_id: u64,
    refusals: &'a Refusals,
    /// Whether its Welcome offered zstd batches.
    zstd_batches: bool,
    /// Whether to write each snapshot's frame for the history.
    write_frames: bool,
}

/// How many batches of one stream may wait for the aggregator's answer.
const IN_FLIGHT: usize = 64;

/// The aggregator's answer to an Apply.
type Answer = oneshot::Receiver<Result<Vec<String>, Status>>;

/// The last applied sequence not yet acknowledged, how many batches it
/// covers, when its ack is due, and the store's ticket that must be
/// committed first.
#[derive(Default)]
struct Acks(Option<Owed>);

#[derive(Clone, Copy)]
struct Owed {
    seq: u64,
    batches: u32,
    due: tokio::time::Instant,
    ticket: u64,
}

/// How long a closing stream waits for the store before it leaves its last
/// batches unacknowledged (the agent sends them again).
const CLOSING_WAIT: Duration = Duration::from_secs(5);

impl Acks {
    fn due(&self) -> Option<tokio::time::Instant> {
        self.0.map(|o| o.due)
    }

    fn ticket(&self) -> u64 {
        self.0.map_or(0, |o| o.ticket)
    }

    /// Notes `seq` applied, durable once `ticket` is committed; its ack is
    /// due at once after [`ACK_AFTER`] batches.
    fn applied(&mut self, seq: u64, ticket: u64) {
        let now = tokio::time::Instant::now();
        self.0 = Some(match self.0 {
            Some(o) => Owed {
                seq,
                batches: o.batches + 1,
                due: if o.batches + 1 >= ACK_AFTER {
                    now
                } else {
                    o.due
                },
                ticket,
            },
            None => Owed {
                seq,
                batches: 1,
                due: now + ACK_EVERY,
                ticket,
            },
        });
    }

    /// Sends the ack owed (its ticket committed); false if the agent is gone.
    async fn send(&mut self, tx: &Outbound) -> bool {
        match self.0.take() {
            Some(o) => send_ack(tx, o.seq).await,
            None => true,
        }
    }

    /// Sends the ack owed once the store has committed it, waiting at most
    /// [`CLOSING_WAIT`]; false if the agent is gone.
    async fn flush(&mut self, tx: &Outbound, durable: &mut Durable) -> bool {
        let Some(o) = self.0 else {
            return true;
        };
        match tokio::time::timeout(CLOSING_WAIT, durable.reached(o.ticket)).await {
            Ok(true) => self.send(tx).await,
            _ => {
                warn!(
                    seq = o.seq,
                    "The history store did not commit in time; the last batches stay unacknowledged and the agent sends them again."
                );
                true
            }
        }
    }
}

/// Acts on the aggregator's answer for batch `seq`: asks for the keyframes
/// it needs, and acknowledges it in its turn; Err with why the stream ends.
async fn settle(
    tx: &Outbound,
    acks: &mut Acks,
    seq: u64,
    unresolved: Vec<String>,
    applied: Result<Vec<String>, Status>,
    ticket: u64,
) -> Result<(), String> {
    let mut keyframes_needed = match applied {
        Ok(needed) => needed,
        Err(status) => {
            let reason = status.message().to_owned();
            let _ = tx.send(Err(status)).await;
            return Err(reason);
        }
    };
    keyframes_needed.extend(unresolved);
    if !keyframes_needed.is_empty() {
        let request = v1::CollectorMessage {
            msg: Some(collector_message::Msg::KeyframeRequest(
                v1::KeyframeRequest {
                    server_ids: keyframes_needed,
                },
            )),
        };
        if tx.send(Ok(request)).await.is_err() {
            return Err("the agent went away".to_owned());
        }
    }
    acks.applied(seq, ticket);
    Ok(())
}

/// Acknowledges every batch up to `seq`; false if the agent is gone.
async fn send_ack(tx: &Outbound, seq: u64) -> bool {
    tx.send(Ok(ack(seq))).await.is_ok()
}

/// The answer to a Hello: resume after `resume_after_seq`, messages up to
/// [`MAX_MESSAGE_BYTES`], and zstd batches if `zstd_batches`.
pub fn welcome(resume_after_seq: u64, zstd_batches: bool) -> v1::CollectorMessage {
    v1::CollectorMessage {
        msg: Some(collector_message::Msg::Welcome(v1::Welcome {
            resume_after_seq,
            config: Some(v1::StreamConfig {
                max_message_bytes: MAX_MESSAGE_BYTES as u32,
                zstd_batches,
            }),
        })),
    }
}

/// The ack of every batch up to `seq`.
pub fn ack(seq: u64) -> v1::CollectorMessage {
    v1::CollectorMessage {
        msg: Some(collector_message::Msg::Ack(v1::Ack { seq })),
    }
}

/// Decodes a batch's snapshots, their dictionary references resolved.
/// Malformed snapshots are logged and skipped, so one bad snapshot cannot wedge
/// the stream; those that refer to entries the stream never sent are named,
/// so that the agent is asked for keyframes of them.
pub fn decode(
    agent_id: &str,
    batch: v1::Batch,
    dictionary: &Resolver,
) -> (Vec<Snapshot>, Vec<String>) {
    let mut snapshots = Vec::with_capacity(batch.snapshots.len());
    let mut unresolved = Vec::new();
    for wire in batch.snapshots {
        match dictionary.snapshot(wire) {
            Ok(s) => snapshots.push(s),
            Err(DecodeError::UnknownReference { server_id, id }) => {
                warn!(agent.id = %agent_id, seq = batch.seq, server.id = %server_id, id, "Skipped a snapshot that refers to a dictionary entry the stream never sent.");
                unresolved.push(server_id);
            }
            Err(e) => {
                warn!(agent.id = %agent_id, seq = batch.seq, error = %e, "Skipped a malformed snapshot.")
            }
        }
    }
    (snapshots, unresolved)
}
