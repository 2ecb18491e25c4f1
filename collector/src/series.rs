//! `QueryMetrics`: the checks on a request, PromQL-style label matchers, and
//! the per-minute rollups added up into one series per group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use pgfleet_common::settings::check_label;
use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;

use crate::aggregator::ServerView;
use crate::rollup::{Combine, MINUTE_US, Metric, Minute};

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
    /// The first step's start (the range's start, down to its minute).
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
        let start = start - start.rem_euclid(MINUTE_US);
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

    /// The series: the stored minutes and the minutes the live view is still
    /// rolling up, of every server the matchers select, added up per group.
    pub fn evaluate(
        &self,
        servers: &BTreeMap<Arc<str>, Arc<ServerView>>,
        stored: &[(String, Minute)],
    ) -> Vec<v1::MetricSeries> {
        let own = self.metric.label();
        let label = |s: &ServerView, name: &str| -> Option<String> {
            if name == SERVER_ID {
                Some(s.server_id.clone())
            } else {
                s.labels.get(name).cloned()
            }
        };
        // The selected servers, each with its group's label values.
        let mut groups: HashMap<&str, Vec<String>> = HashMap::new();
        for s in servers.values() {
            let selected = self
                .matchers
                .iter()
                .filter(|m| Some(m.name.as_str()) != own)
                .all(|m| m.matches(label(s, &m.name).as_deref()));
            if selected {
                let key = self
                    .group_by
                    .iter()
                    .map(|g| label(s, g).unwrap_or_default())
                    .collect();
                groups.insert(&s.server_id, key);
            }
        }
        // Each selected server's minutes in range; the live one wins over a
        // stored copy of the same minute.
        let in_range = |m: &Minute| m.start >= self.start && m.start < self.end;
        let mut minutes: HashMap<(&str, Micros), &Minute> = HashMap::new();
        for (server_id, m) in stored {
            if groups.contains_key(server_id.as_str()) && in_range(m) {
                minutes.insert((server_id, m.start), m);
            }
        }
        for s in servers.values() {
            if groups.contains_key(s.server_id.as_str())
                && s.minute.samples > 0
                && in_range(&s.minute)
            {
                minutes.insert((&s.server_id, s.minute.start), &s.minute);
            }
        }
        // Per server and step, then per group and step.
        #[derive(Default)]
        struct Cell {
            samples: u32,
            covered_us: i64,
            values: BTreeMap<String, f64>,
        }
        let combine = self.metric.combine();
        let mut cells: HashMap<(&str, i64), Cell> = HashMap::new();
        for ((server_id, start), m) in minutes {
            let cell = cells
                .entry((server_id, (start - self.start) / self.step_us))
                .or_default();
            cell.samples += m.samples;
            cell.covered_us += m.covered_us;
            for (value_label, v) in m.values.of(self.metric) {
                let slot = cell.values.entry(value_label.to_string()).or_default();
                match combine {
                    Combine::Mean | Combine::Rate => *slot += v,
                    Combine::Max => *slot = slot.max(v),
                }
            }
        }
        let own_matchers: Vec<&Matcher> = self
            .matchers
            .iter()
            .filter(|m| Some(m.name.as_str()) == own)
            .collect();
        let mut series: BTreeMap<(&Vec<String>, String), BTreeMap<i64, f64>> = BTreeMap::new();
        let mut steps: HashMap<&Vec<String>, BTreeSet<i64>> = HashMap::new();
        for ((server_id, step), cell) in &cells {
            let group = &groups[server_id];
            steps.entry(group).or_default().insert(*step);
            for (value_label, v) in &cell.values {
                if !own_matchers.iter().all(|m| m.matches(Some(value_label))) {
                    continue;
                }
                let value = match combine {
                    Combine::Mean => v / f64::from(cell.samples.max(1)),
                    Combine::Max => *v,
                    Combine::Rate if cell.covered_us > 0 => v / (cell.covered_us as f64 / 1e6),
                    Combine::Rate => 0.0,
                };
                let point = series
                    .entry((group, value_label.clone()))
                    .or_default()
                    .entry(*step)
                    .or_default();
                match combine {
                    Combine::Mean | Combine::Rate => *point += value,
                    Combine::Max => *point = point.max(value),
                }
            }
        }
        series
            .into_iter()
            .map(|((group, value_label), mut points)| {
                // A step in which the group had samples but none with this
                // value counts zero of it.
                for step in &steps[group] {
                    points.entry(*step).or_insert(0.0);
                }
                let mut labels: BTreeMap<String, String> = self
                    .group_by
                    .iter()
                    .cloned()
                    .zip(group.iter().cloned())
                    .collect();
                if let Some(name) = own {
                    labels.insert(name.to_owned(), value_label);
                }
                v1::MetricSeries {
                    labels,
                    points: points
                        .into_iter()
                        .map(|(step, value)| v1::MetricPoint {
                            at: Some(time::timestamp(self.start + step * self.step_us)),
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
            show(plan("sessions", &["dc"], &[], 1).evaluate(&servers, &stored)),
            [
                "dc=eu1,state=active 3 0",
                "dc=eu1,state=idle 1 1",
                "dc=us1,state=active 4 3"
            ]
        );
        assert_eq!(
            show(
                plan("sessions", &[], &["state=active", "dc=~\"eu.*\""], 2)
                    .evaluate(&servers, &stored)
            ),
            // a: (120 + 0) / 120 samples = 1, b: 60 / 60 = 1.
            ["state=active 2"]
        );
        assert_eq!(
            show(
                plan("max_xact_age_seconds", &["server_id"], &["dc!=us1"], 1)
                    .evaluate(&servers, &stored)
            ),
            ["server_id=a 5 1", "server_id=b 9"]
        );
        // a: 600 commits over 60 s; c: 300 over 30 s.
        assert_eq!(
            show(plan("commits_per_second", &[], &[], 1).evaluate(&servers, &stored)),
            [" 10 10"]
        );
    }
}
