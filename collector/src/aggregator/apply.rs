//! Applying a batch of snapshots to the servers' views: keyframes and deltas
//! merged onto their base, database increments summed, minutes rolled up,
//! and the frames to store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pgfleet_proto::model::{Snapshot, TargetStatus, add_counters};
use pgfleet_proto::time::{Micros, now_micros};
use pgfleet_proto::v1;
use tonic::Status;
use tracing::debug;

use super::{Aggregator, DatabaseTotal};
use crate::load::Counter;
use crate::load::statements::Read;
use crate::rollup::{Minute, Rollup};
use crate::state::{self, Pools, by_key, merge};
use crate::store::{Encoded, Op as StoreOp, frame_bytes};

impl Aggregator {
    #[cfg(test)]
    pub(super) fn apply(
        &mut self,
        agent_id: &str,
        conn_id: u64,
        seq: u64,
        snapshots: Vec<Snapshot>,
    ) -> Result<Vec<String>, Status> {
        self.apply_with(agent_id, conn_id, seq, snapshots, Vec::new())
    }

    /// Applies a batch's `snapshots`, their frames for the history already
    /// written (`written`, by ingest) or not (empty).
    pub(super) fn apply_with(
        &mut self,
        agent_id: &str,
        conn_id: u64,
        seq: u64,
        snapshots: Vec<Snapshot>,
        written: Vec<Vec<u8>>,
    ) -> Result<Vec<String>, Status> {
        debug_assert!(written.is_empty() || written.len() == snapshots.len());
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return Err(Status::failed_precondition("the stream is not registered"));
        };
        if agent.conn_id != Some(conn_id) {
            return Err(Status::failed_precondition(
                "a newer stream of this agent replaced this one",
            ));
        }
        if seq <= agent.stream.last_seq {
            debug!(agent.id = %agent_id, seq, "Replayed batch acknowledged, not applied.");
            agent.stream.replayed_batches += 1;
            self.publish_stream(agent_id);
            return Ok(Vec::new());
        }
        if let Some(s) = snapshots
            .iter()
            .find(|s| !agent.servers.contains(&s.server_id))
        {
            return Err(Status::invalid_argument(format!(
                "batch {seq} has a snapshot of {:?}, which this agent's Hello did not name",
                s.server_id
            )));
        }
        let stream = &mut agent.stream;
        if stream.first_seq == 0 {
            stream.first_seq = seq;
        } else {
            stream.missing_batches += seq - stream.last_seq - 1;
        }
        stream.last_seq = seq;
        stream.applied_batches += 1;
        stream.applied_snapshots += snapshots.len() as u64;
        let now = now_micros();
        let mut keyframes_needed = Vec::new();
        let keep = self.store.is_some();
        let mut written = written.into_iter();
        let mut frames = Vec::new();
        for mut snapshot in snapshots {
            let bytes = written.next();
            let Some(current) = self.servers.get_mut(snapshot.server_id.as_str()) else {
                continue;
            };
            // Another agent took the server over; this one's view is set aside.
            if current.agent_id != agent_id {
                continue;
            }
            // A snapshot of a later minute closes the one being rolled up.
            if !current.minute.holds(snapshot.sampled_at_us)
                && snapshot.sampled_at_us > current.minute.start
            {
                let open = std::mem::replace(
                    &mut Arc::make_mut(current).minute,
                    Arc::new(Minute::holding(snapshot.sampled_at_us)),
                );
                if keep && open.samples > 0 {
                    self.writes.push(StoreOp::Minute {
                        server_id: snapshot.server_id.clone(),
                        minute: Arc::unwrap_or_clone(open),
                    });
                }
            }
            // Statement statistics are increments too.
            if let Some((read, texts)) = snapshot
                .statements
                .as_ref()
                .filter(|_| self.keep_load)
                .and_then(Read::of)
            {
                for (f, text) in texts {
                    self.texts.note(f, &text);
                }
                let mut closed = Vec::new();
                counter(&mut self.load, &snapshot.server_id).statements(
                    snapshot.sampled_at_us,
                    &read,
                    &mut closed,
                );
                if keep {
                    super::close_later(&mut self.later, &snapshot.server_id, closed);
                }
            }
            // Increments add up in any order, so even an older snapshot counts.
            if snapshot.status == TargetStatus::Up {
                let view = Arc::make_mut(current);
                sum_databases(Arc::make_mut(&mut view.databases), &snapshot.databases, now);
                Arc::make_mut(&mut view.minute).add_counters(&snapshot.databases);
            }
            // Snapshots from a replay after a reconnect may be older than what is
            // held; the live view keeps the newest.
            if snapshot.sampled_at_us < current.sampled_at_us {
                continue;
            }
            let keyframe = snapshot.delta.is_none();
            // The frame for the history, written here when ingest did not:
            // before the merge, which fills in the sessions (see
            // `store::frame_bytes`).
            let bytes = keep.then(|| bytes.unwrap_or_else(|| frame_bytes(&snapshot)));
            // What a delta changed, for the rollup (None: count them all).
            let mut changed = None;
            if let Some(delta) = snapshot.delta.take() {
                // A delta applies only to the snapshot it was made against;
                // without it, nothing of the snapshot is taken, and the agent
                // is asked for a keyframe instead.
                if current.sampled_at_us != delta.base_sampled_at_us
                    || current.status != TargetStatus::Up
                {
                    debug!(server.id = %snapshot.server_id, "Delta without its base; asking for a keyframe.");
                    keyframes_needed.push(snapshot.server_id);
                    if let Some(agent) = self.agents.get_mut(agent_id) {
                        agent.stream.refused_deltas += 1;
                    }
                    continue;
                }
                state::warm(&current.sessions);
                match merge(&current.sessions, snapshot.sessions, &delta) {
                    Some(merged) => {
                        snapshot.sessions = merged.sessions;
                        changed = Some((merged.left, merged.joined));
                    }
                    None => {
                        debug!(server.id = %snapshot.server_id, "Delta leaves out fields of a session its base lacks; asking for a keyframe.");
                        keyframes_needed.push(snapshot.server_id);
                        if let Some(agent) = self.agents.get_mut(agent_id) {
                            agent.stream.refused_deltas += 1;
                        }
                        continue;
                    }
                }
            }
            if keyframe {
                snapshot.sessions = by_key(std::mem::take(&mut snapshot.sessions));
            }
            let established: Vec<(String, u64)> = snapshot
                .databases
                .iter()
                .filter(|d| d.sessions > 0)
                .map(|d| (d.database.clone(), d.sessions))
                .collect();
            let pools = Arc::new(Pools {
                slots: snapshot.slots,
                pgbouncer: snapshot.pgbouncer,
                client_pools: snapshot.client_pools,
            });
            let facts = snapshot.facts.map(Arc::new);
            if let Some(bytes) = bytes {
                frames.push(Encoded {
                    server_id: snapshot.server_id.clone(),
                    at: snapshot.sampled_at_us,
                    keyframe,
                    bytes,
                });
            }
            let view = Arc::make_mut(current);
            view.last_seen_us = Some(now);
            view.sampled_at_us = snapshot.sampled_at_us;
            view.status = snapshot.status;
            view.sessions = Arc::new(snapshot.sessions);
            if facts.is_some() {
                view.facts = facts;
            }
            if snapshot.agent.is_some() {
                view.agent = snapshot.agent;
            }
            view.pools = pools;
            let rollup = changed
                .and_then(|(left, joined)| view.rollup.updated(&left, &joined, view.sampled_at_us))
                .unwrap_or_else(|| Rollup::of(&view.sessions, view.sampled_at_us));
            let counter = counter(&mut self.load, &snapshot.server_id);
            let unfinished = counter.unfinished();
            let mut closed = Vec::new();
            let interval_us = view.interval.as_micros() as i64;
            if view.status == TargetStatus::Up {
                Arc::make_mut(&mut view.minute).add_sample(&rollup, &view.pools, interval_us);
            }
            if !self.keep_load {
                // Nothing is counted (--load off).
            } else if view.status == TargetStatus::Up {
                let texts = &mut self.texts;
                counter.sample(
                    view.sampled_at_us,
                    interval_us,
                    &view.sessions,
                    &mut closed,
                    &mut |f, text| texts.note(f, text),
                );
                counter.established(view.sampled_at_us, &established);
            } else {
                counter.advance(view.sampled_at_us, &mut closed);
            }
            if counter.shown() {
                view.load = Arc::new(counter.now().clone());
            }
            if !unfinished && counter.unfinished() {
                if self.ending.is_empty() {
                    self.ending_since = Some(std::time::Instant::now());
                }
                self.ending.push_back(view.server_id.as_str().into());
            }
            if keep {
                super::close_later(&mut self.later, &snapshot.server_id, closed);
            }
            view.rollup = Arc::new(rollup);
        }
        if keep && !self.texts.new.is_empty() {
            self.writes
                .push(StoreOp::Texts(std::mem::take(&mut self.texts.new)));
        }
        self.publish_stream(agent_id);
        if keep {
            self.writes.push(StoreOp::Applied {
                agent_id: agent_id.to_owned(),
                seq,
                frames,
            });
        }
        Ok(keyframes_needed)
    }
}

