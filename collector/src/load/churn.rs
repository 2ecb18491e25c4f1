//! Connection churn: client sessions started and ended, by application, user
//! and client host, and how long the ended ones lived. It comes from the
//! sessions one sample adds to and removes from the one before: no query on
//! the monitored server.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use pgfleet_proto::model::{ArcStr, Session};
use pgfleet_proto::time::Micros;

use super::{OTHER, TOP_KEYS};

/// Who opened the sessions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChurnKey {
    pub database: ArcStr,
    pub application: ArcStr,
    pub user: ArcStr,
    /// The client's address without its port; empty for a Unix socket.
    pub client: ArcStr,
}

/// Their sessions started and ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChurnCount {
    pub started: u64,
    pub ended: u64,
    /// The lifetimes of the ended ones, summed.
    pub lifetime_us: i64,
}

impl ChurnCount {
    pub fn add(&mut self, other: &ChurnCount) {
        self.started += other.started;
        self.ended += other.ended;
        self.lifetime_us += other.lifetime_us;
    }
}

/// Adds `rows` to `sums`, by key (a key's first row cloned in, the rest
/// added to it).
pub fn add_rows<S: std::hash::BuildHasher>(
    sums: &mut std::collections::HashMap<ChurnKey, ChurnCount, S>,
    rows: &[(ChurnKey, ChurnCount)],
) {
    for (k, c) in rows {
        match sums.get_mut(k) {
            Some(sum) => sum.add(c),
            None => {
                sums.insert(k.clone(), *c);
            }
        }
    }
}

/// Sessions started and ended over an interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Churn {
    /// By who opened them; at most [`TOP_KEYS`] and `other` once bounded.
    pub rows: Vec<(ChurnKey, ChurnCount)>,
    /// The lifetimes of the sessions that ended, as a histogram: bucket
    /// index ([`lifetime_bucket`]) and count, by index.
    pub lifetimes: Vec<(u16, u64)>,
    /// The longest of them.
    pub lifetime_max_us: i64,
    /// Sessions established, by database, as PostgreSQL counts them
    /// (pg_stat_database.sessions, 14 and later): those that began and ended
    /// between two samples too, which `rows` cannot see.
    pub established: Vec<(ArcStr, u64)>,
}

/// A lifetime's histogram bucket: a quarter of an octave of milliseconds,
/// so each bucket is about 19% wide.
pub fn lifetime_bucket(us: i64) -> u16 {
    let ms = (us.max(0) as f64) / 1000.0;
    ((ms + 1.0).log2() * 4.0) as u16
}

/// A bucket's middle, in seconds.
fn bucket_seconds(index: u16) -> f64 {
    ((f64::from(index) + 0.5) / 4.0).exp2().max(1.0) / 1000.0 - 0.001
}

/// The client's host: its address without the port.
pub fn host(client: &str) -> &str {
    match client.rfind(':') {
        Some(at) if client[at + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            client[..at].trim_start_matches('[').trim_end_matches(']')
        }
        _ => client,
    }
}

/// The sessions of `old` and `new` (both in key order) paired by key: a
/// session only `old` has, one only `new` has, or the two of one key.
pub(super) fn paired<'a>(
    old: &'a [Arc<Session>],
    new: &'a [Arc<Session>],
) -> impl Iterator<Item = (Option<&'a Arc<Session>>, Option<&'a Arc<Session>>)> {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let pair = match (old.get(i), new.get(j)) {
            (None, None) => return None,
            (Some(o), Some(n)) => match o.key().cmp(&n.key()) {
                std::cmp::Ordering::Equal => (Some(o), Some(n)),
                std::cmp::Ordering::Less => (Some(o), None),
                std::cmp::Ordering::Greater => (None, Some(n)),
            },
            (o, n) => (o, n),
        };
        i += usize::from(pair.0.is_some());
        j += usize::from(pair.1.is_some());
        Some(pair)
    })
}

/// Whether a session counts toward churn: a client backend.
fn counts(s: &Session) -> bool {
    &*s.backend_type == "client backend"
}

impl Churn {
    /// Adds one pair of sessions from [`paired`]: a client session only the
    /// new sample has as started, one only the old sample has as ended at
    /// `at`. Says whether one started and whether one ended.
    pub fn pair(
        &mut self,
        old: Option<&Session>,
        new: Option<&Session>,
        at: Micros,
    ) -> (bool, bool) {
        match (old, new) {
            (Some(s), None) if counts(s) => {
                self.ended(s, at);
                (false, true)
            }
            (None, Some(s)) if counts(s) => {
                self.row(s).started += 1;
                (true, false)
            }
            _ => (false, false),
        }
    }

    fn ended(&mut self, s: &Session, at: Micros) {
        let lifetime = (at - s.backend_start_us).max(0);
        let row = self.row(s);
        row.ended += 1;
        row.lifetime_us += lifetime;
        self.lifetime_max_us = self.lifetime_max_us.max(lifetime);
        add_to(&mut self.lifetimes, lifetime_bucket(lifetime), 1);
    }

    fn row(&mut self, s: &Session) -> &mut ChurnCount {
        let host = host(&s.client);
        let i = match self.rows.iter().position(|(k, _)| {
            k.application == s.application_name
                && k.user == s.user
                && &*k.client == host
                && k.database == s.database
        }) {
            Some(i) => i,
            None => {
                self.rows.push((
                    ChurnKey {
                        database: s.database.clone(),
                        application: s.application_name.clone(),
                        user: s.user.clone(),
                        client: host.into(),
                    },
                    ChurnCount::default(),
                ));
                self.rows.len() - 1
            }
        };
        &mut self.rows[i].1
    }

