//! The simulation behind `cargo bench --bench wire` and the test that holds
//! its figure (`tests/wire_bytes.rs`): a server with 1,000 client sessions,
//! about 10% of them changing each second, through the agent's real encoder.
//! The collector's load generator (`bench/loadgen`) simulates each of its
//! agents with it, at 100 sessions.
#![allow(dead_code)]

use std::sync::Arc;

use pgfleet_agent::encode::Encoder;
use pgfleet_agent::outgoing::Outgoing;
use pgfleet_agent::sampler::{QueryText, query_text};
use pgfleet_proto::model::{ArcStr, Session, SessionKey, SessionState, Snapshot, TargetStatus};
use pgfleet_proto::v1;
use prost::Message;

pub const SESSIONS: usize = 1000;
pub const SAMPLES: u64 = 600;
pub const CHANGED_PER_SAMPLE: usize = 100;
/// Of those, clients that disconnect and are replaced by a new backend.
pub const RECONNECTS_PER_SAMPLE: usize = 2;
pub const T0: i64 = 1_790_000_000_000_000;
const SECOND: i64 = 1_000_000;
/// The agent compresses each batch as one zstd frame, at this level.
pub use pgfleet_agent::outgoing::ZSTD_LEVEL;
/// Per message on the stream: gRPC's 5-byte prefix and HTTP/2's 9-byte
/// DATA frame header.
pub const FRAMING: usize = 5 + 9;

const QUERIES: &[&str] = &[
    "SELECT o.id, o.status, o.total FROM orders o WHERE o.customer_id = 4711 ORDER BY o.created_at DESC LIMIT 20",
    "SELECT * FROM order_items WHERE order_id = 99812",
    "UPDATE orders SET status = 'paid', paid_at = now() WHERE id = 99812",
    "INSERT INTO order_events (order_id, kind, payload) VALUES (99812, 'paid', '{\"by\":\"card\"}')",
    "SELECT p.id, p.name, p.price FROM products p WHERE p.category_id = 12 AND p.active",
    "SELECT count(*) FROM carts WHERE updated_at > now() - interval '1 hour'",
    "BEGIN",
    "COMMIT",
    "SELECT balance FROM accounts WHERE id = 338 FOR UPDATE",
    "UPDATE accounts SET balance = balance - 25.00 WHERE id = 338",
    "SELECT c.id, c.email FROM customers c WHERE c.email = 'someone@example.com'",
    "DELETE FROM sessions WHERE expires_at < now()",
    "SELECT i.id, i.sku, s.quantity FROM inventory i JOIN stock s ON s.item_id = i.id WHERE i.warehouse_id = 3",
    "SELECT invoice_id, amount FROM invoices WHERE customer_id = 4711 AND due_at < now()",
    "INSERT INTO audit_log (actor, action, at) VALUES ('api', 'login', now())",
    "SELECT 1",
    "SELECT r.id, r.rating, r.body FROM reviews r WHERE r.product_id = 77 ORDER BY r.created_at DESC LIMIT 10",
    "UPDATE carts SET updated_at = now() WHERE id = 'a81f'",
    "SELECT s.id FROM shipments s WHERE s.order_id = 99812 AND s.state = 'pending'",
    "WITH recent AS (SELECT customer_id, sum(total) t FROM orders WHERE created_at > now() - interval '7 days' GROUP BY 1) SELECT * FROM recent ORDER BY t DESC LIMIT 100",
];
const DATABASES: &[&str] = &["orders", "billing", "catalog"];
const USERS: &[&str] = &[
    "app_orders",
    "app_billing",
    "app_catalog",
    "reporting",
    "etl",
];
const APPS: &[&str] = &[
    "orders-api",
    "billing-worker",
    "catalog-api",
    "checkout-web",
    "metabase",
    "airflow",
];

/// xorshift64*: the same sequence on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One simulated server's sessions.
pub struct Sim {
    rng: Rng,
    pub sessions: Vec<Arc<Session>>,
    next_pid: i32,
    changed_per_sample: usize,
    reconnects_per_sample: usize,
    texts: Texts,
}

/// The strings sessions share, each made once, as the sampler's interner
/// shares them; and each query masked once (the load generator simulates
/// thousands of servers, and masking every changed session's query again
/// was a tenth of its CPU).
struct Texts {
    /// Each of [`QUERIES`], masked, with its fingerprint.
    queries: Vec<(ArcStr, u64)>,
    databases: Vec<ArcStr>,
    users: Vec<ArcStr>,
    /// By `i` modulo their number (a multiple of both `APPS.len()` and
    /// 8): `APPS[i % APPS.len()]` and `i % 8`.
    applications: Vec<ArcStr>,
    /// Idle in the client, then the waits of an active session.
    client_read: (ArcStr, ArcStr),
    waits: [(ArcStr, ArcStr); 4],
    client_backend: ArcStr,
}

