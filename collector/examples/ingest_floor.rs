//! The least a collector on this transport does for an agent's stream, to
//! measure the floor under the collector's CPU per batch and memory per
//! server: the collector's listener and gRPC settings, the Hello answered with
//! a Welcome that offers zstd batches, acks as often as the collector sends
//! them, and, by `--work`, as much of the collector's ingest as it names. No
//! live state and no load; with `--work store`, the history store's frames.
//!
//! `bench/transport_floor.py` runs it beside `pgfleet-collector`, each under
//! its own `pgfleet-loadgen`, and writes BENCHMARKS.md "The transport's floor".
//!
//! ```text
//! cargo run --release -p pgfleet-collector --example ingest_floor -- --listen 127.0.0.1:7700 --work resolve
//! cargo run --release -p pgfleet-collector --example ingest_floor -- --work store --data-dir /tmp/floor
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use pgfleet_collector::ingest::{
    ACK_AFTER, ACK_EVERY, MAX_MESSAGE_BYTES, ack, decode, unzip_batch, welcome,
};
use pgfleet_collector::listen;
use pgfleet_collector::server::{grpc_server, ingest_server};
use pgfleet_collector::store::{DictTraining, Durable, Encoded, Op, Retention, Store, frame_bytes};
use pgfleet_proto::compact::Resolver;
use pgfleet_proto::v1::{self, agent_message, ingest_server::Ingest};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The collector's allocator; run it with `MIMALLOC_PURGE_DELAY=-1` to keep
/// freed memory as `pgfleet-collector` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    about = "An Ingest server that does the least a collector does, to measure the transport's floor."
)]
struct Args {
    /// Where to listen for agents
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// How much of the collector's work on each batch to do
    #[arg(long, value_enum, default_value_t = Work::Resolve)]
    work: Work,
    /// Where `--work store` keeps its history (`pgfleet.sqlite`, as the
    /// collector's `--data-dir`)
    #[arg(long, default_value = "ingest-floor-data")]
    data_dir: PathBuf,
}

/// How much of the collector's ingest each message gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Work {
    /// Received: HTTP/2, gRPC's framing and the AgentMessage decoded (the
    /// zstd frame copied out as bytes).
    Receive,
    /// Besides, the zstd frame decompressed and decoded as a Batch.
    Decode,
    /// Besides, the stream's dictionary kept and the snapshots resolved
    /// into the collector's model, as its ingest hands them on.
    Resolve,
    /// Besides, each snapshot's frame encoded as ingest encodes it and kept
    /// by the collector's history store (SQLite, its frame dictionaries
    /// and retention as the collector's defaults): the batches handed, in
    /// turn, to one task that queues them for the store's writer as the
    /// aggregator does, and an ack sent once the batches it covers are
    /// committed. What a collector that keeps the history of sessions and
    /// nothing live cannot do without.
    Store,
}

struct Floor {
    work: Work,
    /// With [`Work::Store`]: where a stream hands its batches' frames, and
    /// which writes are committed.
    store: Option<(mpsc::Sender<Applied>, Durable)>,
}

/// A batch's frames for the store, and where to say the ticket its write took.
struct Applied {
    agent_id: String,
    seq: u64,
    frames: Vec<Encoded>,
    ticket: oneshot::Sender<u64>,
}

/// Queues each batch's frames for the store's writer, one batch at a time
/// so that tickets reach it in order, as the collector's aggregator does.
async fn apply(store: Store, mut batches: mpsc::Receiver<Applied>) {
    let durable = store.durable();
    while let Some(Applied {
        agent_id,
        seq,
        frames,
        ticket,
    }) = batches.recv().await
    {
        store
            .write(Op::Applied {
                agent_id,
                seq,
                frames,
            })
            .await;
        let _ = ticket.send(durable.ticket());
    }
}

type Outbound = mpsc::Sender<Result<v1::CollectorMessage, Status>>;

