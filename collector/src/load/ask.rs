//! Answers from the buckets: `QueryLoad` (stacked series), `TopQueries`
//! (load joined with statement statistics) and `GetChurn`. Each request is
//! checked into a plan first, and a plan says which buckets it needs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pgfleet_common::settings::check_label;
use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;

use super::hours::HourTotals;
use super::statements::STATEMENTS_US;
use super::statements::{Read, Totals};
use super::{
    Bucket, COARSE_US, Class, Dim, FINE_US, MinuteLoad, OTHER_QUERY, query_key, shown, wait_name,
};
use crate::aggregator::ServerView;
use crate::series::{MAX_POINTS, Matcher, range};

/// How many series a `QueryLoad` answer holds by default, and at most.
const DEFAULT_SERIES: u32 = 20;
const MAX_SERIES: u32 = 200;

/// How many queries `TopQueries` gives by default, and at most.
const DEFAULT_QUERIES: u32 = 20;
const MAX_QUERIES: u32 = 500;

/// The steps a default step is chosen from: the first that gives at most
/// [`DEFAULT_POINTS`] points.
const STEPS_S: [i64; 12] = [
    10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400,
];
const DEFAULT_POINTS: i64 = 120;

/// What to stack by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// One series: the total.
    Total,
    Dim(Dim),
    /// The server_id.
    Server,
    /// A label's value.
    Label(String),
}

/// The servers and tuples a request selects, and the buckets it reads.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The range, its start down to the step (or the resolution).
    pub start: Micros,
    pub end: Micros,
    /// Whether it reads the fine buckets (10 s) rather than the coarse ones.
    pub fine: bool,
    /// Whether it groups by query (and so needs the queries' texts).
    pub by_query: bool,
    /// The servers (labels and server_id).
    servers: Vec<Matcher>,
    /// The tuples (dimension values).
    tuples: Vec<(Dim, Matcher)>,
}

impl Scope {
    fn new(
        server_id: &str,
        matchers: &[String],
        start: Micros,
        end: Micros,
    ) -> Result<Scope, String> {
        let mut servers = Vec::new();
        let mut tuples = Vec::new();
        for text in matchers {
            let m = Matcher::parse(text)?;
            match Dim::parse(m.name()) {
                Some(d) => tuples.push((d, m)),
                None => servers.push(m),
            }
        }
        if !server_id.is_empty() {
            servers.push(Matcher::equal("server_id", server_id));
        }
        Ok(Scope {
            start,
            end,
            fine: false,
            by_query: false,
            servers,
            tuples,
        })
    }

    /// The selected servers, by id.
    pub fn servers<'a>(
        &self,
        all: &'a BTreeMap<Arc<str>, Arc<ServerView>>,
    ) -> Vec<&'a Arc<ServerView>> {
        all.values()
            .filter(|s| {
                self.servers.iter().all(|m| {
                    let value = if m.name() == "server_id" {
                        Some(s.server_id.as_str())
                    } else {
                        s.labels.get(m.name()).map(String::as_str)
                    };
                    m.matches(value)
                })
            })
            .collect()
    }

    fn selects(&self, t: &super::Tuple) -> bool {
        self.tuples.iter().all(|(d, m)| m.matches(Some(&d.of(t))))
    }

    /// The buckets it reads from these minutes: their 10 s buckets or the
    /// minutes' own, those that start in its range.
    pub fn buckets(&self, minutes: Vec<(String, MinuteLoad)>) -> Vec<(String, Bucket)> {
        let mut out = Vec::new();
        for (server_id, m) in minutes {
            if self.fine {
                for b in m.fine {
                    if b.start >= self.start && b.start < self.end {
                        out.push((server_id.clone(), b));
                    }
                }
            } else if m.coarse.start >= self.start && m.coarse.start < self.end {
                out.push((server_id, m.coarse));
            }
        }
        out
    }
}

/// Chooses fine or coarse buckets: fine for steps that are not whole
/// minutes.
fn resolution(scope: &mut Scope, step_us: i64) -> Result<(), String> {
    if step_us < FINE_US || step_us % FINE_US != 0 {
        return Err(format!(
            "step {} is not a whole number of 10 s; load is kept per 10 s and per minute, so give 10s, 30s, 1m, 5m, …",
            humantime::format_duration(std::time::Duration::from_micros(step_us.unsigned_abs()))
        ));
    }
    scope.fine = step_us % COARSE_US != 0;
    let unit = if scope.fine { FINE_US } else { COARSE_US };
    scope.start -= scope.start.rem_euclid(unit);
    Ok(())
}

/// A checked `QueryLoad` request.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub scope: Scope,
    pub step_us: i64,
    group_by: GroupBy,
    class: Class,
    limit: usize,
}