impl Texts {
    fn new() -> Texts {
        let all = |names: &[&str]| names.iter().map(|&n| ArcStr::from(n)).collect();
        let wait = |kind: &str, event: &str| (ArcStr::from(kind), ArcStr::from(event));
        Texts {
            queries: QUERIES
                .iter()
                .map(|q| {
                    let (text, fingerprint) = query_text::prepare(q, QueryText::Masked);
                    (text.into(), fingerprint)
                })
                .collect(),
            databases: all(DATABASES),
            users: all(USERS),
            applications: (0..APPS.len() * 8)
                .map(|i| ArcStr::from(format!("{}-{}", APPS[i % APPS.len()], i % 8)))
                .collect(),
            client_read: wait("Client", "ClientRead"),
            waits: [
                wait("", ""),
                wait("IO", "DataFileRead"),
                wait("Lock", "transactionid"),
                wait("LWLock", "WALWrite"),
            ],
            client_backend: ArcStr::from("client backend"),
        }
    }
}

impl Sim {
    /// The wire benchmark's server: 1,000 sessions, 100 changing a second.
    pub fn new() -> Sim {
        Sim::with(
            SESSIONS,
            CHANGED_PER_SAMPLE,
            RECONNECTS_PER_SAMPLE,
            0x9e37_79b9_7f4a_7c15,
            T0,
        )
    }

    /// `sessions` sessions, of which `changed` change each second
    /// (`reconnects` of those are new backends), connected in the day
    /// before `t0`; `seed` picks which.
    pub fn with(sessions: usize, changed: usize, reconnects: usize, seed: u64, t0: i64) -> Sim {
        let mut sim = Sim {
            rng: Rng(seed | 1),
            sessions: Vec::new(),
            next_pid: 20_000,
            changed_per_sample: changed,
            reconnects_per_sample: reconnects.min(changed),
            texts: Texts::new(),
        };
        for _ in 0..sessions {
            let started = t0 - (sim.rng.below(86_400) as i64) * SECOND;
            let s = sim.connect(started);
            sim.sessions.push(s);
        }
        sim
    }

    fn connect(&mut self, at: i64) -> Arc<Session> {
        let i = self.rng.below(1 << 20);
        self.next_pid += 1 + self.rng.below(40) as i32;
        let texts = &self.texts;
        let (text, fingerprint) = texts.queries[i % QUERIES.len()].clone();
        Arc::new(Session {
            pid: self.next_pid,
            backend_start_us: at,
            database: texts.databases[i % DATABASES.len()].clone(),
            user: texts.users[i % USERS.len()].clone(),
            application_name: texts.applications[i % texts.applications.len()].clone(),
            client: format!(
                "10.20.{}.{}:{}",
                i % 16,
                (i / 16) % 250,
                32_768 + i % 28_000
            )
            .into(),
            state: SessionState::Idle,
            xact_start_us: None,
            query_start_us: Some(at + 1_000),
            state_change_us: Some(at + 2_000),
            wait_event_type: texts.client_read.0.clone(),
            wait_event: texts.client_read.1.clone(),
            query: text,
            backend_type: texts.client_backend.clone(),
            query_id: Some(fingerprint as i64 ^ 0x5bd1_e995),
            fingerprint,
            ..Default::default()
        })
    }