    /// Adds sessions established in `database`.
    pub fn establish(&mut self, database: &str, n: u64) {
        match self.established.iter_mut().find(|(d, _)| &**d == database) {
            Some((_, sum)) => *sum += n,
            None => self.established.push((database.into(), n)),
        }
    }

    /// Adds `other`'s counts.
    pub fn absorb(&mut self, other: &Churn) {
        self.rows.extend(other.rows.iter().cloned());
        for (d, n) in &other.established {
            self.establish(d, *n);
        }
        self.absorb_lifetimes(other);
    }

    /// Adds `other`'s lifetimes only.
    pub fn absorb_lifetimes(&mut self, other: &Churn) {
        for &(index, n) in &other.lifetimes {
            add_to(&mut self.lifetimes, index, n);
        }
        self.lifetime_max_us = self.lifetime_max_us.max(other.lifetime_max_us);
    }

    /// Sums equal keys, and keeps the [`TOP_KEYS`] with the most sessions
    /// started and ended; the rest are summed into one `other` row.
    pub fn bound(&mut self) {
        let mut summed: HashMap<ChurnKey, ChurnCount> = HashMap::new();
        for (k, c) in self.rows.drain(..) {
            summed.entry(k).or_default().add(&c);
        }
        let mut rows: Vec<(ChurnKey, ChurnCount)> = summed.into_iter().collect();
        rows.sort_unstable_by(|a, b| {
            (b.1.started + b.1.ended)
                .cmp(&(a.1.started + a.1.ended))
                .then_with(|| a.0.cmp(&b.0))
        });
        if rows.len() > TOP_KEYS {
            let rest = rows.split_off(TOP_KEYS - 1);
            let other: ArcStr = OTHER.into();
            let mut sum = ChurnCount::default();
            for (_, c) in rest {
                sum.add(&c);
            }
            rows.push((
                ChurnKey {
                    database: other.clone(),
                    application: other.clone(),
                    user: other.clone(),
                    client: other,
                },
                sum,
            ));
        }
        self.rows = rows;
    }

    /// The lifetime under which a share `q` (0 to 1) of the ended sessions
    /// lived, in seconds; 0 without any.
    pub fn lifetime_quantile(&self, q: f64) -> f64 {
        let total: u64 = self.lifetimes.iter().map(|(_, n)| *n).sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for &(index, n) in &self.lifetimes {
            seen += n;
            if seen >= rank {
                return bucket_seconds(index).min(self.lifetime_max_us as f64 / 1e6);
            }
        }
        self.lifetime_max_us as f64 / 1e6
    }
}

/// Adds `n` to `index` in a histogram kept in index order.
fn add_to(histogram: &mut Vec<(u16, u64)>, index: u16, n: u64) {
    match histogram.binary_search_by_key(&index, |(i, _)| *i) {
        Ok(at) => histogram[at].1 += n,
        Err(at) => histogram.insert(at, (index, n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(pid: i32, start: Micros, app: &str) -> Arc<Session> {
        Arc::new(Session {
            pid,
            backend_start_us: start,
            application_name: app.into(),
            user: "app".into(),
            client: "10.0.0.7:51234".into(),
            backend_type: "client backend".into(),
            ..Default::default()
        })
    }

    #[test]
    fn sessions_new_and_gone_are_started_and_ended_with_their_lifetimes() {
        let walsender = Arc::new(Session {
            pid: 9,
            backend_type: "walsender".into(),
            ..Default::default()
        });
        let old = vec![client(1, 0, "web"), client(2, 1_000_000, "web"), walsender];
        let new = vec![client(2, 1_000_000, "web"), client(3, 2_000_000, "batch")];
        let mut c = Churn::default();
        let mut changed = (0, 0);
        for (o, n) in paired(&old, &new) {
            let (started, ended) = c.pair(o.map(|o| &**o), n.map(|n| &**n), 3_000_000);
            changed.0 += u32::from(started);
            changed.1 += u32::from(ended);
        }
        assert_eq!(changed, (1, 1), "started and ended, as said");
        c.bound();
        let rows: Vec<(&str, &str, u64, u64)> = c
            .rows
            .iter()
            .map(|(k, n)| (&*k.application, &*k.client, n.started, n.ended))
            .collect();
        assert_eq!(
            rows,
            [("batch", "10.0.0.7", 1, 0), ("web", "10.0.0.7", 0, 1)],
            "the walsender is not a client"
        );
        assert_eq!(c.lifetime_max_us, 3_000_000);
        let p50 = c.lifetime_quantile(0.5);
        assert!((2.5..=3.0).contains(&p50), "{p50}");
    }

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host("10.1.2.3:5432"), "10.1.2.3");
        assert_eq!(host("[::1]:61000"), "::1");
        assert_eq!(host(""), "");
        assert_eq!(host("db.example"), "db.example");
    }

    #[test]
    fn quantiles_come_from_the_histogram_within_its_width() {
        let mut c = Churn::default();
        for ms in 1..=100 {
            c.ended(&client(ms, 0, "x"), i64::from(ms) * 1000);
        }
        let p90 = c.lifetime_quantile(0.9);
        assert!((0.075..=0.11).contains(&p90), "{p90}");
        assert_eq!(
            c.lifetime_quantile(1.0),
            0.1_f64.min(c.lifetime_quantile(1.0))
        );
    }
}
