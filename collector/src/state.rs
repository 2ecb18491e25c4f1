//! A server's state as of one snapshot: its sessions, kept in key order, and
//! its pools; and how a delta applies to the sessions before it. The
//! aggregator (live views) and the store (replaying frames) share it.

use std::sync::Arc;

use pgfleet_proto::compact;
use pgfleet_proto::model::{Delta, Session, SessionKey};
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

/// The sessions of `base` with a delta applied: the fields upserted sessions
/// left out taken from their version in `base`, `removed` and the sessions
/// that `upserted` replaces taken out, `upserted` added; and the upserted
/// sessions, now whole, in the order given. None when a session left out
/// fields that `base` does not have.
///
/// Sessions are kept in key order (see [`by_key`]), so this is one pass over
/// `base` with binary searches, rather than a hash table of it per snapshot.
pub fn merge(
    base: &[Arc<Session>],
    mut upserted: Vec<Arc<Session>>,
    delta: &Delta,
) -> Option<Merged> {
    let sorted;
    let base = if base.is_sorted_by_key(|s| s.key()) {
        base
    } else {
        sorted = by_key(base.to_vec());
        &sorted
    };
    let find = |key: SessionKey| base.binary_search_by_key(&key, |s| s.key()).ok();
    for (s, &mask) in upserted.iter_mut().zip(&delta.unchanged) {
        if mask != 0 {
            let old = &base[find(s.key())?];
            compact::fill(Arc::make_mut(s), old, mask);
        }
    }
    let whole = upserted.clone();
    let upserted = by_key(upserted);
    let mut removed = delta.removed.clone();
    removed.sort_unstable();
    let mut sessions = Vec::with_capacity(base.len() + upserted.len());
    let mut new = upserted.into_iter().peekable();
    for old in base {
        let key = old.key();
        while let Some(n) = new.next_if(|n| n.key() < key) {
            sessions.push(n);
        }
        let replaced = new.peek().is_some_and(|n| n.key() == key);
        if !replaced && removed.binary_search(&key).is_err() {
            sessions.push(old.clone());
        }
    }
    sessions.extend(new);
    Some((sessions, whole))
}

/// A merge's sessions, and the upserted ones whole in the order given.
pub type Merged = (Vec<Arc<Session>>, Vec<Arc<Session>>);

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
        let (merged, whole) = merge(&base, vec![s(6, "f"), changed, s(0, "z")], &delta).unwrap();
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
        let order: Vec<i32> = whole.iter().map(|x| x.pid).collect();
        assert_eq!(order, [6, 3, 0], "the upserted, whole, as given");
        assert_eq!(&*whole[1].database, "orders");
        // A mask for a session the base lacks cannot be filled.
        let orphan = Delta {
            unchanged: vec![compact::field::DATABASE],
            ..delta
        };
        assert!(merge(&base, vec![s(42, "x")], &orphan).is_none());
    }
}
