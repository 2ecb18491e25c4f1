//! `QueryLoad`, `TopQueries` and `GetChurn`: a plan checked from the
//! request, the buckets and statement reads it needs from the store, and the
//! answer worked out from them (see [`crate::load::ask`]).

use std::sync::Arc;

use std::collections::HashMap;

use pgfleet_proto::time::{Micros, now_micros};
use pgfleet_proto::v1;
use tonic::Status;

use super::QueryService;
use crate::aggregator::ServerView;
use crate::load::ask::{ChurnPlan, LoadPlan, Scope, TopPlan};
use crate::load::count::Closed;
use crate::load::hours::{HOUR_US, HourTotals, PassedOver, ServerHours};
use crate::load::statements::{Read, STATEMENTS_US};
use crate::load::{Bucket, COARSE_US, MinuteLoad, Wanted};
use crate::store::Store;

impl QueryService {
    fn history(&self) -> Result<&Store, Status> {
        if !self.load {
            return Err(Status::failed_precondition(
                "this collector keeps no DB load (it runs with --load off)",
            ));
        }
        self.store
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this collector keeps no history"))
    }

    /// What the counters of `servers` hold open, when `end` is recent
    /// enough to need it: within `reach` of now (what is open began at most
    /// that long ago, and may not be stored yet).
    async fn open(
        &self,
        servers: &[&Arc<ServerView>],
        end: Micros,
        reach: Micros,
        hours_only: bool,
    ) -> Result<Vec<(String, Vec<Closed>)>, Status> {
        if end < now_micros() - reach {
            return Ok(Vec::new());
        }
        let ids = servers.iter().map(|s| s.server_id.clone()).collect();
        self.aggregator.open_load(ids, hours_only).await
    }

