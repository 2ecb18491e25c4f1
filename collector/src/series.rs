//! `QueryMetrics`: the checks on a request, PromQL-style label matchers, and
//! the per-minute rollups added up into one series per group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use pgfleet_common::settings::check_label;
use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;

use crate::aggregator::ServerView;
use crate::load::hours::HOUR_US;
use crate::rollup::{Combine, MINUTE_US, Metric, Minute};
use crate::store::MinutesRead;

/// The most points one series may have, as Prometheus allows.
pub const MAX_POINTS: i64 = 11_000;

/// The pseudo-label that names a server, for matching and grouping.
const SERVER_ID: &str = "server_id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Re,
    NotRe,
}

/// One label matcher: `name="value"`, `name!="value"`, `name=~"re"` or
/// `name!~"re"`. A label a server does not carry has the value "".
#[derive(Debug, Clone)]
pub struct Matcher {
    name: String,
    op: Op,
    value: String,
    regex: Option<regex::Regex>,
}

impl Matcher {
    /// Reads one matcher, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let form =
            "write it as name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\"";
        let text = text.trim();
        let Some(at) = text.find(['=', '!']) else {
            return Err(format!("matcher {text:?} has no operator; {form}"));
        };
        let (name, rest) = text.split_at(at);
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (Op::Re, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (Op::NotRe, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (Op::Ne, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (Op::Eq, v)
        } else {
            return Err(format!("matcher {text:?} has no operator; {form}"));
        };
        let name = name.trim();
        check_label(name, "").map_err(|e| format!("matcher {text:?}: {e}; {form}"))?;
        let value = value.trim();
        let value = match (value.strip_prefix('"'), value.strip_suffix('"')) {
            (Some(_), Some(_)) if value.len() >= 2 => &value[1..value.len() - 1],
            (None, None) => value,
            _ => return Err(format!("matcher {text:?} has an unbalanced quote; {form}")),
        };
        let regex = match op {
            Op::Re | Op::NotRe => Some(
                // Anchored, as in PromQL.
                regex::Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("matcher {text:?}: {value:?} is not a regex: {e}"))?,
            ),
            Op::Eq | Op::Ne => None,
        };
        Ok(Matcher {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
            regex,
        })
    }

    /// `name="value"`.
    pub fn equal(name: &str, value: &str) -> Matcher {
        Matcher {
            name: name.to_owned(),
            op: Op::Eq,
            value: value.to_owned(),
            regex: None,
        }
    }

    /// The label (or dimension) it matches.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it takes only the values that equal or match its own (`=`,
    /// `=~`), rather than all but those (`!=`, `!~`).
    pub fn takes_only_its_own(&self) -> bool {
        matches!(self.op, Op::Eq | Op::Re)
    }

    /// The one value it takes, for `name="value"`.
    pub fn equal_to(&self) -> Option<&str> {
        (self.op == Op::Eq).then_some(self.value.as_str())
    }

    /// Whether `value` (None: the label is absent) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let value = value.unwrap_or("");
        match (self.op, &self.regex) {
            (Op::Eq, _) => value == self.value,
            (Op::Ne, _) => value != self.value,
            (Op::Re, Some(re)) => re.is_match(value),
            (Op::NotRe, Some(re)) => !re.is_match(value),
            (Op::Re | Op::NotRe, None) => false,
        }
    }
}

/// A request's range, checked: start is required, end defaults to `now`,
/// and both lie between 1970 and 9999, the end after the start.
pub fn range(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
    now: Micros,
) -> Result<(Micros, Micros), String> {
    let Some(start) = start.map(time::timestamp_micros) else {
        return Err(
            "the range has no start; give one (the CLI's --range 1h means the last hour)"
                .to_owned(),
        );
    };
    let end = end.map_or(now, time::timestamp_micros);
    for (what, at) in [("start", start), ("end", end)] {
        if !time::writable(at) {
            return Err(format!(
                "the range's {what} is out of range: give an instant between 1970 and 9999"
            ));
        }
    }
    if end <= start {
        return Err(format!(
            "the range is inverted: its end ({}) is not after its start ({})",
            time::rfc3339(end),
            time::rfc3339(start)
        ));
    }
    Ok((start, end))
}

