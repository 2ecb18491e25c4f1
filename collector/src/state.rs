//! A server's state as of one snapshot: its sessions, kept in key order, and
//! its pools; and how a delta applies to the sessions before it. The
//! aggregator (live views) and the store (replaying frames) share it.

use std::sync::Arc;

use pgfleet_proto::compact;
use pgfleet_proto::model::{Delta, Session};
use pgfleet_proto::v1;

/// Every pool of one server, as last sampled.
#[derive(Debug, Clone, Default)]
pub struct Pools {
    /// The server's connection slots.
    pub slots: Option<v1::ConnectionSlots>,
    /// Its PgBouncer, when the agent reads one.
    pub pgbouncer: Option<v1::PgBouncerSample>,
    /// The agent's pool, then the pools applications reported.
    pub client_pools: Vec<v1::ClientPool>,
}

impl Pools {
    /// How full the pools are.
    pub fn utilisation(&self) -> v1::PoolUtilisation {
        v1::PoolUtilisation {
            slots: self.slots_utilisation(),
            client_pools: self
                .client_pools
                .iter()
                .map(|p| share(p.used, p.max))
                .collect(),
            pgbouncer_pools: self
                .pgbouncer
                .iter()
                .flat_map(|b| &b.pools)
                .map(|p| {
                    let open = p.server_active_connections
                        + p.server_idle_connections
                        + p.server_used_connections;
                    share(p.server_active_connections, open)
                })
                .collect(),
        }
    }

    /// Client backends over the slots they may take.
    pub fn slots_utilisation(&self) -> f64 {
        self.slots.as_ref().map_or(0.0, |s| {
            share(s.used, s.max_connections.saturating_sub(s.reserved))
        })
    }
}

/// `used` over `of`; 0 when there is nothing to use.
fn share(used: u32, of: u32) -> f64 {
    if of == 0 {
        0.0
    } else {
        f64::from(used) / f64::from(of)
    }
}

/// Reads each session's reference count and key, so that the cache lines
/// [`merge`] then reads and changes are already in the cache: call it on the
/// base just before. A session's allocation is apart from every other's, so
/// each is a cache miss. Plain loads like these overlap, as many at once as
/// the core can follow; in `merge` each session's key is read after the
/// locked instruction that changed the last one's reference count, which
/// lets no later load begin first, so there the misses come one at a time.
/// Side by side, merging after this pass took 0.81–0.87 of the time
/// ("Sessions as Arcs and as plain data" in BENCHMARKS.md); the same pass
/// before a vector is dropped saved nothing, so it is not made there.
pub fn warm(sessions: &[Arc<Session>]) {
    let mut sum = 0usize;
    for s in sessions {
        let (pid, started) = s.key();
        sum = sum.wrapping_add(Arc::strong_count(s) ^ pid as usize ^ started as usize);
    }
    std::hint::black_box(sum);
}

/// The sessions of `base` with a delta applied: the fields upserted sessions
/// left out taken from their version in `base`, `removed` and the sessions
/// that `upserted` replaces taken out, `upserted` added. None when a session
/// left out fields that `base` does not have.
///
/// Sessions are kept in key order (see [`by_key`]), so this is one pass over
/// `base`, which fills in the upserted sessions as it meets their old
/// versions: no hash table, no search, and each old session read once (they
/// sit apart on the heap, so reading one costs a cache miss). A base out of
/// order (no view holds one) is found in that pass and sorted first.
pub fn merge(
    base: &[Arc<Session>],
    mut upserted: Vec<Arc<Session>>,
    delta: &Delta,
) -> Option<Merged> {
    let mask = |i: usize| delta.unchanged.get(i).copied().unwrap_or(0);
    // The upserted, by place as given, in key order; of a broken or hostile
    // agent's duplicates the last given is kept, as `by_key` keeps it.
    let mut order: Vec<usize> = (0..upserted.len()).collect();
    order.sort_by_key(|&i| upserted[i].key());
    order.dedup_by(|later, kept| {
        let same = upserted[*later].key() == upserted[*kept].key();
        if same {
            *kept = *later;
        }
        same
    });
    let mut removed = delta.removed.clone();
    removed.sort_unstable();
    let mut sessions = Vec::with_capacity(base.len() + order.len());
    let mut left = Vec::new();
    let mut new = order.iter().copied().peekable();
    let mut before = None;
    for old in base {
        let key = old.key();
        if before.is_some_and(|b| b >= key) {
            drop(sessions);
            return sorted_first(base, upserted, delta);
        }
        before = Some(key);
        while let Some(i) = new.next_if(|&i| upserted[i].key() < key) {
            if mask(i) != 0 {
                // Not in a base in key order; one out of order may hold it further on.
                drop(sessions);
                return sorted_first(base, upserted, delta);
            }
            sessions.push(upserted[i].clone());
        }
        if let Some(i) = new.next_if(|&i| upserted[i].key() == key) {
            if mask(i) != 0 {
                compact::fill(Arc::make_mut(&mut upserted[i]), old, mask(i));
            }
            sessions.push(upserted[i].clone());
            left.push(old.clone());
        } else if removed.binary_search(&key).is_err() {
            sessions.push(old.clone());
        } else {
            left.push(old.clone());
        }
    }
    for i in new {
        if mask(i) != 0 {
            return None;
        }
        sessions.push(upserted[i].clone());
    }
    Some(Merged {
        sessions,
        joined: order.iter().map(|&i| upserted[i].clone()).collect(),
        left,
    })
}