#[tonic::async_trait]
impl Ingest for Floor {
    type StreamStream = ReceiverStream<Result<v1::CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let agent_id = match inbound.message().await? {
            Some(v1::AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            }) => hello.agent_id,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.try_send(Ok(welcome(0, true)));
        let store = self.store.clone().map(|(s, d)| (agent_id, s, d));
        tokio::spawn(receive(self.work, inbound, tx, store));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Takes a stream's batches until it ends. An ack goes once [`ACK_AFTER`]
/// batches or [`ACK_EVERY`] have passed since the first it covers, checked
/// as each batch comes (the collector has a timer as well, and sends a
/// last ack as a stream ends); with `--work store`, once the batches it
/// covers are committed, as the collector's are.
async fn receive(
    work: Work,
    mut inbound: Streaming<v1::AgentMessage>,
    tx: Outbound,
    mut store: Option<(String, mpsc::Sender<Applied>, Durable)>,
) {
    let mut dictionary = Resolver::default();
    let mut owed: Option<(u32, Instant)> = None;
    // The ticket of the last batch's write: an ack waits for it.
    let mut written = 0;
    let mut received = 0u64;
    while let Ok(Some(message)) = inbound.message().await {
        received += 1;
        let seq = match (work, message.msg) {
            (Work::Receive, _) => received,
            (_, Some(agent_message::Msg::ZstdBatch(frame))) => {
                let Ok(mut batch) = unzip_batch(&frame, MAX_MESSAGE_BYTES) else {
                    return;
                };
                let seq = batch.seq;
                if matches!(work, Work::Resolve | Work::Store) {
                    if dictionary
                        .add(std::mem::take(&mut batch.dictionary_additions))
                        .is_err()
                    {
                        return;
                    }
                    let (snapshots, _) = decode("floor", batch, &dictionary);
                    if let Some((agent_id, applier, _)) = &store {
                        let frames = snapshots
                            .iter()
                            .map(|s| Encoded {
                                server_id: s.server_id.clone(),
                                at: s.sampled_at_us,
                                keyframe: s.delta.is_none(),
                                bytes: frame_bytes(s),
                            })
                            .collect();
                        let (ticket, answer) = oneshot::channel();
                        let batch = Applied {
                            agent_id: agent_id.clone(),
                            seq,
                            frames,
                            ticket,
                        };
                        if applier.send(batch).await.is_err() {
                            return;
                        }
                        let Ok(ticket) = answer.await else {
                            return;
                        };
                        written = ticket;
                    }
                    drop(std::hint::black_box(snapshots));
                } else {
                    drop(std::hint::black_box(batch));
                }
                seq
            }
            _ => {
                let _ = tx
                    .send(Err(Status::invalid_argument(
                        "this floor takes zstd batches only",
                    )))
                    .await;
                return;
            }
        };
        let (batches, since) = match owed {
            Some((n, since)) => (n + 1, since),
            None => (1, Instant::now()),
        };
        if batches >= ACK_AFTER || since.elapsed() >= ACK_EVERY {
            if let Some((_, _, durable)) = &mut store
                && !durable.reached(written).await
            {
                return;
            }
            if tx.send(Ok(ack(seq))).await.is_err() {
                return;
            }
            owed = None;
        } else {
            owed = Some((batches, since));
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    listen::raise_open_files_limit();
    let listener = listen::listen(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let store = if args.work == Work::Store {
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| format!("cannot make {}: {e}", args.data_dir.display()))?;
        let (store, _) = Store::open_sqlite(
            &args.data_dir,
            Retention::default(),
            DictTraining::default(),
        )?;
        let durable = store.durable();
        // As deep as the collector's queue of commands to its aggregator.
        let (batches, queue) = mpsc::channel(1024);
        tokio::spawn(apply(store, queue));
        Some((batches, durable))
    } else {
        None
    };
    eprintln!(
        "ingest_floor: listening on {} ({:?})",
        args.listen, args.work
    );
    grpc_server()
        .add_service(ingest_server(Floor {
            work: args.work,
            store,
        }))
        .serve_with_incoming(listen::incoming(listener))
        .await?;
    Ok(())
}