/// The counter of `server_id`, made when new: looked up by the name as it
/// is, so that every sample does not allocate a key to find it.
fn counter<'a>(load: &'a mut HashMap<Arc<str>, Counter>, server_id: &str) -> &'a mut Counter {
    if !load.contains_key(server_id) {
        load.insert(server_id.into(), Counter::default());
    }
    load.get_mut(server_id)
        .expect("the counter was inserted just above")
}

/// Adds one up snapshot's increments to the totals. Every up snapshot lists every
/// watched database, so one it leaves out was dropped (or is no longer watched).
pub(super) fn sum_databases(
    totals: &mut BTreeMap<Arc<str>, DatabaseTotal>,
    increments: &[v1::DatabaseCounters],
    now: Micros,
) {
    totals.retain(|name, _| increments.iter().any(|i| *i.database == **name));
    for inc in increments {
        // Found without a copy of its name: the view's copy of the map at
        // every sample shares its names.
        let total = match totals.get_mut(inc.database.as_str()) {
            Some(total) => total,
            None => totals
                .entry(inc.database.as_str().into())
                .or_insert_with(|| DatabaseTotal {
                    since_us: now,
                    totals: v1::DatabaseCounters::default(),
                }),
        };
        add_counters(&mut total.totals, inc);
    }
}
