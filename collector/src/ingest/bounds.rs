//! What an agent may send, and the refusals past it: each bound refused
//! with a status that names it, and logged once per agent and bound.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pgfleet_common::settings::{MAX_LABEL_BYTES, check_label};
use pgfleet_proto::model::Snapshot;
use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;
use tonic::Status;
use tracing::warn;

use super::MAX_MESSAGE_BYTES;
use crate::aggregator::TargetInfo;

/// The most targets one agent may name.
pub const MAX_TARGETS: usize = 1024;

/// The most labels one server may carry.
pub const MAX_LABELS: usize = 32;

/// The most snapshots one batch may hold (an agent sends at most 256).
pub const MAX_SNAPSHOTS_PER_BATCH: usize = 4096;

/// The most sessions one list of a snapshot may hold (a keyframe's
/// sessions, a delta's upserted, a delta's removed): PostgreSQL's own
/// ceiling on max_connections is 262,143.
pub const MAX_SESSIONS_PER_SNAPSHOT: usize = 262_144;

/// The longest string a batch may carry: a dictionary entry (a query text,
/// a name) or a down target's reason. PostgreSQL's own longest query text
/// (track_activity_query_size) is 1 MiB.
pub const MAX_STRING_BYTES: usize = 1 << 20;

/// The agents refused for going past a bound, so that each is logged once
/// (an agent resends what was refused, again and again) rather than at
/// every reconnect. Bounded: past [`MAX_REMEMBERED`] the set starts afresh.
#[derive(Debug, Default, Clone)]
pub struct Refusals(Arc<std::sync::Mutex<HashSet<(String, &'static str)>>>);

/// The most (agent, bound) pairs remembered.
const MAX_REMEMBERED: usize = 10_000;

impl Refusals {
    /// Logs a refusal of `agent_id` past `bound`, the first time only.
    pub(super) fn warn(&self, agent_id: &str, bound: &'static str, why: &str) {
        let Ok(mut seen) = self.0.lock() else {
            return;
        };
        if seen.len() >= MAX_REMEMBERED {
            seen.clear();
        }
        if seen.insert((agent_id.to_owned(), bound)) {
            warn!(agent.id = %agent_id, bound, reason = %why, "Refused an agent's batch past a bound; its stream ends with the reason (logged once per agent and bound).");
        }
    }
}

/// Refuses a batch past one of the bounds above, naming it.
pub(super) fn check_batch(batch: &v1::Batch) -> Result<(), Status> {
    let over = |what: &str, n: usize, bound: usize| {
        Status::resource_exhausted(format!(
            "batch {}: {what} is {n}, over this collector's bound of {bound}",
            batch.seq
        ))
    };
    if batch.snapshots.len() > MAX_SNAPSHOTS_PER_BATCH {
        return Err(over(
            "the number of snapshots",
            batch.snapshots.len(),
            MAX_SNAPSHOTS_PER_BATCH,
        ));
    }
    if let Some(e) = batch
        .dictionary_additions
        .iter()
        .find(|e| e.value.len() > MAX_STRING_BYTES)
    {
        return Err(over(
            &format!("dictionary entry {}'s length in bytes", e.id),
            e.value.len(),
            MAX_STRING_BYTES,
        ));
    }
    for s in &batch.snapshots {
        let sessions = match &s.activity {
            Some(v1::snapshot::Activity::Keyframe(k)) => k.sessions.len(),
            Some(v1::snapshot::Activity::Delta(d)) => d.upserted.len().max(d.removed.len()),
            None => 0,
        };
        if sessions > MAX_SESSIONS_PER_SNAPSHOT {
            return Err(over(
                &format!("the number of sessions of {:?}", s.server_id),
                sessions,
                MAX_SESSIONS_PER_SNAPSHOT,
            ));
        }
        let reason = s.status.as_ref().map_or(0, |st| st.reason.len());
        if reason > MAX_STRING_BYTES {
            return Err(over(
                &format!("the length of {:?}'s down reason", s.server_id),
                reason,
                MAX_STRING_BYTES,
            ));
        }
    }
    Ok(())
}

/// How far ahead of the collector's clock a snapshot may be dated.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Refuses a batch with a snapshot dated more than [`MAX_CLOCK_SKEW`] ahead
/// of `now`: kept, it would sort after everything real, and stay the
/// server's "latest" until the clocks caught up.
pub(super) fn check_times(snapshots: &[Snapshot], now: Micros) -> Result<(), Status> {
    let limit = now.saturating_add(MAX_CLOCK_SKEW.as_micros() as i64);
    match snapshots.iter().find(|s| s.sampled_at_us > limit) {
        None => Ok(()),
        Some(s) => {
            let ahead = Duration::from_secs(((s.sampled_at_us - now) / 1_000_000) as u64);
            Err(Status::invalid_argument(format!(
                "the snapshot of {:?} is dated {} ahead of the collector's clock, past the {} of clock skew allowed; fix the clock of the agent's host or the collector's (NTP)",
                s.server_id,
                humantime::format_duration(ahead),
                humantime::format_duration(MAX_CLOCK_SKEW),
            )))
        }
    }
}

/// What the agent is told when its side of the stream fails: a message
/// over the limit is RESOURCE_EXHAUSTED, with the limit (tonic says
/// OUT_OF_RANGE, which an agent would take for a bug of its own).
pub(super) fn inbound_error(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
    {
        return Status::resource_exhausted(format!(
            "a message is over this collector's limit of {MAX_MESSAGE_BYTES} bytes (Welcome.config.max_message_bytes): send smaller batches ({})",
            status.message()
        ));
    }
    status
}

/// Checks a Hello and turns it into the aggregator's terms.
pub(super) fn check_hello(hello: &v1::Hello) -> Result<(Vec<TargetInfo>, Duration), Status> {
    let bad = |m: String| Status::invalid_argument(m);
    if hello.agent_id.trim().is_empty() || hello.agent_id.len() > MAX_LABEL_BYTES {
        return Err(bad(format!(
            "agent_id must be between 1 and {MAX_LABEL_BYTES} bytes long"
        )));
    }
    if hello.targets.is_empty() || hello.targets.len() > MAX_TARGETS {
        return Err(bad(format!(
            "Hello must name between 1 and {MAX_TARGETS} targets"
        )));
    }
    if hello.sample_interval_ms < 10 {
        return Err(bad("sample_interval_ms must be at least 10".to_owned()));
    }
    let mut seen = HashSet::new();
    let mut targets = Vec::with_capacity(hello.targets.len());
    for t in &hello.targets {
        if t.server_id.trim().is_empty() || t.server_id.len() > MAX_LABEL_BYTES {
            return Err(bad(format!(
                "server_id must be between 1 and {MAX_LABEL_BYTES} bytes long"
            )));
        }
        if !seen.insert(t.server_id.as_str()) {
            return Err(bad(format!("server_id {:?} is named twice", t.server_id)));
        }
        let mut labels: BTreeMap<String, String> = hello
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend(t.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        if labels.len() > MAX_LABELS {
            return Err(bad(format!(
                "server {:?} has {} labels; at most {MAX_LABELS} are allowed",
                t.server_id,
                labels.len()
            )));
        }
        for (name, value) in &labels {
            check_label(name, value).map_err(|e| bad(e.to_string()))?;
        }
        targets.push(TargetInfo {
            server_id: t.server_id.clone(),
            labels,
        });
    }
    Ok((
        targets,
        Duration::from_millis(u64::from(hello.sample_interval_ms)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> v1::Hello {
        v1::Hello {
            agent_id: "a1".into(),
            agent_version: "test".into(),
            labels: [("dc".to_owned(), "eu1".to_owned())].into(),
            targets: vec![v1::Target {
                server_id: "db-1".into(),
                labels: [("dc".to_owned(), "eu2".to_owned())].into(),
            }],
            sample_interval_ms: 1000,
        }
    }

    #[test]
    fn target_labels_override_agent_labels() {
        let (targets, interval) = check_hello(&hello()).unwrap();
        assert_eq!(targets[0].labels["dc"], "eu2");
        assert_eq!(interval, Duration::from_secs(1));
    }

    #[test]
    fn bad_hellos_are_refused_with_a_reason() {
        let mut h = hello();
        h.agent_id.clear();
        assert!(check_hello(&h).unwrap_err().message().contains("agent_id"));
        let mut h = hello();
        h.targets.push(h.targets[0].clone());
        assert!(
            check_hello(&h)
                .unwrap_err()
                .message()
                .contains("named twice")
        );
        let mut h = hello();
        h.targets[0].labels.insert("bad-name".into(), "x".into());
        let status = check_hello(&h).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("bad-name"),
            "{}",
            status.message()
        );
    }
}
