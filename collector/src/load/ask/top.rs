//! `TopQueries`: load by query joined with statement statistics.

use foldhash::{HashMap, HashMapExt, HashSet};

use pgfleet_proto::model::ArcStr;
use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;

use super::{Scope, Selected, whole_range};
use crate::load::hours::HourTotals;
use crate::load::statements::{Read, STATEMENTS_US, Totals};
use crate::load::{Bucket, Class, Dim, OTHER_QUERY, query_key, wait_name};
use crate::series::Matcher;

/// How many queries `TopQueries` gives by default, and at most.
const DEFAULT_QUERIES: u32 = 20;
const MAX_QUERIES: u32 = 500;

/// How `TopQueries` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Load,
    Calls,
    TotalTime,
    MeanTime,
}

/// A checked `TopQueries` request.
#[derive(Debug, Clone)]
pub struct TopPlan {
    pub scope: Scope,
    order: Order,
    limit: usize,
}

impl TopPlan {
    pub fn new(req: &v1::TopQueriesRequest, now: Micros) -> Result<TopPlan, String> {
        let scope = whole_range(
            &req.server_id,
            &req.matchers,
            req.start.as_ref(),
            req.end.as_ref(),
            now,
        )?;
        let order = match req.order_by.trim() {
            "" | "load" => Order::Load,
            "calls" => Order::Calls,
            "total_time" | "time" => Order::TotalTime,
            "mean_time" => Order::MeanTime,
            other => {
                return Err(format!(
                    "order_by {other:?} is unknown; give load, calls, total_time or mean_time"
                ));
            }
        };
        let limit = match req.limit {
            0 => DEFAULT_QUERIES,
            n if n <= MAX_QUERIES => n,
            n => return Err(format!("limit {n} is over {MAX_QUERIES}")),
        } as usize;
        Ok(TopPlan {
            scope,
            order,
            limit,
        })
    }

    /// An empty sum, to add the selected servers' buckets and statement
    /// reads to as they are read.
    pub fn sum(&self) -> TopSum {
        let query_filter = self
            .scope
            .tuples
            .iter()
            .filter(|(d, _)| *d == Dim::Query)
            .map(|(_, m)| m.clone())
            .collect();
        TopSum {
            plan: self.clone(),
            query_filter,
            servers: HashMap::new(),
            samples: Vec::new(),
            rows: HashMap::new(),
            selected: Selected::default(),
            statements: false,
        }
    }
}

/// Load by query and statement statistics added up as they are read (see
/// [`TopPlan::sum`]): per query, the counts of each server (each server's
/// share is its count over its samples, known once all are read).
#[derive(Debug)]
pub struct TopSum {
    plan: TopPlan,
    /// The query's own filters: those statement statistics can take.
    query_filter: Vec<Matcher>,
    /// Each server's place in `samples`.
    servers: HashMap<String, usize>,
    /// Per server, the samples of its buckets.
    samples: Vec<u64>,
    rows: HashMap<u64, Sums>,
    selected: Selected,
    /// Whether any statement read was added.
    statements: bool,
}

#[derive(Debug, Default)]
struct Sums {
    /// Per server, the count of the query's tuples.
    counts: HashMap<usize, u64>,
    /// Per server and wait (type, event), the count.
    waits: HashMap<(usize, ArcStr, ArcStr), u64>,
    stats: Option<Totals>,
    /// The servers its statistics came from.
    read_on: HashSet<usize>,
}

impl TopSum {
    fn server(&mut self, server_id: &str) -> usize {
        if let Some(&i) = self.servers.get(server_id) {
            return i;
        }
        self.samples.push(0);
        self.servers
            .insert(server_id.to_owned(), self.samples.len() - 1);
        self.samples.len() - 1
    }

    /// Adds a bucket of a selected server.
    pub fn add(&mut self, server_id: &str, b: &Bucket) {
        let server = self.server(server_id);
        self.samples[server] += u64::from(b.samples);
        for (t, n) in &b.tuples {
            if t.class != Class::Active
                || t.query == 0
                || !self.plan.scope.selects(t, &mut self.selected)
            {
                continue;
            }
            let row = self.rows.entry(t.query).or_default();
            *row.counts.entry(server).or_default() += u64::from(*n);
            *row.waits
                .entry((server, t.wait_type.clone(), t.wait_event.clone()))
                .or_default() += u64::from(*n);
        }
    }

