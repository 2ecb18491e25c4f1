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
use crate::load::hours::HOUR_US;
use crate::load::statements::{Read, STATEMENTS_US};
use crate::load::{Bucket, COARSE_US, MinuteLoad};
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

    /// The minutes `scope` needs of `servers`: stored, and those still open.
    async fn minutes(
        &self,
        store: &Store,
        scope: &Scope,
        servers: &[&Arc<ServerView>],
        open: &[(String, Vec<Closed>)],
    ) -> Result<Vec<(String, MinuteLoad)>, Status> {
        let ids = servers.iter().map(|s| s.server_id.clone()).collect();
        let first = scope.start - scope.start.rem_euclid(COARSE_US);
        let stored = store
            .load(Some(ids), first, scope.end)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        // The open minute as the counter holds it is the whole of it.
        let mut by_key: HashMap<(String, Micros), MinuteLoad> = stored
            .into_iter()
            .map(|(id, m)| ((id, m.coarse.start), m))
            .collect();
        for (id, closed) in open {
            for c in closed {
                if let Some(m) = c.minute().filter(|m| m.coarse.samples > 0) {
                    by_key.insert((id.clone(), m.coarse.start), m);
                }
            }
        }
        Ok(by_key.into_iter().map(|((id, _), m)| (id, m)).collect())
    }

    /// What a range read whole (`TopQueries`, `GetChurn`) needs: the servers
    /// `scope` selects, what their counters hold open, and their buckets.
    async fn whole_range(
        &self,
        store: &Store,
        scope: &Scope,
        reach: Micros,
    ) -> Result<
        (
            Vec<String>,
            Vec<(String, Vec<Closed>)>,
            Vec<(String, Bucket)>,
        ),
        Status,
    > {
        let view = self.aggregator.view();
        let servers = scope.servers(&view.servers);
        let open = self.open(&servers, scope.end, reach, false).await?;
        let minutes = self.minutes(store, scope, &servers, &open).await?;
        let ids = servers.iter().map(|s| s.server_id.clone()).collect();
        Ok((ids, open, scope.buckets(minutes)))
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
        let plan = LoadPlan::new(&req, now_micros()).map_err(Status::invalid_argument)?;
        let view = self.aggregator.view();
        let servers = plan.scope.servers(&view.servers);
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
        let minutes = self.minutes(store, &plan.scope, &servers, &open).await?;
        let buckets = plan.scope.buckets(minutes);
        let mut answer = plan.evaluate(&servers, &buckets);
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
        let (ids, open, buckets) = self.whole_range(store, &plan.scope, reach).await?;
        // Statements are kept per interval: those that begin in the range,
        // and the one it begins in.
        let first = plan.scope.start - plan.scope.start.rem_euclid(STATEMENTS_US);
        let mut reads: HashMap<(String, Micros), Read> = store
            .statements(Some(ids), first, plan.scope.end)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .map(|(id, at, r)| ((id, at), r))
            .collect();
        for (id, closed) in &open {
            for c in closed {
                if let Closed::Statements(at, r) = c
                    && *at >= first
                    && *at < plan.scope.end
                {
                    reads.insert((id.clone(), *at), r.clone());
                }
            }
        }
        let reads: Vec<(String, Micros, Read)> =
            reads.into_iter().map(|((id, at), r)| (id, at, r)).collect();
        let mut answer = plan.evaluate(&buckets, &reads);
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
        let (_, _, buckets) = self.whole_range(store, &plan.scope, MINUTE_REACH).await?;
        Ok(plan.evaluate(&buckets))
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
