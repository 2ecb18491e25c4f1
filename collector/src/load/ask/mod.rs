//! Answers from the buckets: `QueryLoad` (stacked series), `TopQueries`
//! (load joined with statement statistics) and `GetChurn`. Each request is
//! checked into a plan first, and a plan says which buckets it needs.

mod churn;
mod series;
mod top;

pub use churn::ChurnPlan;
pub use series::LoadPlan;
pub use top::TopPlan;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pgfleet_proto::time::Micros;

use super::{Bucket, COARSE_US, Dim, DimValue, FINE_US, MinuteLoad, Wanted};
use crate::aggregator::ServerView;
use crate::series::{Matcher, range};

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

    /// Whether its dimension filters take `t`, each value matched once
    /// (`seen` keeps the answers, per filter and value).
    fn selects(&self, t: &super::Tuple, seen: &mut Selected) -> bool {
        self.tuples.iter().enumerate().all(|(i, (d, m))| {
            *seen
                .0
                .entry((i, d.value(t)))
                .or_insert_with_key(|(_, v)| m.matches(Some(&v.name())))
        })
    }

    /// What its reads decode of each stored minute: the 10 s buckets only
    /// for steps that are not whole minutes.
    pub fn wanted(&self) -> Wanted {
        if self.fine {
            Wanted::All
        } else {
            Wanted::Minutes
        }
    }

    /// Hands `f` the buckets it reads of a minute: its 10 s buckets or the
    /// minute's own, those that start in its range.
    pub fn each_bucket(&self, m: &MinuteLoad, mut f: impl FnMut(&Bucket)) {
        let in_range = |b: &&Bucket| b.start >= self.start && b.start < self.end;
        if self.fine {
            m.fine.iter().filter(in_range).for_each(f);
        } else if in_range(&&m.coarse) {
            f(&m.coarse);
        }
    }
}

/// What [`Scope::selects`] answered, per filter and value.
#[derive(Debug, Default)]
pub struct Selected(HashMap<(usize, DimValue), bool>);

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
