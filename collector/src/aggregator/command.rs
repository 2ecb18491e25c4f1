//! What the aggregator is asked ([`Command`]), and the handle that asks it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgfleet_proto::model::Snapshot;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use super::FleetView;
use crate::load::count::Closed;
use crate::store::{Elsewhere, Rebuilt, Resume};

/// A target as an agent's Hello names it.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// Its server_id.
    pub server_id: String,
    /// The agent's labels merged with the target's own.
    pub labels: BTreeMap<String, String>,
}

/// What ingest asks of the aggregator.
#[derive(Debug)]
pub enum Command {
    /// A stream said Hello; answers with the last sequence applied for the agent.
    Register {
        /// The agent's identity.
        agent_id: String,
        /// This stream's id, unique in the collector's life.
        conn_id: u64,
        /// The agent's targets.
        targets: Vec<TargetInfo>,
        /// The agent's sampling interval.
        interval: Duration,
        /// Where a shared store says the agent stopped (it may have streamed
        /// to another collector since this one last saw it).
        resume: Option<Resume>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<u64, Status>>,
    },
    /// A batch arrived on a registered stream.
    Apply {
        /// The agent's identity.
        agent_id: String,
        /// The stream it came on.
        conn_id: u64,
        /// The batch's sequence number.
        seq: u64,
        /// Its decoded snapshots.
        snapshots: Vec<Snapshot>,
        /// Their frames, as ingest wrote them for the history, one for each
        /// (see [`crate::store::Encoded`]); or none, and the aggregator
        /// writes them when it keeps history.
        frames: Vec<Vec<u8>>,
        /// Once applied (or recognised as a replay): the servers whose deltas
        /// had no base here, and whose next snapshot must be a keyframe.
        reply: oneshot::Sender<Result<Vec<String>, Status>>,
    },
    /// A stream ended.
    Disconnect {
        /// The agent's identity.
        agent_id: String,
        /// The stream that ended.
        conn_id: u64,
    },
    /// Store the minutes being rolled up (the collector is stopping); answers
    /// once they are queued for the store.
    StoreMinutes {
        /// Where the answer goes.
        reply: oneshot::Sender<()>,
    },
    /// The load these servers' counters hold open (the last minute, its
    /// hour, the statements interval): what the store has not yet.
    OpenLoad {
        /// The servers.
        server_ids: Vec<String>,
        /// Only the open hours' totals (a fleet-wide reader of totals).
        hours_only: bool,
        /// Where the answer goes: each server's open load.
        reply: oneshot::Sender<Vec<(String, Vec<Closed>)>>,
    },
    /// What other collectors stored of the servers they stream (a shared
    /// store), for this collector's view.
    Follow {
        /// The servers, each with what is new of it.
        servers: Vec<Followed>,
    },
}

/// A server another collector streams, as a shared store holds it.
#[derive(Debug)]
pub struct Followed {
    /// The server, its agent and the collector that streams it.
    pub server: Elsewhere,
    /// Its state after the frames stored since this collector's view of it,
    /// if any; with true when rebuilt from a keyframe rather than carried on
    /// from the view (it replaces the view's whatever its time).
    pub state: Option<(Rebuilt, bool)>,
}

/// The handle ingest and query handlers hold.
#[derive(Clone)]
pub struct AggregatorHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) view: watch::Receiver<Arc<FleetView>>,
}

impl AggregatorHandle {
    /// Sends a command, waiting for room in the queue.
    pub async fn send(&self, command: Command) -> Result<(), Status> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Status::unavailable("the collector is shutting down"))
    }

    /// What the counters of `server_ids` hold open.
    pub async fn open_load(
        &self,
        server_ids: Vec<String>,
        hours_only: bool,
    ) -> Result<Vec<(String, Vec<Closed>)>, Status> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::OpenLoad {
            server_ids,
            hours_only,
            reply,
        })
        .await?;
        answer
            .await
            .map_err(|_| Status::unavailable("the collector is shutting down"))
    }

    /// The latest published view.
    pub fn view(&self) -> Arc<FleetView> {
        self.view.borrow().clone()
    }

    /// Whether the aggregator has stopped.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// A receiver that sees every newly published view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<FleetView>> {
        self.view.clone()
    }
}
