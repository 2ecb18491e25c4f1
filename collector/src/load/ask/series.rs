//! `QueryLoad`: stacked series of load, from buckets or from hours of totals.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use pgfleet_common::settings::check_label;
use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;

use super::{Scope, Selected, resolution};
use crate::aggregator::ServerView;
use crate::load::hours::{HOUR_US, HourTotals, MinuteTotals};
use crate::load::{Bucket, COARSE_US, Class, Dim, DimValue};
use crate::series::{MAX_POINTS, range};

/// How many series a `QueryLoad` answer holds by default, and at most.
const DEFAULT_SERIES: u32 = 20;
const MAX_SERIES: u32 = 200;

/// The most points one answer holds, series and coverage together: about
/// 8 MB, half the largest message.
const MAX_ANSWER_POINTS: i64 = 330_000;

/// The steps a default step is chosen from: the first that gives at most
/// [`DEFAULT_POINTS`] points.
const STEPS_S: [i64; 12] = [
    10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400,
];
const DEFAULT_POINTS: i64 = 120;

/// With no step asked, a question that reads tuples (by a dimension, or
/// filtered by one) over more server-minutes than this takes steps of an
/// hour where they give at least [`HOURLY_POINTS`] (a range of a day or
/// more): a minute read one by one costs some 25-30 µs here, so this is
/// about 5 s, and whole hours are read as one row each (a fleet's day of
/// 1,000 servers by wait took 42.9 s at the 30 minutes the points alone
/// would pick, 5.2 s by the hour; BENCHMARKS.md, "DB load over a fleet's
/// day"). A server's own day still has its 30-minute steps.
const MINUTES_READ: i64 = 200_000;
const HOURLY_POINTS: i64 = 24;

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

/// A checked `QueryLoad` request.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub scope: Scope,
    pub step_us: i64,
    group_by: GroupBy,
    class: Class,
    limit: usize,
}

/// Hours of totals added up per server and step as they are read, so that
/// a fleet's day is never held whole: a thousand servers' day is 24,000
/// hours of sixty minutes each.
#[derive(Debug)]
pub struct TotalsSum {
    start: Micros,
    end: Micros,
    step_us: i64,
    class: Class,
    /// Each server's row in `cells`.
    index: HashMap<String, usize>,
    /// Per server, the hours its counter gave whole: stored copies of them
    /// are older, and skipped.
    open: Vec<Vec<Micros>>,
    /// Per server and step: the samples and the count.
    cells: Vec<(u64, u64)>,
    /// Per step: the microseconds covered, over all servers.
    covered: Vec<i64>,
}

impl TotalsSum {
    /// Adds an hour that a server's counter holds open: it replaces the
    /// stored copy, so open hours are added before stored ones.
    pub fn add_open(&mut self, server_id: &str, hour: &HourTotals) {
        if let Some(&i) = self.index.get(server_id) {
            if self.open[i].contains(&hour.start) {
                return;
            }
            self.open[i].push(hour.start);
            self.add_minutes(i, &hour.minutes);
        }
    }

    /// Adds a stored hour, unless its server's counter gave it open.
    pub fn add_stored(&mut self, server_id: &str, hour: &HourTotals) {
        if let Some(&i) = self.index.get(server_id)
            && !self.open[i].contains(&hour.start)
        {
            self.add_minutes(i, &hour.minutes);
        }
    }

    fn add_minutes(&mut self, server: usize, minutes: &[MinuteTotals]) {
        let steps = self.covered.len();
        for m in minutes {
            if m.start < self.start || m.start >= self.end {
                continue;
            }
            let step = ((m.start - self.start) / self.step_us) as usize;
            self.covered[step] += m.covered_us;
            let cell = &mut self.cells[server * steps + step];
            cell.0 += u64::from(m.samples);
            cell.1 += m.count(self.class);
        }
    }
}

/// Buckets added up per server and step as they are read (see
/// [`LoadPlan::sum`]): what a fleet's day by a dimension keeps is a count
/// per key, server and step, never its minutes. Keys are named once each.
#[derive(Debug)]
pub struct LoadSum {
    plan: LoadPlan,
    /// Each server's place in `by_server`.
    index: HashMap<String, usize>,
    /// Per server, its key when grouped by server or label.
    by_server: Vec<u32>,
    /// The keys seen, by value of the dimension grouped by, and by name.
    ids: HashMap<DimValue, u32>,
    names: Vec<String>,
    selected: Selected,
    /// Per server and step: the samples and the counts per key.
    cells: HashMap<(usize, usize), Cell>,
    /// Per step: the microseconds covered, over all servers.
    covered: Vec<i64>,
}