    /// Adds an hour of a selected server passed over unread (its
    /// dictionaries name nothing the filters take): its samples, from its
    /// totals.
    pub fn add_passed(&mut self, server_id: &str, hour: &HourTotals) {
        let scope = &self.plan.scope;
        let samples: u64 = hour
            .minutes
            .iter()
            .filter(|m| m.start >= scope.start && m.start < scope.end)
            .map(|m| u64::from(m.samples))
            .sum();
        let server = self.server(server_id);
        self.samples[server] += samples;
    }

    /// Adds a statement read of a selected server, taken at `at`; one whose
    /// interval does not overlap the range is left out. Statistics join by
    /// fingerprint; a dimension filter other than the query's cannot apply
    /// to them, as they are summed over users and databases.
    pub fn add_read(&mut self, server_id: &str, at: Micros, read: &Read) {
        let scope = &self.plan.scope;
        if at + STATEMENTS_US <= scope.start || at >= scope.end {
            return;
        }
        self.statements = true;
        let server = self.server(server_id);
        for (f, totals) in &read.by_query {
            if *f == 0
                || !self
                    .query_filter
                    .iter()
                    .all(|m| m.matches(Some(&query_key(*f))))
            {
                continue;
            }
            let row = self.rows.entry(*f).or_default();
            row.stats.get_or_insert_with(Totals::default).add(totals);
            row.read_on.insert(server);
        }
    }

    /// The top queries; their texts are left to fill.
    pub fn answer(self) -> v1::TopQueriesResponse {
        #[derive(Default)]
        struct Row {
            load: f64,
            waits: HashMap<String, f64>,
            stats: Option<Totals>,
            servers: std::collections::BTreeSet<String>,
        }
        let mut names = vec![""; self.samples.len()];
        for (name, i) in &self.servers {
            names[*i] = name;
        }
        let of_server = |i: usize| self.samples[i].max(1) as f64;
        let mut rows: HashMap<u64, Row> = HashMap::with_capacity(self.rows.len());
        for (f, sums) in &self.rows {
            let mut row = Row {
                stats: sums.stats,
                ..Default::default()
            };
            for (&server, &n) in &sums.counts {
                row.load += n as f64 / of_server(server);
                row.servers.insert(names[server].to_owned());
            }
            for ((server, wait_type, wait_event), n) in &sums.waits {
                *row.waits
                    .entry(wait_name(wait_type, wait_event))
                    .or_default() += *n as f64 / of_server(*server);
            }
            for &server in &sums.read_on {
                row.servers.insert(names[server].to_owned());
            }
            rows.insert(*f, row);
        }
        let plan = &self.plan;
        let key = |r: &Row| -> f64 {
            let s = r.stats.unwrap_or_default();
            match plan.order {
                Order::Load => r.load,
                Order::Calls => s.calls as f64,
                Order::TotalTime => s.time_ms,
                Order::MeanTime if s.calls > 0 => s.time_ms / s.calls as f64,
                Order::MeanTime => 0.0,
            }
        };
        let mut ranked: Vec<(u64, Row)> = rows.into_iter().collect();
        ranked.sort_by(|a, b| key(&b.1).total_cmp(&key(&a.1)).then(a.0.cmp(&b.0)));
        ranked.truncate(plan.limit);
        v1::TopQueriesResponse {
            statements: self.statements,
            queries: ranked
                .into_iter()
                .map(|(f, row)| {
                    let mut waits: Vec<v1::KeyValue> = row
                        .waits
                        .into_iter()
                        .map(|(key, value)| v1::KeyValue { key, value })
                        .collect();
                    waits.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.key.cmp(&b.key)));
                    v1::TopQuery {
                        fingerprint: query_key(f),
                        text: if f == OTHER_QUERY {
                            "(the other statements)".to_owned()
                        } else {
                            String::new()
                        },
                        load: row.load,
                        waits,
                        statistics: row.stats.map(|s| s.message()),
                        servers: row.servers.into_iter().collect(),
                    }
                })
                .collect(),
        }
    }
}
