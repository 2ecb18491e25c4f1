//! `TopQueries`: load by query joined with statement statistics.

use std::collections::HashMap;

use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;

use super::{Scope, whole_range};
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

    /// The top queries from the buckets and statement reads of the selected
    /// servers; their texts are left to fill.
    pub fn evaluate(
        &self,
        buckets: &[(String, Bucket)],
        reads: &[(String, Micros, Read)],
    ) -> v1::TopQueriesResponse {
        #[derive(Default)]
        struct Row {
            load: f64,
            waits: HashMap<String, f64>,
            stats: Option<Totals>,
            servers: std::collections::BTreeSet<String>,
        }
        let mut samples: HashMap<&str, u64> = HashMap::new();
        for (server_id, b) in buckets {
            *samples.entry(server_id).or_default() += u64::from(b.samples);
        }
        let mut rows: HashMap<u64, Row> = HashMap::new();
        for (server_id, b) in buckets {
            let of_server = samples[server_id.as_str()].max(1) as f64;
            for (t, n) in &b.tuples {
                if t.class != Class::Active || t.query == 0 || !self.scope.selects(t) {
                    continue;
                }
                let row = rows.entry(t.query).or_default();
                let share = f64::from(*n) / of_server;
                row.load += share;
                *row.waits
                    .entry(wait_name(&t.wait_type, &t.wait_event))
                    .or_default() += share;
                row.servers.insert(server_id.clone());
            }
        }
        // Statistics join by fingerprint; a dimension filter other than the
        // query's cannot apply to them, as they are summed over users and
        // databases.
        let query_filter: Vec<&Matcher> = self
            .scope
            .tuples
            .iter()
            .filter(|(d, _)| *d == Dim::Query)
            .map(|(_, m)| m)
            .collect();
        for (server_id, at, read) in reads {
            // Intervals of statements that overlap the range.
            if *at + STATEMENTS_US <= self.scope.start || *at >= self.scope.end {
                continue;
            }
            for (f, totals) in &read.by_query {
                if *f == 0 || !query_filter.iter().all(|m| m.matches(Some(&query_key(*f)))) {
                    continue;
                }
                let row = rows.entry(*f).or_default();
                row.stats.get_or_insert_with(Totals::default).add(totals);
                row.servers.insert(server_id.clone());
            }
        }
        let key = |r: &Row| -> f64 {
            let s = r.stats.unwrap_or_default();
            match self.order {
                Order::Load => r.load,
                Order::Calls => s.calls as f64,
                Order::TotalTime => s.time_ms,
                Order::MeanTime if s.calls > 0 => s.time_ms / s.calls as f64,
                Order::MeanTime => 0.0,
            }
        };
        let mut ranked: Vec<(u64, Row)> = rows.into_iter().collect();
        ranked.sort_by(|a, b| key(&b.1).total_cmp(&key(&a.1)).then(a.0.cmp(&b.0)));
        ranked.truncate(self.limit);
        v1::TopQueriesResponse {
            statements: !reads.is_empty(),
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