#[derive(Debug, Default)]
struct Cell {
    samples: u64,
    counts: HashMap<u32, u64>,
}

impl LoadSum {
    /// Adds a bucket of `server_id` (one of the plan's servers; others are
    /// left out).
    pub fn add(&mut self, server_id: &str, b: &Bucket) {
        let Some(&server) = self.index.get(server_id) else {
            return;
        };
        let plan = &self.plan;
        let step = ((b.start - plan.scope.start) / plan.step_us) as usize;
        if b.start < plan.scope.start || step >= self.covered.len() {
            return;
        }
        self.covered[step] += b.covered_us;
        let cell = self.cells.entry((server, step)).or_default();
        cell.samples += u64::from(b.samples);
        for (t, n) in &b.tuples {
            if t.class != plan.class || !plan.scope.selects(t, &mut self.selected) {
                continue;
            }
            let key = match &plan.group_by {
                GroupBy::Dim(d) => {
                    let names = &mut self.names;
                    *self.ids.entry(d.value(t)).or_insert_with_key(|v| {
                        names.push(v.name());
                        names.len() as u32 - 1
                    })
                }
                _ => self.by_server[server],
            };
            *cell.counts.entry(key).or_default() += u64::from(*n);
        }
    }

    /// Adds an hour of `server_id` passed over unread (its dictionaries name
    /// nothing the filters take): its minutes' samples and coverage, from
    /// its totals, and no load.
    pub fn add_passed(&mut self, server_id: &str, hour: &HourTotals) {
        let Some(&server) = self.index.get(server_id) else {
            return;
        };
        let plan = &self.plan;
        for m in &hour.minutes {
            let step = ((m.start - plan.scope.start) / plan.step_us) as usize;
            if m.start < plan.scope.start || m.start >= plan.scope.end || step >= self.covered.len()
            {
                continue;
            }
            self.covered[step] += m.covered_us;
            self.cells.entry((server, step)).or_default().samples += u64::from(m.samples);
        }
    }

    /// The series; queries' texts are left to fill.
    pub fn answer(self) -> v1::QueryLoadResponse {
        let steps = self.covered.len();
        let mut by_id: Vec<Option<Vec<f64>>> = vec![None; self.names.len()];
        for ((_, step), cell) in self.cells {
            for (key, n) in cell.counts {
                by_id[key as usize].get_or_insert_with(|| vec![0.0; steps])[step] +=
                    n as f64 / cell.samples.max(1) as f64;
            }
        }
        // Two values can have one name (the waits beyond the top ones, of
        // any event; a value "other" and the sentinel): their series are one.
        let mut series: HashMap<String, Vec<f64>> = HashMap::new();
        for (name, values) in self.names.into_iter().zip(by_id) {
            let Some(values) = values else { continue };
            match series.get_mut(&name) {
                Some(sum) => sum.iter_mut().zip(values).for_each(|(s, v)| *s += v),
                None => {
                    series.insert(name, values);
                }
            }
        }
        self.plan
            .assemble(series, self.covered, self.by_server.len())
    }
}

/// Whether a question selects or groups by a dimension, which only the
/// tuples of load answer (totals answer the rest).
fn by_dimension(scope: &Scope, group_by: &GroupBy) -> bool {
    !scope.tuples.is_empty() || matches!(group_by, GroupBy::Dim(_))
}

impl LoadPlan {
    /// Checks `req` at `now`, of one server (see [`LoadPlan::over`]).
    pub fn new(req: &v1::QueryLoadRequest, now: Micros) -> Result<LoadPlan, String> {
        Self::over(req, now, 1)
    }

