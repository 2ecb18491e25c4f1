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

use super::hours::HOUR_US;
use super::keys::Keys;
use super::{Bucket, COARSE_US, Dim, DimValue, FINE_US, MinuteLoad, Wanted, query_key, shown};
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

    /// Whether some server-hours may be passed over unread, their
    /// dictionaries naming no tuple it takes ([`Scope::may_hold`]): it
    /// filters a dimension by `=` or `=~`, and reads whole minutes (the
    /// hours passed over are counted from their totals, which are per
    /// minute).
    pub fn prunes(&self) -> bool {
        !self.fine && self.tuples.iter().any(|(d, m)| narrows(*d, m))
    }

    /// Whether its only filters that pass hours over are by query: then
    /// the hours passed over hold no statement statistics of a query it
    /// takes either (statistics are summed over users and the rest, so
    /// another filter passes over hours whose statistics it takes), and
    /// [`Scope::may_hold`] asks a dictionary's fingerprints, not its
    /// strings.
    pub fn narrows_by_query_only(&self) -> bool {
        self.tuples
            .iter()
            .all(|(d, m)| *d == Dim::Query || !narrows(*d, m))
    }

    /// Whether rows that name the dictionary `keys` may hold a tuple it
    /// takes: for each of its filters by `=` or `=~`, some value the
    /// dictionary names matches (a filter by `!=` or `!~` takes almost any
    /// hour, so it is not asked). A wait is two of the dictionary's strings,
    /// its type and its event: asked for `wait="Type:Event"` only.
    pub fn may_hold(&self, keys: &Keys) -> bool {
        // Strings left unread may hold anything.
        let named = |value: &str| keys.no_strings || keys.strings.iter().any(|s| &**s == value);
        self.tuples.iter().all(|(d, m)| {
            !narrows(*d, m)
                || match d {
                    Dim::Query => match m.equal_to().and_then(fingerprint) {
                        Some(f) => keys.queries.contains(&f),
                        None => keys.queries.iter().any(|q| m.matches(Some(&query_key(*q)))),
                    },
                    Dim::Wait => m
                        .equal_to()
                        .and_then(|w| w.split_once(':'))
                        .is_none_or(|(kind, event)| named(kind) && named(event)),
                    _ => keys.no_strings || keys.strings.iter().any(|s| m.matches(Some(shown(s)))),
                }
        })
    }

    /// What its reads decode of each stored minute: the 10 s buckets only
    /// for steps that are not whole minutes, and of a question about one
    /// query (`query="…"`), that query's tuples alone.
    pub fn wanted(&self) -> Wanted {
        let query = self
            .tuples
            .iter()
            .find_map(|(d, m)| m.equal_to().filter(|_| *d == Dim::Query))
            .and_then(fingerprint);
        match (self.fine, query) {
            (true, _) => Wanted::All,
            (false, Some(f)) => Wanted::Query(f),
            (false, None) => Wanted::Minutes,
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

/// The fingerprint a query's key names (16 hex digits), if it is one.
fn fingerprint(key: &str) -> Option<u64> {
    (key.len() == 16)
        .then(|| u64::from_str_radix(key, 16).ok())
        .flatten()
        .filter(|f| query_key(*f) == key)
}

/// Whether the filter `m` of `dim` can find a dictionary naming none of the
/// values it takes: one by `=` or `=~` (a wait only as `Type:Event`).
fn narrows(dim: Dim, m: &Matcher) -> bool {
    m.takes_only_its_own() && (dim != Dim::Wait || m.equal_to().is_some_and(|w| w.contains(':')))
}

/// What [`Scope::selects`] answered, per filter and value.
#[derive(Debug, Default)]
pub struct Selected(HashMap<(usize, DimValue), bool>);

/// Chooses fine or coarse buckets: fine for steps that are not whole
/// minutes. Steps of whole hours start on an hour, as `QueryMetrics`' do,
/// so that a store can hand each hour it has added up whole.
fn resolution(scope: &mut Scope, step_us: i64) -> Result<(), String> {
    if step_us < FINE_US || step_us % FINE_US != 0 {
        return Err(format!(
            "step {} is not a whole number of 10 s; load is kept per 10 s and per minute, so give 10s, 30s, 1m, 5m, …",
            humantime::format_duration(std::time::Duration::from_micros(step_us.unsigned_abs()))
        ));
    }
    scope.fine = step_us % COARSE_US != 0;
    let unit = match step_us {
        _ if scope.fine => FINE_US,
        s if s % HOUR_US == 0 => HOUR_US,
        _ => COARSE_US,
    };
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::load::keys::Keys;

    /// The scope of `matchers` over a minute.
    pub(crate) fn scope_of(matchers: &[String]) -> Scope {
        Scope::new("", matchers, 0, 60_000_000).unwrap()
    }

    fn keys(strings: &[&str], queries: &[u64]) -> Keys {
        Keys {
            strings: strings.iter().map(|s| (*s).into()).collect(),
            queries: queries.to_vec(),
            own_hour: true,
            no_strings: false,
        }
    }

    fn scope(matchers: &[&str]) -> Scope {
        let matchers: Vec<String> = matchers.iter().map(|m| m.to_string()).collect();
        scope_of(&matchers)
    }

    #[test]
    fn a_dictionary_may_hold_a_tuple_when_each_narrowing_filter_finds_a_value_in_it() {
        let hour = keys(&["app", "web", "IO", "DataFileRead", ""], &[0xab, 0]);
        let cases = [
            (vec![r#"query="00000000000000ab""#], true),
            (vec![r#"query="00000000000000ac""#], false),
            (vec![r#"query=~"00000000000000a.""#], true),
            (vec![r#"query=~"ff.*""#], false),
            // Taking all but one value: nearly every hour, not asked.
            (vec![r#"query!="00000000000000ab""#], true),
            (vec![r#"query!~"00000000000000ab""#], true),
            (vec![r#"user="app""#], true),
            (vec![r#"user="report""#], false),
            (vec![r#"application=~"w.b""#], true),
            (vec![r#"user="app""#, r#"query="00000000000000ac""#], false),
            (vec![r#"wait="IO:DataFileRead""#], true),
            (vec![r#"wait="IO:WALSync""#], false),
            // A wait without an event is not two strings: not asked.
            (vec![r#"wait="CPU""#], true),
            (vec![r#"wait=~"Lock:.*""#], true),
            // A server's label narrows servers, not hours.
            (vec![r#"dc="eu1""#], true),
        ];
        for (matchers, may) in cases {
            let s = scope(&matchers);
            assert_eq!(s.may_hold(&hour), may, "{matchers:?}");
        }
        // A dictionary read without its strings may hold any string.
        let fingerprints = Keys {
            strings: Vec::new(),
            no_strings: true,
            ..hour.clone()
        };
        assert!(scope(&[r#"user="report""#]).may_hold(&fingerprints));
        assert!(scope(&[r#"wait="IO:WALSync""#]).may_hold(&fingerprints));
        assert!(!scope(&[r#"query="00000000000000ac""#]).may_hold(&fingerprints));
        assert!(!scope(&[r#"user="report""#]).narrows_by_query_only());
        assert!(scope(&[r#"query="00000000000000ac""#, r#"user!="x""#]).narrows_by_query_only());
        // What can pass hours over: a narrowing filter, whole minutes.
        assert!(scope(&[r#"user="app""#]).prunes());
        assert!(!scope(&[r#"user!="app""#, r#"dc="eu1""#, r#"wait="CPU""#]).prunes());
        let mut fine = scope(&[r#"user="app""#]);
        fine.fine = true;
        assert!(!fine.prunes(), "10 s steps: totals are per minute");
        // What a read decodes: one query's tuples for a question about it.
        let one = scope(&[r#"user="app""#, r#"query="00000000000000ab""#]);
        assert_eq!(one.wanted(), Wanted::Query(0xab));
        assert_eq!(
            scope(&[r#"query!="00000000000000ab""#]).wanted(),
            Wanted::Minutes
        );
        assert_eq!(scope(&[r#"query="other""#]).wanted(), Wanted::Minutes);
        assert_eq!(fine.wanted(), Wanted::All);
    }
}