/// [`merge`] over `base` put in key order when it was out of order; None
/// when it was in order (the delta does not apply to it).
fn sorted_first(
    base: &[Arc<Session>],
    upserted: Vec<Arc<Session>>,
    delta: &Delta,
) -> Option<Merged> {
    if base.is_sorted_by(|a, b| a.key() < b.key()) {
        None
    } else {
        merge(&by_key(base.to_vec()), upserted, delta)
    }
}

/// What a delta made of its base.
#[derive(Debug)]
pub struct Merged {
    /// The sessions after it, in key order.
    pub sessions: Vec<Arc<Session>>,
    /// The base's sessions that ended or that a new version replaced.
    pub left: Vec<Arc<Session>>,
    /// The sessions that began, and the new versions: `sessions` is the base
    /// less `left` with `joined`.
    pub joined: Vec<Arc<Session>>,
}

/// Sessions in key order, each key once, as the views keep them. A real
/// agent never sends a key twice (pg_stat_activity has one row per
/// backend); of a broken or hostile agent's duplicates the last is kept.
pub fn by_key(mut sessions: Vec<Arc<Session>>) -> Vec<Arc<Session>> {
    if !sessions.is_sorted_by(|a, b| a.key() < b.key()) {
        // Stable, so that duplicates stay in the order sent.
        sessions.sort_by_key(|s| s.key());
        sessions.reverse();
        sessions.dedup_by_key(|s| s.key());
        sessions.reverse();
    }
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_replaces_removes_adds_and_fills_in_key_order() {
        let s = |pid: i32, query: &str| {
            Arc::new(Session {
                pid,
                backend_start_us: 1,
                query: query.into(),
                database: "orders".into(),
                ..Default::default()
            })
        };
        // A base out of order (as an older store may hold it).
        let base = vec![s(5, "e"), s(1, "a"), s(3, "c"), s(7, "g")];
        let changed = Arc::new(Session {
            database: "".into(),
            ..(*s(3, "c2")).clone()
        });
        let delta = Delta {
            base_sampled_at_us: 0,
            removed: vec![(7, 1), (99, 1)],
            unchanged: vec![0, compact::field::DATABASE, 0],
        };
        let Merged {
            sessions: merged,
            left,
            joined,
        } = merge(&base, vec![s(6, "f"), changed, s(0, "z")], &delta).unwrap();
        let pids = |v: &[Arc<Session>]| v.iter().map(|x| x.pid).collect::<Vec<_>>();
        assert_eq!(
            pids(&left),
            [3, 7],
            "replaced, then removed (99 was not there)"
        );
        assert_eq!(pids(&joined), [0, 3, 6]);
        let shape: Vec<(i32, &str, &str)> = merged
            .iter()
            .map(|x| (x.pid, &*x.query, &*x.database))
            .collect();
        assert_eq!(
            shape,
            [
                (0, "z", "orders"),
                (1, "a", "orders"),
                (3, "c2", "orders"),
                (5, "e", "orders"),
                (6, "f", "orders")
            ]
        );
        // A mask for a session the base lacks cannot be filled.
        let orphan = Delta {
            unchanged: vec![compact::field::DATABASE],
            ..delta
        };
        assert!(merge(&base, vec![s(42, "x")], &orphan).is_none());
        let in_order = by_key(base.clone());
        assert!(merge(&in_order, vec![s(2, "x")], &orphan).is_none());
        // Of a key upserted twice, the last given is kept.
        let twice = Delta {
            unchanged: vec![],
            ..orphan
        };
        let m = merge(&in_order, vec![s(3, "first"), s(3, "last")], &twice).unwrap();
        let queries: Vec<&str> = m.sessions.iter().map(|x| &*x.query).collect();
        assert_eq!(queries, ["a", "last", "e"], "7 removed, as before");
        assert_eq!(pids(&m.joined), [3], "the duplicate counts once");
        assert_eq!(&*m.joined[0].query, "last");
    }
}