/// A checked `QueryMetrics` request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The metric.
    pub metric: Metric,
    matchers: Vec<Matcher>,
    /// The first step's start: the range's start, down to its minute, or
    /// to its hour when the step is whole hours (each step then holds whole
    /// hours, which a store may read as one row each).
    pub start: Micros,
    /// The range's end (exclusive).
    pub end: Micros,
    /// The step, a whole number of minutes.
    pub step_us: i64,
    group_by: Vec<String>,
}

impl Plan {
    /// Checks `req` at `now`; the error says what to change.
    pub fn new(req: &v1::QueryMetricsRequest, now: Micros) -> Result<Plan, String> {
        let metric = Metric::parse(&req.metric)?;
        let (start, end) = range(req.start.as_ref(), req.end.as_ref(), now)?;
        let step_us = req.step.as_ref().map_or(MINUTE_US, time::duration_micros);
        if step_us <= 0 || step_us % MINUTE_US != 0 {
            return Err(format!(
                "step {} is not a whole number of minutes; rollups are per minute, so give 1m, 5m, 1h, …",
                humantime::format_duration(std::time::Duration::from_micros(
                    step_us.unsigned_abs()
                ))
            ));
        }
        let start = match step_us % HOUR_US {
            0 => start - start.rem_euclid(HOUR_US),
            _ => start - start.rem_euclid(MINUTE_US),
        };
        // Both lie between 1970 and 9999, so the span cannot overflow.
        let span = end - start;
        let points = span / step_us + i64::from(span % step_us != 0);
        if points > MAX_POINTS {
            return Err(format!(
                "the range and step make {points} points per series; at most {MAX_POINTS} are served, so widen the step or narrow the range"
            ));
        }
        let matchers = req
            .matchers
            .iter()
            .map(|m| Matcher::parse(m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut group_by = Vec::new();
        for name in &req.group_by {
            let name = name.trim();
            check_label(name, "")
                .map_err(|e| format!("group_by {name:?}: {e}; give a label name such as dc"))?;
            if Some(name) != metric.label() && !group_by.iter().any(|g| g == name) {
                group_by.push(name.to_owned());
            }
        }
        Ok(Plan {
            metric,
            matchers,
            start,
            end,
            step_us,
            group_by,
        })
    }

    /// The answer to add the minutes up into: the servers the matchers
    /// select (each with its group's label values), and the minutes the
    /// live view is still rolling up of those.
    pub fn fold(&self, servers: &BTreeMap<Arc<str>, Arc<ServerView>>) -> Fold {
        let own = self.metric.label();
        let label = |s: &ServerView, name: &str| -> Option<String> {
            if name == SERVER_ID {
                Some(s.server_id.clone())
            } else {
                s.labels.get(name).cloned()
            }
        };
        let mut fold = Fold {
            plan: self.clone(),
            own: self
                .matchers
                .iter()
                .filter(|m| Some(m.name.as_str()) == own)
                .cloned()
                .collect(),
            selected: HashMap::new(),
            of: servers.len(),
            groups: Vec::new(),
            live: Vec::new(),
            step: i64::MIN,
            cells: HashMap::new(),
            series: HashMap::new(),
            steps: Vec::new(),
        };
        let mut group_of: HashMap<Vec<String>, usize> = HashMap::new();
        for s in servers.values() {
            let selected = self
                .matchers
                .iter()
                .filter(|m| Some(m.name.as_str()) != own)
                .all(|m| m.matches(label(s, &m.name).as_deref()));
            if !selected {
                continue;
            }
            let key: Vec<String> = self
                .group_by
                .iter()
                .map(|g| label(s, g).unwrap_or_default())
                .collect();
            let group = *group_of.entry(key.clone()).or_insert_with(|| {
                fold.groups.push(key);
                fold.steps.push(BTreeSet::new());
                fold.groups.len() - 1
            });
            let server = fold.selected.len();
            let live = (s.minute.samples > 0 && self.in_range(&s.minute)).then(|| s.minute.clone());
            if let Some(m) = &live {
                fold.live.push((server, group, m.clone()));
            }
            fold.selected.insert(
                s.server_id.clone(),
                Selected {
                    server,
                    group,
                    live: live.map(|m| m.start),
                },
            );
        }
        // Taken from the end: the earliest first.
        fold.live
            .sort_by_key(|(_, _, m)| std::cmp::Reverse(m.start));
        fold
    }

    /// Whether each step holds whole hours, so that a store may hand a
    /// server's hour as one minute.
    pub fn hourly(&self) -> bool {
        self.step_us % HOUR_US == 0 && self.start.rem_euclid(HOUR_US) == 0
    }

    fn in_range(&self, m: &Minute) -> bool {
        m.start >= self.start && m.start < self.end
    }
}

/// A selected server: its number, its group's, and the start of its minute
/// the live view is still rolling up, if in range.
struct Selected {
    server: usize,
    group: usize,
    live: Option<Micros>,
}

/// One server's minutes in one step.
#[derive(Default)]
struct Cell {
    samples: u32,
    covered_us: i64,
    values: BTreeMap<String, f64>,
}

/// A `QueryMetrics` answer, added up as the minutes come in the order of
/// their start (as the stores read them): per server and step, and once a
/// minute of a later step comes, per group and step. It holds a step's
/// cells, not the range's minutes: a day of a fleet of 10,000 servers is
/// 14.4 million of them, some 1.3 KB each once decoded ("QueryMetrics over a
/// day" in BENCHMARKS.md).
pub struct Fold {
    plan: Plan,
    /// The matchers on the metric's own label, which pick its values.
    own: Vec<Matcher>,
    selected: HashMap<String, Selected>,
    /// How many servers the view held that it was made of.
    of: usize,
    /// Each group's label values, and the steps in which it had a minute.
    groups: Vec<Vec<String>>,
    steps: Vec<BTreeSet<i64>>,
    /// The live view's minutes in range of the selected servers, still in
    /// progress, by server and group (the latest first): each wins over a
    /// stored copy of the same minute.
    live: Vec<(usize, usize, Arc<Minute>)>,
    /// The step of `cells`, by server (the group beside).
    step: i64,
    cells: HashMap<usize, (usize, Cell)>,
    /// By group and value label: the points by step.
    series: HashMap<(usize, String), BTreeMap<i64, f64>>,
}

impl Fold {
    /// The stored minutes it adds up: of the servers it selects (None when
    /// that is every server of the view it was made of, so that a store
    /// need not find them apart); whole hours as one row each where every
    /// step holds whole hours, but minute by minute for a server's hour
    /// that holds the minute the live view still rolls up (which wins over
    /// a stored copy of it).
    pub fn read(&self) -> MinutesRead {
        let mut by_minute: BTreeMap<Micros, Vec<String>> = BTreeMap::new();
        for (server_id, s) in &self.selected {
            if let Some(live) = s.live {
                by_minute
                    .entry(live - live.rem_euclid(HOUR_US))
                    .or_default()
                    .push(server_id.clone());
            }
        }
        MinutesRead {
            start: self.plan.start,
            end: self.plan.end,
            // None selected reads none, however few the view held.
            servers: (self.selected.len() < self.of || self.selected.is_empty())
                .then(|| self.selected.keys().cloned().collect()),
            hourly: self.plan.hourly(),
            by_minute,
        }
    }

    /// Adds a stored minute of `server_id`; one not selected, out of range,
    /// or that the live view holds still in progress, counts nothing.
    pub fn add(&mut self, server_id: &str, m: &Minute) {
        let Some(s) = self.selected.get(server_id) else {
            return;
        };
        if !self.plan.in_range(m) || s.live == Some(m.start) {
            return;
        }
        let (server, group) = (s.server, s.group);
        self.live_until(m.start);
        self.put(server, group, m);
    }

    /// The live view's minutes that start at or before `until`, in order.
    fn live_until(&mut self, until: Micros) {
        while self.live.last().is_some_and(|(_, _, m)| m.start <= until) {
            if let Some((server, group, m)) = self.live.pop() {
                self.put(server, group, &m);
            }
        }
    }

    fn put(&mut self, server: usize, group: usize, m: &Minute) {
        let step = (m.start - self.plan.start) / self.plan.step_us;
        if step != self.step {
            self.close_step();
            self.step = step;
        }
        let combine = self.plan.metric.combine();
        let (_, cell) = self.cells.entry(server).or_insert((group, Cell::default()));
        cell.samples += m.samples;
        cell.covered_us += m.covered_us;
        for (value_label, v) in m.values.of(self.plan.metric) {
            let slot = match cell.values.get_mut(&**value_label) {
                Some(slot) => slot,
                None => cell.values.entry(value_label.to_string()).or_default(),
            };
            match combine {
                Combine::Mean | Combine::Rate => *slot += v,
                Combine::Max => *slot = slot.max(v),
            }
        }
    }

    /// Adds the step's cells into their groups' points.
    fn close_step(&mut self) {
        let combine = self.plan.metric.combine();
        let step = self.step;
        for (_, (group, cell)) in self.cells.drain() {
            self.steps[group].insert(step);
            for (value_label, v) in cell.values {
                if !self.own.iter().all(|m| m.matches(Some(&value_label))) {
                    continue;
                }
                let value = match combine {
                    Combine::Mean => v / f64::from(cell.samples.max(1)),
                    Combine::Max => v,
                    Combine::Rate if cell.covered_us > 0 => v / (cell.covered_us as f64 / 1e6),
                    Combine::Rate => 0.0,
                };
                let point = self
                    .series
                    .entry((group, value_label))
                    .or_default()
                    .entry(step)
                    .or_default();
                match combine {
                    Combine::Mean | Combine::Rate => *point += value,
                    Combine::Max => *point = point.max(value),
                }
            }
        }
    }

    /// The series, by group and value label.
    pub fn finish(mut self) -> Vec<v1::MetricSeries> {
        self.live_until(Micros::MAX);
        self.close_step();
        let own = self.plan.metric.label();
        let mut series: Vec<((usize, String), BTreeMap<i64, f64>)> =
            self.series.into_iter().collect();
        series.sort_by(|((a, la), _), ((b, lb), _)| {
            (&self.groups[*a], la).cmp(&(&self.groups[*b], lb))
        });
        series
            .into_iter()
            .map(|((group, value_label), mut points)| {
                // A step in which the group had samples but none with this
                // value counts zero of it.
                for step in &self.steps[group] {
                    points.entry(*step).or_insert(0.0);
                }
                let mut labels: BTreeMap<String, String> = self
                    .plan
                    .group_by
                    .iter()
                    .cloned()
                    .zip(self.groups[group].iter().cloned())
                    .collect();
                if let Some(name) = own {
                    labels.insert(name.to_owned(), value_label);
                }
                v1::MetricSeries {
                    labels,
                    points: points
                        .into_iter()
                        .map(|(step, value)| v1::MetricPoint {
                            at: Some(time::timestamp(self.plan.start + step * self.plan.step_us)),
                            value,
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_read_promql_forms_and_name_what_is_wrong() {
        let m = Matcher::parse("dc=\"eu1\"").unwrap();
        assert!(m.matches(Some("eu1")) && !m.matches(Some("eu2")) && !m.matches(None));
        let m = Matcher::parse("dc!=eu1").unwrap();
        assert!(!m.matches(Some("eu1")) && m.matches(None));
        let m = Matcher::parse("role=~\"prim.*\"").unwrap();
        assert!(m.matches(Some("primary")) && !m.matches(Some("a-primary")));
        let m = Matcher::parse("role!~\"prim.*\"").unwrap();
        assert!(m.matches(Some("standby")) && !m.matches(Some("primary")));
        for (bad, says) in [
            ("dc", "no operator"),
            ("dc~eu1", "no operator"),
            ("dc=\"eu1", "unbalanced quote"),
            ("1dc=eu1", "label name"),
            ("=eu1", "label name"),
            ("role=~\"(\"", "is not a regex"),
        ] {
            let e = Matcher::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    fn request(
        metric: &str,
        start: Option<Micros>,
        end: Option<Micros>,
        step_s: i64,
    ) -> v1::QueryMetricsRequest {
        v1::QueryMetricsRequest {
            metric: metric.to_owned(),
            start: start.map(time::timestamp),
            end: end.map(time::timestamp),
            step: Some(time::duration(step_s * 1_000_000)),
            ..Default::default()
        }
    }

    #[test]
    fn bad_requests_are_refused_with_what_to_change() {
        let now = 1_800_000_000_000_000;
        let hour = 3_600_000_000;
        let cases = [
            (request("sessions", None, None, 60), "no start"),
            (
                request("session", Some(now - hour), None, 60),
                "unknown metric \"session\"",
            ),
            (request("", Some(now - hour), None, 60), "name a metric"),
            (
                request("sessions", Some(now), Some(now - hour), 60),
                "inverted",
            ),
            (request("sessions", Some(now), Some(now), 60), "inverted"),
            (
                request("sessions", Some(now - hour), None, 90),
                "whole number of minutes",
            ),
            (
                request("sessions", Some(now - hour), None, 0),
                "whole number of minutes",
            ),
            (
                request("sessions", Some(now - 30 * 24 * hour), None, 60),
                "at most 11000",
            ),
        ];
        for (req, says) in cases {
            let e = Plan::new(&req, now).unwrap_err();
            assert!(e.contains(says), "{req:?}: {e}");
        }
        let ok = Plan::new(&request("sessions", Some(now - hour), None, 60), now).unwrap();
        assert_eq!(ok.end, now);
    }

    fn minute(start: Micros, samples: u32, values: &[(Metric, &str, f64)]) -> Minute {
        Minute {
            start,
            samples,
            covered_us: i64::from(samples) * 1_000_000,
            values: values.iter().copied().collect(),
        }
    }

    /// The answer to `plan`, the stored minutes coming in the order the
    /// stores read them (by start, then server).
    fn evaluate(
        plan: &Plan,
        servers: &BTreeMap<Arc<str>, Arc<ServerView>>,
        stored: &[(String, Minute)],
    ) -> Vec<v1::MetricSeries> {
        let mut stored: Vec<&(String, Minute)> = stored.iter().collect();
        stored.sort_by_key(|(server, m)| (m.start, server.clone()));
        let mut fold = plan.fold(servers);
        for (server_id, m) in stored {
            fold.add(server_id, m);
        }
        fold.finish()
    }

    #[test]
    fn minutes_add_up_per_group_and_step() {
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % MINUTE_US;
        let mut servers = BTreeMap::new();
        for (id, dc) in [("a", "eu1"), ("b", "eu1"), ("c", "us1")] {
            let mut v = ServerView::new(id, std::time::Duration::from_secs(1));
            v.labels = Arc::new([("dc".to_owned(), dc.to_owned())].into());
            servers.insert(id.into(), Arc::new(v));
        }
        // c is still rolling its second minute up.
        Arc::make_mut(servers.get_mut("c").unwrap()).minute = Arc::new(minute(
            t0 + MINUTE_US,
            30,
            &[
                (Metric::Sessions, "active", 90.0),
                (Metric::Commits, "", 300.0),
            ],
        ));
        let stored = vec![
            // a: 2 active on average in minute 0, none in minute 1.
            (
                "a".to_owned(),
                minute(
                    t0,
                    60,
                    &[
                        (Metric::Sessions, "active", 120.0),
                        (Metric::Sessions, "idle", 60.0),
                        (Metric::Commits, "", 600.0),
                        (Metric::MaxXactAge, "", 5.0),
                    ],
                ),
            ),
            (
                "a".to_owned(),
                minute(
                    t0 + MINUTE_US,
                    60,
                    &[
                        (Metric::Sessions, "idle", 60.0),
                        (Metric::MaxXactAge, "", 1.0),
                    ],
                ),
            ),
            // b: 1 active in minute 0.
            (
                "b".to_owned(),
                minute(
                    t0,
                    60,
                    &[
                        (Metric::Sessions, "active", 60.0),
                        (Metric::MaxXactAge, "", 9.0),
                    ],
                ),
            ),
            // c: a stored minute 0, and a stale stored copy of minute 1.
            (
                "c".to_owned(),
                minute(t0, 60, &[(Metric::Sessions, "active", 240.0)]),
            ),
            (
                "c".to_owned(),
                minute(t0 + MINUTE_US, 1, &[(Metric::Sessions, "active", 100.0)]),
            ),
            // Out of range.
            (
                "a".to_owned(),
                minute(
                    t0 + 5 * MINUTE_US,
                    60,
                    &[(Metric::Sessions, "active", 600.0)],
                ),
            ),
        ];
        let plan = |metric: &str, by: &[&str], matchers: &[&str], step_min: i64| {
            Plan::new(
                &v1::QueryMetricsRequest {
                    metric: metric.into(),
                    matchers: matchers.iter().map(|m| m.to_string()).collect(),
                    start: Some(time::timestamp(t0 + 1)),
                    end: Some(time::timestamp(t0 + 2 * MINUTE_US)),
                    step: Some(time::duration(step_min * MINUTE_US)),
                    group_by: by.iter().map(|b| b.to_string()).collect(),
                },
                t0 + 10 * MINUTE_US,
            )
            .unwrap()
        };
        let show = |series: Vec<v1::MetricSeries>| -> Vec<String> {
            series
                .iter()
                .map(|s| {
                    let labels: Vec<String> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let points: Vec<String> =
                        s.points.iter().map(|p| format!("{}", p.value)).collect();
                    format!("{} {}", labels.join(","), points.join(" "))
                })
                .collect()
        };
        assert_eq!(
            show(evaluate(
                &plan("sessions", &["dc"], &[], 1),
                &servers,
                &stored
            )),
            [
                "dc=eu1,state=active 3 0",
                "dc=eu1,state=idle 1 1",
                "dc=us1,state=active 4 3"
            ]
        );
        assert_eq!(
            show(evaluate(
                &plan("sessions", &[], &["state=active", "dc=~\"eu.*\""], 2),
                &servers,
                &stored
            )),
            // a: (120 + 0) / 120 samples = 1, b: 60 / 60 = 1.
            ["state=active 2"]
        );
        assert_eq!(
            show(evaluate(
                &plan("max_xact_age_seconds", &["server_id"], &["dc!=us1"], 1),
                &servers,
                &stored
            )),
            ["server_id=a 5 1", "server_id=b 9"]
        );
        // a: 600 commits over 60 s; c: 300 over 30 s.
        assert_eq!(
            show(evaluate(
                &plan("commits_per_second", &[], &[], 1),
                &servers,
                &stored
            )),
            [" 10 10"]
        );
        // The servers a store is to find apart: none named when the
        // matchers keep every one (those on the metric's own label pick
        // values, not servers).
        let servers_of = |matchers: &[&str]| {
            plan("sessions", &[], matchers, 1)
                .fold(&servers)
                .read()
                .servers
                .map(|mut ids| {
                    ids.sort();
                    ids
                })
        };
        assert_eq!(servers_of(&[]), None);
        assert_eq!(servers_of(&["state=active"]), None);
        assert_eq!(
            servers_of(&["dc=~\"eu.*\""]),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(servers_of(&["dc=nowhere"]), Some(vec![]));
        // An empty view: nothing to read.
        let empty = plan("sessions", &[], &[], 1).fold(&BTreeMap::new()).read();
        assert_eq!(empty.servers, Some(vec![]));
    }

    #[test]
    fn a_live_minute_counts_in_its_step_among_the_stored_ones() {
        let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % MINUTE_US;
        let mut servers = BTreeMap::new();
        for id in ["a", "b"] {
            let v = ServerView::new(id, std::time::Duration::from_secs(1));
            servers.insert(id.into(), Arc::new(v));
        }
        // a stopped streaming in minute 1: its view still holds that minute,
        // older than b's stored ones; the stored copy of it does not count.
        Arc::make_mut(servers.get_mut("a").unwrap()).minute = Arc::new(minute(
            t0 + MINUTE_US,
            60,
            &[(Metric::Sessions, "active", 60.0)],
        ));
        let active = |at, n| minute(at, 60, &[(Metric::Sessions, "active", n)]);
        let stored = vec![
            ("a".to_owned(), active(t0, 180.0)),
            ("a".to_owned(), active(t0 + MINUTE_US, 6000.0)),
            ("b".to_owned(), active(t0 + 2 * MINUTE_US, 60.0)),
            ("b".to_owned(), active(t0 + 3 * MINUTE_US, 180.0)),
        ];
        let plan = Plan::new(
            &v1::QueryMetricsRequest {
                metric: "sessions".into(),
                start: Some(time::timestamp(t0)),
                end: Some(time::timestamp(t0 + 4 * MINUTE_US)),
                step: Some(time::duration(2 * MINUTE_US)),
                ..Default::default()
            },
            t0 + 10 * MINUTE_US,
        )
        .unwrap();
        let series = evaluate(&plan, &servers, &stored);
        let points: Vec<f64> = series[0].points.iter().map(|p| p.value).collect();
        // a: (180 + 60) / 120 samples in the first step; b: (60 + 180) / 120.
        assert_eq!(points, [2.0, 2.0]);
    }
    #[test]
    fn whole_hours_read_as_one_row_each_give_the_answer_their_minutes_give() {
        let h0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % HOUR_US;
        let mut servers = BTreeMap::new();
        for id in ["a", "b", "c"] {
            let v = ServerView::new(id, std::time::Duration::from_secs(1));
            servers.insert(id.into(), Arc::new(v));
        }
        // a stopped streaming 65 minutes in: its view still holds that
        // minute, and a copy of it, less far along, was stored.
        let held = h0 + 65 * MINUTE_US;
        Arc::make_mut(servers.get_mut("a").unwrap()).minute = Arc::new(minute(
            held,
            40,
            &[
                (Metric::Sessions, "active", 400.0),
                (Metric::MaxXactAge, "", 99.0),
            ],
        ));
        let mut stored = Vec::new();
        for m in 0..150 {
            let start = h0 + m * MINUTE_US;
            for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
                if (id == "a" && start > held) || (m as usize + i).is_multiple_of(7) {
                    continue;
                }
                let samples = if start == held { 20 } else { 60 };
                let n = (m as f64) + 10.0 * i as f64;
                stored.push((
                    id.to_owned(),
                    minute(
                        start,
                        samples,
                        &[
                            (Metric::Sessions, "active", n * f64::from(samples)),
                            (Metric::MaxXactAge, "", n),
                            (Metric::Commits, "", 3.0 * n),
                        ],
                    ),
                ));
            }
        }
        for (metric, by) in [
            ("sessions", "server_id"),
            ("max_xact_age_seconds", ""),
            ("commits_per_second", "server_id"),
        ] {
            let plan = Plan::new(
                &v1::QueryMetricsRequest {
                    metric: metric.into(),
                    // From within the first hour: the plan starts at it.
                    start: Some(time::timestamp(h0 + 17 * MINUTE_US)),
                    end: Some(time::timestamp(h0 + 150 * MINUTE_US)),
                    step: Some(time::duration(HOUR_US)),
                    group_by: by.split_terminator(',').map(String::from).collect(),
                    ..Default::default()
                },
                h0 + 10 * HOUR_US,
            )
            .unwrap();
            assert_eq!(plan.start, h0);
            assert!(plan.hourly());
            let by_minutes = evaluate(&plan, &servers, &stored);
            // The first two hours built, as a SQLite store reads them: each
            // server's hour as one row, but a's second hour (which holds the
            // minute its view still holds) minute by minute, after the
            // hour's rows; the rest minute by minute.
            let fold = plan.fold(&servers);
            let read = fold.read();
            assert_eq!(
                read.by_minute,
                [(h0 + HOUR_US, vec!["a".to_owned()])].into()
            );
            let hours = crate::rollup::hours_of(&stored, h0 + 2 * HOUR_US);
            let mut fold = fold;
            for hour in [h0, h0 + HOUR_US] {
                let by_minute = read.by_minute.get(&hour).cloned().unwrap_or_default();
                for ((_, id), h) in hours.range((hour, String::new())..(hour + 1, String::new())) {
                    if !by_minute.contains(id) {
                        fold.add(id, h);
                    }
                }
                for (id, m) in &stored {
                    if by_minute.contains(id) && m.start >= hour && m.start < hour + HOUR_US {
                        fold.add(id, m);
                    }
                }
            }
            for (id, m) in &stored {
                if m.start >= h0 + 2 * HOUR_US {
                    fold.add(id, m);
                }
            }
            let by_hours = fold.finish();
            let close = by_minutes.len() == by_hours.len()
                && by_minutes.iter().zip(&by_hours).all(|(x, y)| {
                    x.labels == y.labels
                        && x.points.len() == y.points.len()
                        && x.points.iter().zip(&y.points).all(|(p, q)| {
                            p.at == q.at
                                && (p.value - q.value).abs() <= 1e-9 * p.value.abs().max(1.0)
                        })
                });
            assert!(
                close,
                "{metric}: {by_minutes:?} by the minute, {by_hours:?} by the hour"
            );
        }
    }
}