    /// Folds the buckets `scope` reads of `servers` into `acc` with `add`:
    /// each stored minute as it is read (with what `wanted` reads of it), so
    /// that a fleet's day is never held at once, but those the counters hold
    /// open (`open`), which replace their stored copies; not those in the
    /// hours of `skip` (see [`QueryService::pass_over`]). With `hourly`
    /// (each step holds whole hours, or the range is summed whole), a whole
    /// hour the store has added up comes as one bucket at its start, but
    /// the hours that hold a minute the counters hold open.
    #[allow(clippy::too_many_arguments)]
    async fn fold_buckets<A: Send + 'static>(
        &self,
        store: &Store,
        scope: &Scope,
        wanted: Wanted,
        servers: Vec<String>,
        open: &[(String, Vec<Closed>)],
        skip: Option<ServerHours>,
        hourly: bool,
        acc: A,
        add: fn(&mut A, &str, &Bucket),
    ) -> Result<A, Status> {
        // The open minute as the counter holds it is the whole of it.
        let mut opened: HashMap<(String, Micros), MinuteLoad> = HashMap::new();
        for (id, closed) in open {
            for c in closed {
                if let Some(m) = c.minute().filter(|m| m.coarse.samples > 0) {
                    opened.insert((id.clone(), m.coarse.start), m);
                }
            }
        }
        let replaced = Held::of(opened.keys());
        let by_hour = hourly.then(|| {
            let mut held = ServerHours::default();
            for (id, at) in opened.keys() {
                held.insert(id, at - at.rem_euclid(HOUR_US));
            }
            held
        });
        let first = scope.start - scope.start.rem_euclid(COARSE_US);
        let stored = scope.clone();
        let mut acc = store
            .fold_load(
                Some(servers),
                first,
                scope.end,
                wanted,
                skip,
                by_hour,
                acc,
                move |acc, id, m| {
                    if !replaced.holds(id, m.coarse.start) {
                        stored.each_bucket(&m, |b| add(acc, id, b));
                    }
                },
            )
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        for ((id, _), m) in &opened {
            scope.each_bucket(m, |b| add(&mut acc, id, b));
        }
        Ok(acc)
    }

    /// Passes over the hours of `servers` in `scope` whose dictionaries name
    /// nothing its filters take (the load of one query, of one
    /// application): their rows hold no tuple it would count, so each is
    /// added with `passed` from its totals (its minutes' samples and
    /// coverage) and not read. Only whole hours that ended and are settled
    /// (see [`Store::fold_passed`]): one whose totals do not list the same
    /// minutes as its rows, or that holds what the counters hold `open`, is
    /// read as ever.
    async fn pass_over<A: Send + 'static>(
        &self,
        store: &Store,
        scope: &Scope,
        servers: &[String],
        open: &[(String, Vec<Closed>)],
        acc: A,
        passed: fn(&mut A, &str, &HourTotals),
    ) -> Result<(A, PassedOver), Status> {
        let internal = |e: crate::store::StoreError| Status::internal(e.to_string());
        let done = now_micros() - MINUTE_REACH;
        let first = scope.start - scope.start.rem_euclid(HOUR_US);
        let end = scope.end.min(done - done.rem_euclid(HOUR_US));
        if !scope.prunes() || first >= end {
            return Ok((acc, PassedOver::default()));
        }
        // What the counters hold may not be in the stored dictionaries yet:
        // the hours they hold are read as ever.
        let mut held = ServerHours::default();
        for (id, closed) in open {
            for c in closed {
                let at = match c {
                    Closed::Minute(m, _) => m.coarse.start,
                    Closed::Packed(m, _) => m.start(),
                    Closed::Statements(at, _) => *at,
                };
                held.insert(id, at - at.rem_euclid(HOUR_US));
            }
        }
        let asked = scope.clone();
        let (acc, hours) = store
            .fold_passed(
                servers.to_vec(),
                (first, end),
                // As `TopSum::add_read` takes them: those that overlap it.
                scope.start - STATEMENTS_US + 1,
                held,
                // The dictionaries' strings only for a filter by another.
                !scope.narrows_by_query_only(),
                move |keys| asked.may_hold(keys),
                acc,
                passed,
            )
            .await
            .map_err(internal)?;
        Ok((acc, hours.unwrap_or_default()))
    }

    /// What a range read whole (`TopQueries`, `GetChurn`) needs: the servers
    /// `scope` selects, and what their counters hold open.
    async fn whole_range(
        &self,
        scope: &Scope,
        reach: Micros,
    ) -> Result<(Vec<String>, Vec<(String, Vec<Closed>)>), Status> {
        let view = self.aggregator.view();
        let servers = scope.servers(&view.servers);
        let open = self.open(&servers, scope.end, reach, false).await?;
        let ids = servers.iter().map(|s| s.server_id.clone()).collect();
        Ok((ids, open))
    }

    /// The texts of `fingerprints` (16 hex digits each), in that order, each
    /// cut to [`MAX_TEXT_BYTES`].
    async fn texts(&self, store: &Store, keys: &[&str]) -> Result<Vec<String>, Status> {
        let fingerprints: Vec<u64> = keys
            .iter()
            .filter_map(|k| u64::from_str_radix(k, 16).ok())
            .collect();
        if fingerprints.is_empty() {
            return Ok(vec![String::new(); keys.len()]);
        }
        let texts = store
            .texts(fingerprints)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(keys
            .iter()
            .map(|k| {
                let text = u64::from_str_radix(k, 16)
                    .ok()
                    .and_then(|f| texts.get(&f))
                    .map_or("", String::as_str);
                cut(text, MAX_TEXT_BYTES)
            })
            .collect())
    }

    pub(super) async fn load_answer(
        &self,
        req: v1::QueryLoadRequest,
    ) -> Result<v1::QueryLoadResponse, Status> {
        let store = self.history()?;
        let now = now_micros();
        let mut plan = LoadPlan::new(&req, now).map_err(Status::invalid_argument)?;
        let view = self.aggregator.view();
        let servers = plan.scope.servers(&view.servers);
        if req.step.is_none() && !store.shared() {
            // The step that suits the servers selected (a PostgreSQL store
            // keeps no hours: whole hours would read as many minutes).
            plan = LoadPlan::over(&req, now, servers.len()).map_err(Status::invalid_argument)?;
        }
        plan.check_group(&servers)
            .map_err(Status::invalid_argument)?;
        let open = self
            .open(&servers, plan.scope.end, MINUTE_REACH, plan.totals_only())
            .await?;
        if plan.totals_only() {
            let mut sum = plan.totals_sum(&servers);
            for (id, closed) in &open {
                for c in closed {
                    if let Closed::Minute(_, h) | Closed::Packed(_, h) = c {
                        sum.add_open(id, h);
                    }
                }
            }
            let ids = servers.iter().map(|s| s.server_id.clone()).collect();
            let first = plan.scope.start - plan.scope.start.rem_euclid(HOUR_US);
            let sum = store
                .fold_hours(Some(ids), first, plan.scope.end, sum, |sum, id, h| {
                    sum.add_stored(id, h)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            return Ok(plan.totals_answer(&servers, sum));
        }
        let ids: Vec<String> = servers.iter().map(|s| s.server_id.clone()).collect();
        let sum = plan.sum(&servers);
        let (sum, passed) = self
            .pass_over(store, &plan.scope, &ids, &open, sum, |s, id, h| {
                s.add_passed(id, h)
            })
            .await?;
        let wanted = plan.scope.wanted();
        let mut answer = self
            .fold_buckets(
                store,
                &plan.scope,
                wanted,
                ids,
                &open,
                Some(passed.totals),
                plan.hourly(),
                sum,
                |s, id, b| s.add(id, b),
            )
            .await?
            .answer();
        if plan.scope.by_query {
            let keys: Vec<&str> = answer.series.iter().map(|s| s.key.as_str()).collect();
            let texts = self.texts(store, &keys).await?;
            for (series, text) in answer.series.iter_mut().zip(texts) {
                series.text = text;
            }
        }
        Ok(answer)
    }

    pub(super) async fn top_queries_answer(
        &self,
        req: v1::TopQueriesRequest,
    ) -> Result<v1::TopQueriesResponse, Status> {
        let store = self.history()?;
        if !req.server_id.is_empty() {
            self.server(&req.server_id)?;
        }
        let plan = TopPlan::new(&req, now_micros()).map_err(Status::invalid_argument)?;
        let reach = MINUTE_REACH + STATEMENTS_US;
        let (ids, open) = self.whole_range(&plan.scope, reach).await?;
        let sum = plan.sum();
        let (sum, passed) = self
            .pass_over(store, &plan.scope, &ids, &open, sum, |s, id, h| {
                s.add_passed(id, h)
            })
            .await?;
        let sum = self
            .fold_buckets(
                store,
                &plan.scope,
                plan.scope.wanted(),
                ids.clone(),
                &open,
                Some(passed.totals),
                // A sum over the range: its whole hours may be read as such.
                true,
                sum,
                |s, id, b| s.add(id, b),
            )
            .await?;
        // Statement statistics are summed over users and the rest: only a
        // filter by query passes their hours over.
        let by_query = plan.scope.narrows_by_query_only();
        let skipped_statements = by_query && passed.statements;
        let skip = Some(passed.unnamed).filter(|_| by_query);
        // Statements are kept per interval: those that begin in the range,
        // and the one it begins in. An interval the counters hold replaces
        // its stored copy.
        let first = plan.scope.start - plan.scope.start.rem_euclid(STATEMENTS_US);
        let mut held: HashMap<(String, Micros), Read> = HashMap::new();
        for (id, closed) in &open {
            for c in closed {
                if let Closed::Statements(at, r) = c
                    && *at >= first
                    && *at < plan.scope.end
                {
                    held.insert((id.clone(), *at), r.clone());
                }
            }
        }
        let replaced = Held::of(held.keys());
        // A sum over the range: its whole hours may be read as such, but
        // those that hold an interval the counters hold.
        let mut by_interval = ServerHours::default();
        for (id, at) in held.keys() {
            by_interval.insert(id, at - at.rem_euclid(HOUR_US));
        }
        let mut sum = store
            .fold_statements(
                Some(ids),
                first,
                plan.scope.end,
                skip,
                Some(by_interval),
                sum,
                move |sum, id, at, r| {
                    if !replaced.holds(id, at) {
                        sum.add_read(id, at, &r);
                    }
                },
            )
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        for ((id, at), r) in &held {
            sum.add_read(id, *at, r);
        }
        let mut answer = sum.answer();
        // Statistics arrived in the hours passed over, of no query asked.
        answer.statements |= skipped_statements;
        let keys: Vec<&str> = answer
            .queries
            .iter()
            .map(|q| q.fingerprint.as_str())
            .collect();
        let texts = self.texts(store, &keys).await?;
        for (query, text) in answer.queries.iter_mut().zip(texts) {
            if query.text.is_empty() {
                query.text = text;
            }
        }
        Ok(answer)
    }

    pub(super) async fn churn_answer(
        &self,
        req: v1::GetChurnRequest,
    ) -> Result<v1::GetChurnResponse, Status> {
        let store = self.history()?;
        if !req.server_id.is_empty() {
            self.server(&req.server_id)?;
        }
        let plan = ChurnPlan::new(&req, now_micros()).map_err(Status::invalid_argument)?;
        let (ids, open) = self.whole_range(&plan.scope, MINUTE_REACH).await?;
        let sum = plan.sum();
        Ok(self
            .fold_buckets(
                store,
                &plan.scope,
                Wanted::Churn,
                ids,
                &open,
                None,
                // A sum over the range: its whole hours may be read as such.
                true,
                sum,
                |s, id, b| s.add(id, b),
            )
            .await?
            .answer())
    }
}

/// What the counters hold open, by server and start: the stored copies of
/// those are older, and skipped.
struct Held(HashMap<String, Vec<Micros>>);

impl Held {
    fn of<'a>(keys: impl Iterator<Item = &'a (String, Micros)>) -> Held {
        let mut held: HashMap<String, Vec<Micros>> = HashMap::new();
        for (id, at) in keys {
            held.entry(id.clone()).or_default().push(*at);
        }
        Held(held)
    }

    fn holds(&self, server_id: &str, at: Micros) -> bool {
        self.0.get(server_id).is_some_and(|s| s.contains(&at))
    }
}