impl LoadPlan {
    /// Checks `req` at `now`.
    pub fn new(req: &v1::QueryLoadRequest, now: Micros) -> Result<LoadPlan, String> {
        let (start, end) = range(req.start.as_ref(), req.end.as_ref(), now)?;
        let mut scope = Scope::new("", &req.matchers, start, end)?;
        let span = end - start;
        let step_us = match req.step.as_ref().map(time::duration_micros) {
            Some(step) => step,
            None => STEPS_S
                .iter()
                .map(|s| s * 1_000_000)
                .find(|s| span / s <= DEFAULT_POINTS)
                .unwrap_or(86_400_000_000),
        };
        resolution(&mut scope, step_us)?;
        let span = end - scope.start;
        let points = span / step_us + i64::from(span % step_us != 0);
        if points > MAX_POINTS {
            return Err(format!(
                "the range and step make {points} points per series; at most {MAX_POINTS} are served, so widen the step or narrow the range"
            ));
        }
        let name = req.group_by.trim();
        let group_by = if name.is_empty() {
            GroupBy::Total
        } else if let Some(d) = Dim::parse(name) {
            GroupBy::Dim(d)
        } else if name == "server" || name == "server_id" {
            GroupBy::Server
        } else {
            check_label(name, "").map_err(|e| {
                let dims: Vec<&str> = Dim::ALL.iter().map(|d| d.name()).collect();
                format!(
                    "group_by {name:?} is not a dimension ({}), \"server\" or a label name: {e}",
                    dims.join(", ")
                )
            })?;
            GroupBy::Label(name.to_owned())
        };
        scope.by_query = group_by == GroupBy::Dim(Dim::Query);
        let class = match v1::LoadSessions::try_from(req.sessions) {
            Ok(v1::LoadSessions::Active) => Class::Active,
            Ok(v1::LoadSessions::IdleInTransaction) => Class::IdleInTransaction,
            Ok(v1::LoadSessions::Background) => Class::Background,
            Err(_) => {
                return Err(format!(
                    "sessions {} is unknown; give active, idle_in_transaction or background",
                    req.sessions
                ));
            }
        };
        let limit = match req.limit {
            0 => DEFAULT_SERIES,
            n if n <= MAX_SERIES => n,
            n => {
                return Err(format!(
                    "limit {n} is over {MAX_SERIES}; the rest of the keys are summed into \"other\""
                ));
            }
        } as usize;
        Ok(LoadPlan {
            scope,
            step_us,
            group_by,
            class,
            limit,
        })
    }

    /// Refuses a label to group by that none of `servers` carries (most
    /// likely a misspelt dimension or label).
    pub fn check_group(&self, servers: &[&Arc<ServerView>]) -> Result<(), String> {
        let GroupBy::Label(name) = &self.group_by else {
            return Ok(());
        };
        if servers.is_empty() || servers.iter().any(|s| s.labels.contains_key(name)) {
            return Ok(());
        }
        let mut labels: Vec<&str> = servers
            .iter()
            .flat_map(|s| s.labels.keys().map(String::as_str))
            .collect();
        labels.sort_unstable();
        labels.dedup();
        let dims: Vec<&str> = Dim::ALL.iter().map(|d| d.name()).collect();
        Err(format!(
            "group_by {name:?} is not a dimension ({}), \"server\", or a label of the selected servers ({})",
            dims.join(", "),
            if labels.is_empty() {
                "they have none".to_owned()
            } else {
                labels.join(", ")
            }
        ))
    }

    /// The series, from `buckets` (of the selected servers, as
    /// [`Scope::buckets`] gave them); queries' texts are left to fill.
    pub fn evaluate(
        &self,
        servers: &[&Arc<ServerView>],
        buckets: &[(String, Bucket)],
    ) -> v1::QueryLoadResponse {
        let scope = &self.scope;
        let steps = ((scope.end - scope.start + self.step_us - 1) / self.step_us) as usize;
        let by_id: HashMap<&str, &ServerView> = servers
            .iter()
            .map(|s| (s.server_id.as_str(), &***s))
            .collect();
        // Per server and step: the samples and the counts per key.
        #[derive(Default)]
        struct Cell {
            samples: u64,
            counts: HashMap<String, u64>,
        }
        let mut cells: HashMap<(&str, usize), Cell> = HashMap::new();
        let mut covered = vec![0i64; steps];
        for (server_id, b) in buckets {
            let Some(server) = by_id.get(server_id.as_str()) else {
                continue;
            };
            let step = ((b.start - scope.start) / self.step_us) as usize;
            if step >= steps {
                continue;
            }
            covered[step] += b.covered_us;
            let cell = cells.entry((server_id, step)).or_default();
            cell.samples += u64::from(b.samples);
            for (t, n) in &b.tuples {
                if t.class != self.class || !scope.selects(t) {
                    continue;
                }
                let key = match &self.group_by {
                    GroupBy::Total => String::new(),
                    GroupBy::Dim(d) => d.of(t),
                    GroupBy::Server => server_id.clone(),
                    GroupBy::Label(l) => server.labels.get(l).cloned().unwrap_or_default(),
                };
                *cell.counts.entry(key).or_default() += u64::from(*n);
            }
        }
        let mut series: HashMap<String, Vec<f64>> = HashMap::new();
        for ((_, step), cell) in &cells {
            for (key, n) in &cell.counts {
                series
                    .entry(key.clone())
                    .or_insert_with(|| vec![0.0; steps])[*step] +=
                    *n as f64 / cell.samples.max(1) as f64;
            }
        }
        self.assemble(series, covered, servers.len())
    }

