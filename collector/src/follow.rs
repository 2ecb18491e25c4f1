//! The follower of a shared store: every [`FOLLOW_EVERY`] it reads what the
//! other collectors stored of the servers they stream, and sends it to the
//! aggregator as a [`Command::Follow`], as ingest sends what agents stream.
//! So any collector sharing a PostgreSQL store answers for the whole fleet.
//! The store only reads; this module decides what to read.

use std::collections::HashMap;
use std::time::Duration;

use pgfleet_common::backoff::Backoff;
use pgfleet_proto::time::{Micros, now_micros};
use tokio::sync::watch;
use tracing::warn;

use crate::aggregator::{AggregatorHandle, Command, Followed};
use crate::store::{Rebuilt, Store, StoreError};

/// How often a collector reads what the others wrote.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The longest wait between reads while the store cannot be read.
const RETRY_AT_MOST: Duration = Duration::from_secs(30);

/// A server followed from this far behind is rebuilt from its last keyframe
/// rather than read frame by frame.
const FOLLOW_WINDOW_US: Micros = 60_000_000;

/// Follows the other collectors of a shared `store` into `aggregator`'s view
/// until `stop` fires (or its sender is dropped) or the aggregator stops;
/// nothing for a store only this collector writes.
pub(crate) fn spawn(store: Store, aggregator: AggregatorHandle, mut stop: watch::Receiver<()>) {
    if !store.shared() {
        return;
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = follow(store, aggregator) => {}
            _ = stop.changed() => {}
        }
    });
}

async fn follow(store: Store, aggregator: AggregatorHandle) {
    // After a failed read: about 2 s, then doubling to 30 s (with jitter, so
    // that collectors sharing the store do not retry together).
    let mut backoff = Backoff::new(2 * FOLLOW_EVERY, RETRY_AT_MOST);
    let mut wait = FOLLOW_EVERY;
    loop {
        tokio::time::sleep(wait).await;
        if aggregator.is_closed() {
            return;
        }
        match followed(&store, &aggregator).await {
            Ok(servers) => {
                backoff.reset();
                wait = FOLLOW_EVERY;
                if !servers.is_empty()
                    && aggregator.send(Command::Follow { servers }).await.is_err()
                {
                    return;
                }
            }
            Err(e) => {
                wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "Cannot read what the other collectors stored; retrying.");
            }
        }
    }
}

/// The servers other collectors stream, each with what they stored since
/// this collector's view of it: read on from the view where it is recent,
/// rebuilt from the last keyframe where it is not (or a delta does not apply).
async fn followed(
    store: &Store,
    aggregator: &AggregatorHandle,
) -> Result<Vec<Followed>, StoreError> {
    let elsewhere = store.elsewhere().await?;
    let view = aggregator.view();
    let now = now_micros();
    let mut out = Vec::new();
    // The servers read on from the view (with their index in `out`), and
    // those rebuilt whole.
    let mut after: Vec<(String, Rebuilt)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut whole: Vec<usize> = Vec::new();
    for e in elsewhere {
        let current = view.servers.get(e.server_id.as_str());
        // Streamed here: the view is this collector's own.
        if current.is_some_and(|v| v.via.is_none() && v.agent_connected) {
            continue;
        }
        let i = out.len();
        match current {
            Some(v) if v.via.is_some() && v.sampled_at_us > now - FOLLOW_WINDOW_US => {
                let base = Rebuilt {
                    at: v.sampled_at_us,
                    status: v.status.clone(),
                    sessions: v.sessions.to_vec(),
                    pools: v.pools.clone(),
                    facts: v.facts.clone(),
                    databases: Vec::new(),
                };
                index.insert(e.server_id.clone(), i);
                after.push((e.server_id.clone(), base));
            }
            _ => whole.push(i),
        }
        out.push(Followed {
            server: e,
            state: None,
        });
    }
    for (server_id, state) in store.advance(after).await? {
        let Some(&i) = index.get(&server_id) else {
            continue;
        };
        match state {
            Some(state) => out[i].state = Some((state, false)),
            // A delta that does not apply: the server is rebuilt.
            None => whole.push(i),
        }
    }
    for i in whole {
        // Read whole: its increments were counted, or never will be.
        let rebuilt = store
            .activity_at(out[i].server.server_id.clone(), Micros::MAX)
            .await?;
        out[i].state = rebuilt.map(|s| {
            let s = Rebuilt {
                databases: Vec::new(),
                ..s
            };
            (s, true)
        });
    }
    Ok(out)
}