    /// One second passes; about 10% of the sessions change. Returns what a
    /// sampler hands on: the sessions new or changed, and the keys of those
    /// that ended.
    pub fn step(&mut self, now: i64) -> (Vec<Arc<Session>>, Vec<SessionKey>) {
        let mut touched = Vec::with_capacity(self.changed_per_sample);
        let mut removed = Vec::new();
        for _ in 0..self.reconnects_per_sample {
            let at = now - self.rng.below(SECOND as usize) as i64;
            let i = self.rng.below(self.sessions.len());
            removed.push(self.sessions[i].key());
            self.sessions[i] = self.connect(at);
            touched.push(i);
        }
        for _ in 0..self.changed_per_sample - self.reconnects_per_sample {
            let at = now - self.rng.below(SECOND as usize) as i64;
            let i = self.rng.below(self.sessions.len());
            touched.push(i);
            let q = self.rng.below(QUERIES.len());
            let wait = self.rng.below(10);
            let texts = &self.texts;
            let s = Arc::make_mut(&mut self.sessions[i]);
            if s.state == SessionState::Active {
                s.state = SessionState::Idle;
                s.state_change_us = Some(at);
                s.xact_start_us = None;
                (s.wait_event_type, s.wait_event) = texts.client_read.clone();
            } else {
                let (text, fingerprint) = texts.queries[q].clone();
                s.state = SessionState::Active;
                s.query_start_us = Some(at);
                s.state_change_us = Some(at);
                s.xact_start_us = Some(at);
                (s.wait_event_type, s.wait_event) = texts.waits[match wait {
                    0..=5 => 0,
                    6 | 7 => 1,
                    8 => 2,
                    _ => 3,
                }]
                .clone();
                s.query = text;
                s.fingerprint = fingerprint;
                s.query_id = Some(fingerprint as i64 ^ 0x5bd1_e995);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let changed: Vec<Arc<Session>> =
            touched.iter().map(|&i| self.sessions[i].clone()).collect();
        (changed, removed)
    }

    /// The sample as the sampler hands it on: every session, plus what else
    /// a sample carries (slots, database counters, the agent's counters).
    pub fn snapshot(&self, at: i64, n: u64) -> Snapshot {
        let count = |key: &dyn Fn(&Session) -> String| {
            let mut by: std::collections::BTreeMap<String, u32> = Default::default();
            for s in &self.sessions {
                *by.entry(key(s)).or_default() += 1;
            }
            by.into_iter()
                .map(|(name, count)| v1::SlotCount { name, count })
                .collect()
        };
        Snapshot {
            status: TargetStatus::Up,
            sessions: self.sessions.clone(),
            slots: Some(v1::ConnectionSlots {
                max_connections: 1200,
                reserved: 3,
                used: self.sessions.len() as u32 + 1,
                by_state: count(&|s| s.state.as_pg().to_owned()),
                by_application: count(&|s| s.application_name.to_string()),
                by_user: count(&|s| s.user.to_string()),
                by_database: count(&|s| s.database.to_string()),
            }),
            databases: databases(n),
            agent: Some(v1::AgentCounters {
                samples_total: n,
                sample_duration_us: 700 + (n % 50) as u32,
                ..Default::default()
            }),
            ..Snapshot::down("orders-db-1".into(), at, String::new())
        }
    }
}

/// One sample's pg_stat_database increments of the simulated databases.
pub fn databases(n: u64) -> Vec<v1::DatabaseCounters> {
    DATABASES
        .iter()
        .map(|d| v1::DatabaseCounters {
            database: (*d).to_owned(),
            xact_commit: 300 + n % 17,
            xact_rollback: n % 3,
            blks_read: 40 + n % 13,
            blks_hit: 90_000 + n % 1000,
            tup_returned: 150_000 + n % 5000,
            tup_fetched: 20_000 + n % 700,
            tup_inserted: 120 + n % 9,
            tup_updated: 200 + n % 11,
            tup_deleted: n % 5,
            ..Default::default()
        })
        .collect()
}

/// Totals of one way of sending the samples.
#[derive(Default)]
pub struct Tally {
    pub raw: usize,
    pub zstd: usize,
    pub messages: usize,
}

impl Tally {
    fn add(&mut self, bytes: &[u8]) {
        self.raw += bytes.len() + FRAMING;
        self.zstd += zstd::bulk::compress(bytes, ZSTD_LEVEL).unwrap().len() + FRAMING;
        self.messages += 1;
    }
    pub fn per_session(bytes: usize, messages: usize) -> f64 {
        bytes as f64 / messages as f64 / SESSIONS as f64
    }
    pub fn raw_per(&self) -> f64 {
        Self::per_session(self.raw, self.messages)
    }
    pub fn zstd_per(&self) -> f64 {
        Self::per_session(self.zstd, self.messages)
    }
}

/// A batch as the stream sends it: the encoded message, its sequence included.
fn batch_bytes(
    seq: u64,
    snapshots: Vec<v1::Snapshot>,
    additions: Vec<v1::DictionaryEntry>,
) -> Vec<u8> {
    Outgoing::Batch {
        seq,
        body: Outgoing::batch_body(snapshots, additions),
        dictionary: Default::default(),
    }
    .encode_to_vec()
}

/// The bytes of each way of sending the samples.
#[derive(Default)]
pub struct Results {
    /// The stream after its first keyframe cycle: deltas and periodic keyframes.
    pub steady: Tally,
    /// Its messages, uncompressed.
    pub steady_messages: Vec<Vec<u8>>,
    pub deltas: Tally,
    pub keyframes: Tally,
    /// A full protobuf snapshot every sample.
    pub full: Tally,
    /// JSON of every session every sample.
    pub json: Tally,
}

/// Runs `samples` samples; the full-snapshot and JSON comparisons only when
/// `compare`.
pub fn run(samples: u64, compare: bool) -> Results {
    let mut r = Results::default();
    let mut sim = Sim::new();
    let mut stream = Encoder::default();
    for n in 1..=samples {
        let at = T0 + n as i64 * SECOND;
        sim.step(at);
        let snapshot = sim.snapshot(at, n);

        // As the agent sends it: deltas, and a keyframe every 60 samples.
        let wire = stream.encode(snapshot.clone());
        let keyframe = matches!(wire.activity, Some(v1::snapshot::Activity::Keyframe(_)));
        let bytes = batch_bytes(n, vec![wire], stream.take_dictionary_additions());
        if keyframe {
            r.keyframes.add(&bytes);
        } else {
            r.deltas.add(&bytes);
        }
        // Steady state: after the first keyframe cycle.
        if n > 60 {
            r.steady.add(&bytes);
            r.steady_messages.push(bytes);
        }

        if !compare {
            continue;
        }
        // Full protobuf snapshots: every sample a keyframe.
        let whole = v1::Snapshot::from(&snapshot);
        r.full.add(&batch_bytes(n, vec![whole], Vec::new()));

        // JSON: the sessions as the query API's JSON shows them.
        let sessions: Vec<v1::Session> = snapshot
            .sessions
            .iter()
            .map(|s| pgfleet_proto::query_session(s, at))
            .collect();
        r.json.add(&serde_json::to_vec(&sessions).unwrap());
    }
    r
}