    /// Whether the hours' totals answer it: a total, by server or by label,
    /// of whole minutes, selecting no dimension.
    pub fn totals_only(&self) -> bool {
        !self.scope.fine
            && self.scope.tuples.is_empty()
            && matches!(
                self.group_by,
                GroupBy::Total | GroupBy::Server | GroupBy::Label(_)
            )
    }

    /// The series from hours of totals (when [`LoadPlan::totals_only`]).
    pub fn evaluate_totals(
        &self,
        servers: &[&Arc<ServerView>],
        hours: &[(String, HourTotals)],
    ) -> v1::QueryLoadResponse {
        let scope = &self.scope;
        let steps = ((scope.end - scope.start + self.step_us - 1) / self.step_us) as usize;
        // Per server and step: the samples and the count, in one table.
        let index: HashMap<&str, usize> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.server_id.as_str(), i))
            .collect();
        let mut cells = vec![(0u64, 0u64); servers.len() * steps];
        let mut covered = vec![0i64; steps];
        for (server_id, h) in hours {
            let Some(&i) = index.get(server_id.as_str()) else {
                continue;
            };
            for m in &h.minutes {
                if m.start < scope.start || m.start >= scope.end {
                    continue;
                }
                let step = ((m.start - scope.start) / self.step_us) as usize;
                covered[step] += m.covered_us;
                let cell = &mut cells[i * steps + step];
                cell.0 += u64::from(m.samples);
                cell.1 += m.count(self.class);
            }
        }
        let mut series: HashMap<String, Vec<f64>> = HashMap::new();
        for (i, server) in servers.iter().enumerate() {
            let key = match &self.group_by {
                GroupBy::Server => server.server_id.clone(),
                GroupBy::Label(l) => server.labels.get(l).cloned().unwrap_or_default(),
                _ => String::new(),
            };
            let row = &cells[i * steps..(i + 1) * steps];
            if row.iter().all(|(samples, _)| *samples == 0) {
                continue;
            }
            let values = series.entry(key).or_insert_with(|| vec![0.0; steps]);
            for (v, (samples, n)) in values.iter_mut().zip(row) {
                if *samples > 0 {
                    *v += *n as f64 / *samples as f64;
                }
            }
        }
        self.assemble(series, covered, servers.len())
    }

    /// The answer: the series ranked (the rest as "other"), with the
    /// coverage of each step.
    fn assemble(
        &self,
        series: HashMap<String, Vec<f64>>,
        covered: Vec<i64>,
        servers: usize,
    ) -> v1::QueryLoadResponse {
        let scope = &self.scope;
        let steps = covered.len();
        let mut ranked: Vec<(String, Vec<f64>)> = series.into_iter().collect();
        let total = |v: &Vec<f64>| v.iter().sum::<f64>();
        ranked.sort_by(|a, b| total(&b.1).total_cmp(&total(&a.1)).then(a.0.cmp(&b.0)));
        if ranked.len() > self.limit {
            let rest = ranked.split_off(self.limit.saturating_sub(1));
            let mut other = vec![0.0; steps];
            for (_, v) in rest {
                for (o, x) in other.iter_mut().zip(v) {
                    *o += x;
                }
            }
            ranked.push(("other".to_owned(), other));
        }
        let at = |step: usize| Some(time::timestamp(scope.start + step as i64 * self.step_us));
        let expected = self.step_us as f64 * servers.max(1) as f64;
        v1::QueryLoadResponse {
            step: Some(time::duration(self.step_us)),
            series: ranked
                .into_iter()
                .map(|(key, values)| v1::LoadSeries {
                    text: String::new(),
                    key,
                    average: values.iter().sum::<f64>() / steps.max(1) as f64,
                    points: values
                        .into_iter()
                        .enumerate()
                        .map(|(i, value)| v1::MetricPoint { at: at(i), value })
                        .collect(),
                })
                .collect(),
            coverage: covered
                .iter()
                .enumerate()
                .map(|(i, c)| v1::MetricPoint {
                    at: at(i),
                    value: (*c as f64 / expected).min(1.0),
                })
                .collect(),
            servers: servers as u32,
        }
    }
}

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

