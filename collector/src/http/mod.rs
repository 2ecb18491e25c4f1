//! The collector's HTTP port (`--http-listen`): `/metrics` for Prometheus,
//! `/healthz`, the Query API as JSON under `/api/v1` ([`api`]), and the web
//! UI's pages ([`ui`]). With the collector's certificate (`--tls-cert`), it
//! serves HTTPS ([`tls`]).

pub mod api;
mod params;
mod tls;
mod ui;

use std::sync::Arc;

use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::error;

use crate::aggregator::AggregatorHandle;
use crate::auth::Tokens;
use crate::query::QueryService;

/// Serves the HTTP port on `listener` (over TLS with `tls`) until
/// `shutdown` resolves. `/metrics` takes a token of `tokens.metrics` and
/// `/api/v1` one of `tokens.read`, when there are any.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    aggregator: AggregatorHandle,
    query: QueryService,
    tokens: Tokens,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let app = axum::Router::new()
        .merge(crate::metrics::routes(
            aggregator,
            query.store_reads(),
            tokens.clone(),
        ))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api::routes(api::Api {
            query: Arc::new(query),
            tokens,
        }))
        .merge(ui::routes());
    tokio::spawn(async move {
        let served = match tls {
            Some(config) => match tls::TlsListener::new(listener, config) {
                Ok(listener) => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
                Err(e) => Err(e),
            },
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        if let Err(e) = served {
            error!(error = %e, "The HTTP server stopped.");
        }
    })
}