/// How far back an open minute (or hour totals' last minute) can begin, with
/// time for the store to commit it once closed: a closed minute waits at most
/// 30 s in the aggregator for room in the store's queue (`LATER_AT_MOST`).
const MINUTE_REACH: Micros = 2 * COARSE_US;

/// The most bytes of a query's text an answer gives (500 texts of the agent's
/// longest, 64 KiB, would not fit in a message).
const MAX_TEXT_BYTES: usize = 8192;

/// `text` cut to at most `max` bytes, on a character's boundary, marked with
/// an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The live load of a server, as the Query API gives it.
pub fn load_now(view: &ServerView) -> v1::LoadNow {
    v1::LoadNow {
        load: view.load.load,
        by_wait_type: view
            .load
            .by_wait_type
            .iter()
            .map(|(k, v)| v1::KeyValue {
                key: k.to_string(),
                value: *v,
            })
            .collect(),
        recent: view.load.recent.iter().copied().collect(),
        minutes: view.load.minutes.iter().copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn texts_are_cut_on_a_character_with_a_mark() {
        assert_eq!(cut("SELECT 1", 100), "SELECT 1");
        let long = "é".repeat(10);
        let short = cut(&long, 8);
        assert!(short.len() <= 8 && short.ends_with('…'), "{short}");
        assert_eq!(short, "éé…");
    }
}