    /// Checks `req` at `now`, of `servers` servers selected: with no step
    /// asked, the one that gives about [`DEFAULT_POINTS`] points, or whole
    /// hours where reading minutes would take long (see [`MINUTES_READ`]).
    pub fn over(
        req: &v1::QueryLoadRequest,
        now: Micros,
        servers: usize,
    ) -> Result<LoadPlan, String> {
        let (start, end) = range(req.start.as_ref(), req.end.as_ref(), now)?;
        let mut scope = Scope::new("", &req.matchers, start, end)?;
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
        let span = end - start;
        let step_us = match req.step.as_ref().map(time::duration_micros) {
            Some(step) => step,
            None => {
                let step = STEPS_S
                    .iter()
                    .map(|s| s * 1_000_000)
                    .find(|s| span / s <= DEFAULT_POINTS)
                    .unwrap_or(86_400_000_000);
                let minutes = (servers as i64).saturating_mul(span / COARSE_US);
                match step % HOUR_US != 0
                    && by_dimension(&scope, &group_by)
                    && minutes > MINUTES_READ
                    && span / HOUR_US >= HOURLY_POINTS
                {
                    true => HOUR_US,
                    false => step,
                }
            }
        };
        resolution(&mut scope, step_us)?;
        let span = end - scope.start;
        let points = span / step_us + i64::from(span % step_us != 0);
        if points > MAX_POINTS {
            return Err(format!(
                "the range and step make {points} points per series; at most {MAX_POINTS} are served, so widen the step or narrow the range"
            ));
        }
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
        // Every series has a point per step, and so does the coverage.
        let answer = points.saturating_mul(limit as i64 + 1);
        if answer > MAX_ANSWER_POINTS {
            return Err(format!(
                "{limit} series and the coverage of {points} steps make {answer} points; at most {MAX_ANSWER_POINTS} are served in one answer, so lower the limit, widen the step or narrow the range"
            ));
        }
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

    /// An empty sum of the buckets of `servers`, to add buckets to as they
    /// are read.
    pub fn sum(&self, servers: &[&Arc<ServerView>]) -> LoadSum {
        let scope = &self.scope;
        let steps = ((scope.end - scope.start + self.step_us - 1) / self.step_us) as usize;
        let mut sum = LoadSum {
            plan: self.clone(),
            index: servers
                .iter()
                .enumerate()
                .map(|(i, s)| (s.server_id.clone(), i))
                .collect(),
            by_server: Vec::with_capacity(servers.len()),
            ids: HashMap::new(),
            names: Vec::new(),
            selected: Selected::default(),
            cells: HashMap::new(),
            covered: vec![0; steps],
        };
        // Grouped by server or label, each server's key, named once.
        let mut named: HashMap<String, u32> = HashMap::new();
        for s in servers {
            let name = match &self.group_by {
                GroupBy::Server => s.server_id.clone(),
                GroupBy::Label(l) => s.labels.get(l).cloned().unwrap_or_default(),
                _ => String::new(),
            };
            let names = &mut sum.names;
            let id = *named.entry(name).or_insert_with_key(|name| {
                names.push(name.clone());
                names.len() as u32 - 1
            });
            sum.by_server.push(id);
        }
        sum
    }

    /// Whether each step holds whole hours, so that a store may hand a
    /// server's hour as one bucket.
    pub fn hourly(&self) -> bool {
        !self.scope.fine && self.step_us % HOUR_US == 0 && self.scope.start.rem_euclid(HOUR_US) == 0
    }

    /// Whether the hours' totals answer it: a total, by server or by label,
    /// of whole minutes, selecting no dimension.
    pub fn totals_only(&self) -> bool {
        !self.scope.fine && !by_dimension(&self.scope, &self.group_by)
    }

    /// An empty sum of hours of totals of `servers` (when
    /// [`LoadPlan::totals_only`]), to add hours to as they are read.
    pub fn totals_sum(&self, servers: &[&Arc<ServerView>]) -> TotalsSum {
        let scope = &self.scope;
        let steps = ((scope.end - scope.start + self.step_us - 1) / self.step_us) as usize;
        TotalsSum {
            start: scope.start,
            end: scope.end,
            step_us: self.step_us,
            class: self.class,
            index: servers
                .iter()
                .enumerate()
                .map(|(i, s)| (s.server_id.clone(), i))
                .collect(),
            open: vec![Vec::new(); servers.len()],
            cells: vec![(0, 0); servers.len() * steps],
            covered: vec![0; steps],
        }
    }

    /// The series from a sum of hours of totals of `servers` (the same
    /// servers, in the same order, as [`LoadPlan::totals_sum`] was given).
    pub fn totals_answer(
        &self,
        servers: &[&Arc<ServerView>],
        sum: TotalsSum,
    ) -> v1::QueryLoadResponse {
        let steps = sum.covered.len();
        let mut series: HashMap<String, Vec<f64>> = HashMap::new();
        for (i, server) in servers.iter().enumerate() {
            let key = match &self.group_by {
                GroupBy::Server => server.server_id.clone(),
                GroupBy::Label(l) => server.labels.get(l).cloned().unwrap_or_default(),
                _ => String::new(),
            };
            let row = &sum.cells[i * steps..(i + 1) * steps];
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
        self.assemble(series, sum.covered, servers.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::hours::HOUR_US;

    fn request(hours: i64, step_s: i64, limit: u32, group_by: &str) -> v1::QueryLoadRequest {
        let now = 1_800_000_000_000_000;
        v1::QueryLoadRequest {
            start: Some(time::timestamp(now - hours * 3_600_000_000)),
            end: Some(time::timestamp(now)),
            step: (step_s > 0).then(|| time::duration(step_s * 1_000_000)),
            group_by: group_by.into(),
            limit,
            ..Default::default()
        }
    }

    #[test]
    fn plans_pick_a_step_and_refuse_what_they_cannot_serve() {
        let now = 1_800_000_000_000_000;
        let plan = LoadPlan::new(&request(1, 0, 0, "wait"), now).unwrap();
        assert_eq!(plan.step_us, 30_000_000, "an hour in about 120 points");
        assert!(plan.scope.fine && !plan.totals_only());
        let plan = LoadPlan::new(&request(24, 0, 0, "dc"), now).unwrap();
        assert_eq!(plan.step_us, 1_800_000_000);
        assert!(plan.totals_only(), "by a label over whole minutes");
        // A day by a dimension: 30 minutes of one server or a few, whole
        // hours of a fleet, whose minutes would take long to read one by
        // one; not for totals (read from hours of totals at any step), not
        // under a day (too few points), and never for a step asked.
        let day = request(24, 0, 0, "wait");
        for (servers, step) in [(1, 1_800), (138, 1_800), (139, 3_600), (1_000, 3_600)] {
            let plan = LoadPlan::over(&day, now, servers).unwrap();
            assert_eq!(plan.step_us, step * 1_000_000, "{servers} servers");
            assert_eq!(plan.hourly(), step == 3_600, "{servers} servers");
        }
        let mut filtered = request(24, 0, 0, "dc");
        filtered.matchers = vec![r#"user="app""#.into()];
        assert_eq!(
            LoadPlan::over(&filtered, now, 1_000).unwrap().step_us,
            HOUR_US
        );
        assert_eq!(
            LoadPlan::over(&request(24, 0, 0, "dc"), now, 1_000)
                .unwrap()
                .step_us,
            1_800_000_000
        );
        assert_eq!(
            LoadPlan::over(&request(23, 0, 0, "wait"), now, 1_000)
                .unwrap()
                .step_us,
            1_800_000_000
        );
        assert_eq!(
            LoadPlan::over(&request(24, 1_800, 0, "wait"), now, 1_000)
                .unwrap()
                .step_us,
            1_800_000_000
        );
        for (req, says) in [
            (request(1, 5, 0, ""), "whole number of 10 s"),
            (request(1, 15, 0, ""), "whole number of 10 s"),
            (request(24 * 30, 60, 0, ""), "at most 11000"),
            (request(24 * 7, 60, 200, ""), "in one answer"),
            (request(1, 60, 201, ""), "over 200"),
            (request(1, 60, 0, "1x"), "not a dimension"),
        ] {
            let e = LoadPlan::new(&req, now).unwrap_err();
            assert!(e.contains(says), "{req:?}: {e}");
        }
    }

    #[test]
    fn buckets_add_up_per_server_and_step_each_key_named_once() {
        use crate::load::tests::tuple;
        use crate::load::{COARSE_US, OTHER, Tuple};
        let now = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        let mut req = request(0, 60, 0, "wait");
        req.start = Some(time::timestamp(now - 2 * COARSE_US));
        // Two filters, the one's value (database "orders") the other's
        // too (a user "orders", left out): each remembers its own answers.
        req.matchers = vec!["user=\"app\"".into(), "database=\"orders\"".into()];
        let plan = LoadPlan::new(&req, now).unwrap();
        let view = |id: &str| Arc::new(ServerView::new(id, std::time::Duration::from_secs(1)));
        let (a, b) = (view("a"), view("b"));
        let mut sum = plan.sum(&[&a, &b]);
        let bucket = |start: Micros, samples: u32, tuples: Vec<(Tuple, u32)>| {
            let mut b = Bucket::holding(start, COARSE_US);
            b.samples = samples;
            b.covered_us = i64::from(samples) * 1_000_000;
            b.tuples = tuples;
            b
        };
        let first = now - 2 * COARSE_US;
        // a: 60 samples of its first minute; two waits beyond the top ones
        // (one name, "other"), and a user the filter leaves out.
        sum.add(
            "a",
            &bucket(
                first,
                60,
                vec![
                    (tuple("app", 1, ("Lock", "transactionid")), 30),
                    (tuple("app", 1, ("CPU", "")), 60),
                    (tuple("orders", 2, ("CPU", "")), 600),
                    (tuple("app", 3, (OTHER, "x")), 6),
                    (tuple("app", 3, (OTHER, "y")), 6),
                ],
            ),
        );
        // b: half the samples, in two buckets of the same step; and a
        // server not asked for.
        for _ in 0..2 {
            sum.add(
                "b",
                &bucket(first, 15, vec![(tuple("app", 1, ("CPU", "")), 15)]),
            );
        }
        sum.add(
            "c",
            &bucket(first, 60, vec![(tuple("app", 1, ("CPU", "")), 600)]),
        );
        sum.add(
            "a",
            &bucket(
                first + COARSE_US,
                60,
                vec![(tuple("app", 1, ("CPU", "")), 30)],
            ),
        );
        let r = sum.answer();
        let series: HashMap<&str, Vec<f64>> = r
            .series
            .iter()
            .map(|s| (s.key.as_str(), s.points.iter().map(|p| p.value).collect()))
            .collect();
        assert_eq!(series.len(), 3, "{series:?}");
        assert_eq!(series["CPU"], [2.0, 0.5], "a's 1 and b's 1, then a's 0.5");
        assert_eq!(series["Lock:transactionid"], [0.5, 0.0]);
        assert_eq!(series["other"], [0.2, 0.0], "two waits, one name");
        assert_eq!(r.servers, 2);
        assert_eq!(r.coverage[0].value, 0.75, "a whole minute and half of one");
    }

    #[test]
    fn sums_of_hours_take_open_hours_over_stored_ones_and_only_the_range() {
        let now = 1_800_000_000_000_000;
        let plan = LoadPlan::new(&request(2, 1800, 0, "dc"), now).unwrap();
        assert!(plan.totals_only());
        let view = |id: &str, dc: &str| {
            let mut v = ServerView::new(id, std::time::Duration::from_secs(1));
            v.labels = Arc::new([("dc".to_owned(), dc.to_owned())].into());
            Arc::new(v)
        };
        let (a, b, c) = (view("a", "x"), view("b", "y"), view("c", "x"));
        let servers = [&a, &b, &c];
        // An hour of `minutes` minutes from `first`, each of 60 samples that
        // count `load` a sample.
        let hour = |start: Micros, first: i64, minutes: i64, load: u64| {
            let mut h = HourTotals::holding(start);
            for i in first..first + minutes {
                h.set(MinuteTotals {
                    start: start + i * 60_000_000,
                    samples: 60,
                    covered_us: 60_000_000,
                    counts: [load * 60, 0, 0],
                });
            }
            h
        };
        let (h0, h1, before) = (now - 2 * HOUR_US, now - HOUR_US, now - 3 * HOUR_US);
        let mut sum = plan.totals_sum(&servers);
        sum.add_open("a", &hour(h1, 0, 60, 3));
        sum.add_stored("a", &hour(h0, 0, 60, 2));
        sum.add_stored("a", &hour(h1, 0, 60, 1));
        sum.add_stored("a", &hour(before, 0, 60, 7));
        sum.add_stored("b", &hour(h0, 30, 1, 5));
        sum.add_stored("z", &hour(h0, 0, 60, 9));
        let answer = plan.totals_answer(&servers, sum);
        let series: HashMap<&str, Vec<f64>> = answer
            .series
            .iter()
            .map(|s| (s.key.as_str(), s.points.iter().map(|p| p.value).collect()))
            .collect();
        assert_eq!(series.len(), 2, "{series:?}");
        assert_eq!(
            series["x"],
            [2.0, 2.0, 3.0, 3.0],
            "the open hour, not the stored"
        );
        assert_eq!(series["y"], [0.0, 5.0, 0.0, 0.0]);
        assert_eq!(answer.servers, 3);
        let coverage: Vec<f64> = answer.coverage.iter().map(|p| p.value).collect();
        let step = 1800.0 * 3.0;
        assert_eq!(
            coverage,
            [1800.0 / step, 1860.0 / step, 1800.0 / step, 1800.0 / step]
        );
    }
}
