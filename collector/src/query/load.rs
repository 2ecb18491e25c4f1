//! `QueryLoad`, `TopQueries` and `GetChurn`: a plan checked from the
//! request, the buckets and statement reads it needs from the store, and the
//! answer worked out from them (see [`crate::load::ask`]).

use std::sync::Arc;

use pgfleet_proto::time::now_micros;
use pgfleet_proto::v1;
use tonic::Status;

use super::QueryService;
use crate::aggregator::ServerView;
use crate::load::ask::{ChurnPlan, LoadPlan, Scope, TopPlan};
use crate::load::{Bucket, COARSE_US, FINE_US};
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

    /// How long the fine buckets are kept.
    fn fine_kept_us(store: &Store) -> i64 {
        store.retention().frames.as_micros() as i64
    }

    /// The buckets `scope` needs, of `servers`.
    async fn buckets(
        &self,
        store: &Store,
        scope: &Scope,
        servers: &[&Arc<ServerView>],
        all: usize,
    ) -> Result<Vec<(String, Bucket)>, Status> {
        let ids = (servers.len() != all).then(|| {
            servers
                .iter()
                .map(|s| s.server_id.clone())
                .collect::<Vec<_>>()
        });
        let internal = |e: crate::store::StoreError| Status::internal(e.to_string());
        let len = if scope.fine { FINE_US } else { COARSE_US };
        let mut read = store
            .load(ids.clone(), len, scope.start, scope.end)
            .await
            .map_err(internal)?;
        if let Some((start, end)) = scope.fine_tail() {
            read.extend(
                store
                    .load(ids, FINE_US, start, end)
                    .await
                    .map_err(internal)?,
            );
        }
        Ok(scope.usable(read))
    }

    /// The texts of `fingerprints` (16 hex digits each), in that order.
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
                u64::from_str_radix(k, 16)
                    .ok()
                    .and_then(|f| texts.get(&f).cloned())
                    .unwrap_or_default()
            })
            .collect())
    }

    pub(super) async fn load_answer(
        &self,
        req: v1::QueryLoadRequest,
    ) -> Result<v1::QueryLoadResponse, Status> {
        let store = self.history()?;
        let plan = LoadPlan::new(&req, now_micros(), Self::fine_kept_us(store))
            .map_err(Status::invalid_argument)?;
        let view = self.aggregator.view();
        let servers = plan.scope.servers(&view.servers);
        plan.check_group(&servers)
            .map_err(Status::invalid_argument)?;
        let buckets = self
            .buckets(store, &plan.scope, &servers, view.servers.len())
            .await?;
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
        let plan = TopPlan::new(&req, now_micros(), Self::fine_kept_us(store))
            .map_err(Status::invalid_argument)?;
        let view = self.aggregator.view();
        let servers = plan.scope.servers(&view.servers);
        let buckets = self
            .buckets(store, &plan.scope, &servers, view.servers.len())
            .await?;
        let ids: Vec<String> = servers.iter().map(|s| s.server_id.clone()).collect();
        let everyone = ids.len() == view.servers.len();
        let reads = store
            .statements((!everyone).then_some(ids), plan.scope.start, plan.scope.end)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
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
        let plan = ChurnPlan::new(&req, now_micros(), Self::fine_kept_us(store))
            .map_err(Status::invalid_argument)?;
        let view = self.aggregator.view();
        let servers = plan.scope.servers(&view.servers);
        let buckets = self
            .buckets(store, &plan.scope, &servers, view.servers.len())
            .await?;
        Ok(plan.evaluate(&buckets))
    }
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
    }
}