/// A range read whole (`TopQueries`, `GetChurn`), by minute.
fn whole_range(
    server_id: &str,
    matchers: &[String],
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
    now: Micros,
) -> Result<Scope, String> {
    let (start, end) = range(start, end, now)?;
    let mut scope = Scope::new(server_id, matchers, start, end)?;
    resolution(&mut scope, COARSE_US)?;
    Ok(scope)
}

/// A checked `GetChurn` request.
#[derive(Debug, Clone)]
pub struct ChurnPlan {
    pub scope: Scope,
}

impl ChurnPlan {
    pub fn new(req: &v1::GetChurnRequest, now: Micros) -> Result<ChurnPlan, String> {
        let scope = whole_range(
            &req.server_id,
            &req.matchers,
            req.start.as_ref(),
            req.end.as_ref(),
            now,
        )?;
        if let Some((d, _)) = scope
            .tuples
            .iter()
            .find(|(d, _)| !matches!(d, Dim::User | Dim::Application | Dim::Client))
        {
            return Err(format!(
                "churn is kept by application, user and client; {} cannot select it",
                d.name()
            ));
        }
        Ok(ChurnPlan { scope })
    }

    pub fn evaluate(&self, buckets: &[(String, Bucket)]) -> v1::GetChurnResponse {
        let mut churn = super::Churn::default();
        let mut covered: HashMap<&str, i64> = HashMap::new();
        for (server_id, b) in buckets {
            *covered.entry(server_id).or_default() += b.covered_us;
            churn.absorb(&b.churn);
        }
        let keep = |k: &super::churn::ChurnKey| {
            self.scope.tuples.iter().all(|(d, m)| {
                let value = match d {
                    Dim::User => &k.user,
                    Dim::Application => &k.application,
                    _ => &k.client,
                };
                m.matches(Some(shown(value)))
            })
        };
        churn.bound();
        // Each database's established sessions shared out over its rows in
        // proportion to the starts the samples saw; what no sample saw, when
        // no filter narrows the rows, is a row of its own.
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for (k, c) in &churn.rows {
            *seen.entry(&k.database).or_default() += u64::from(c.started);
        }
        let mut factor: HashMap<String, f64> = HashMap::new();
        let mut unseen: Vec<(String, u64)> = Vec::new();
        for (database, n) in &churn.established {
            let saw = seen.get(&**database).copied().unwrap_or(0);
            let n = u64::from(*n);
            if saw > 0 && n > saw {
                factor.insert(database.to_string(), n as f64 / saw as f64);
            } else if saw == 0 && n > 0 && self.scope.tuples.is_empty() {
                unseen.push((database.to_string(), n));
            }
        }
        churn.rows.retain(|(k, _)| keep(k));
        // A server's rate is over the seconds it was sampled; the fleet's
        // over their mean.
        let seconds = if covered.is_empty() {
            0.0
        } else {
            covered.values().sum::<i64>() as f64 / 1e6 / covered.len() as f64
        };
        let rate = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let scaled = |n: u32, database: &str| -> u64 {
            (f64::from(n) * factor.get(database).copied().unwrap_or(1.0)).round() as u64
        };
        let mut rows: Vec<v1::ChurnRow> = churn
            .rows
            .iter()
            .map(|(k, c)| {
                let (started, ended) =
                    (scaled(c.started, &k.database), scaled(c.ended, &k.database));
                v1::ChurnRow {
                    database: shown(&k.database).to_owned(),
                    application: shown(&k.application).to_owned(),
                    user: shown(&k.user).to_owned(),
                    client: shown(&k.client).to_owned(),
                    started,
                    ended,
                    started_per_second: rate(started),
                    ended_per_second: rate(ended),
                    lifetime_mean: if c.ended > 0 {
                        c.lifetime_us as f64 / 1e6 / f64::from(c.ended)
                    } else {
                        0.0
                    },
                    seen_started: u64::from(c.started),
                    seen_ended: u64::from(c.ended),
                }
            })
            .collect();
        for (database, n) in unseen {
            rows.push(v1::ChurnRow {
                database,
                application: "(between samples)".to_owned(),
                started: n,
                ended: n,
                started_per_second: rate(n),
                ended_per_second: rate(n),
                ..Default::default()
            });
        }
        rows.sort_by(|a, b| {
            (b.started + b.ended)
                .cmp(&(a.started + a.ended))
                .then(a.application.cmp(&b.application))
        });
        v1::GetChurnResponse {
            rows,
            seconds,
            lifetime_p50: churn.lifetime_quantile(0.5),
            lifetime_p90: churn.lifetime_quantile(0.9),
            lifetime_p99: churn.lifetime_quantile(0.99),
            lifetime_max: churn.lifetime_max_us as f64 / 1e6,
        }
    }
}
