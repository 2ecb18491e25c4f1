//! The collector's HTTP port (`--http-listen`): `/metrics` for Prometheus,
//! `/healthz`, the Query API as JSON under `/api/v1` ([`api`]), and the web
//! UI's pages ([`ui`]).

pub mod api;
mod params;
mod ui;

use std::sync::Arc;

use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::error;

use crate::aggregator::AggregatorHandle;
use crate::auth::Tokens;
use crate::query::QueryService;

/// Serves the HTTP port on `listener` until `shutdown` resolves. `/metrics`
/// takes a token of `tokens.metrics` and `/api/v1` one of `tokens.read`,
/// when there are any.
pub fn serve(
    listener: TcpListener,
    aggregator: AggregatorHandle,
    query: QueryService,
    tokens: Tokens,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let app = axum::Router::new()
        .merge(crate::metrics::routes(aggregator, tokens.clone()))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api::routes(api::Api {
            query: Arc::new(query),
            tokens,
        }))
        .merge(ui::routes());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            error!(error = %e, "The HTTP server stopped.");
        }
    })
}
