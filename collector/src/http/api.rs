//! `/api/v1/…`: the Query API as JSON over HTTP, each endpoint the twin of
//! an RPC, answered by the same [`QueryService`].
//!
//! - Answers are the RPC's response message, keyed by proto field names as
//!   `pgfleet … --output json` prints them.
//! - Errors are `{"error": {"code": 404, "status": "NOT_FOUND", "message":
//!   "…"}}`, with the HTTP status that matches the gRPC code.
//! - `Watch` is `/api/v1/watch`, as Server-Sent Events: `full`, `changed`
//!   and `removed` events, each with its JSON.
//! - With read tokens, every endpoint takes one as `Authorization: Bearer`.
//!
//! Query strings name the request's fields: see [`super::params`].

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pgfleet_proto::v1;
use pgfleet_proto::v1::query_server::Query;
use serde::Serialize;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status};

use super::params::Params;
use crate::auth::{Access, Tokens};
use crate::query::QueryService;

/// What the API's handlers share.
#[derive(Clone)]
pub struct Api {
    pub query: Arc<QueryService>,
    pub tokens: Tokens,
}

/// Every endpoint, for the answer to a path that is none.
const ENDPOINTS: &str = "servers, servers/{id}/activity, servers/{id}/pools, servers/{id}/databases, fleet, top-sessions, blocking, metrics, load, top-queries, churn, watch, session";

/// The API's routes.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/api/v1/servers", get(servers))
        .route("/api/v1/servers/{id}/activity", get(activity))
        .route("/api/v1/servers/{id}/pools", get(pools))
        .route("/api/v1/servers/{id}/databases", get(databases))
        .route("/api/v1/fleet", get(fleet))
        .route("/api/v1/top-sessions", get(top_sessions))
        .route("/api/v1/blocking", get(blocking))
        .route("/api/v1/metrics", get(metrics))
        .route("/api/v1/load", get(load))
        .route("/api/v1/top-queries", get(top_queries))
        .route("/api/v1/churn", get(churn))
        .route("/api/v1/watch", get(watch))
        .route("/api/v1/session", get(session))
        .route("/api/v1/{*rest}", get(unknown))
        .with_state(api)
}

/// The HTTP status for a gRPC code, as Google's APIs map them.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code's name, as Google's JSON errors give it.
fn status_name(code: Code) -> String {
    // "NotFound" → "NOT_FOUND".
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: u16,
    status: String,
    message: &'a str,
}

/// A refusal as JSON.
pub fn error(status: &Status) -> Response {
    let code = http_status(status.code());
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_u16(),
            status: status_name(status.code()),
            message: status.message(),
        },
    };
    let mut response = json(code, &body);
    if status.code() == Code::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// `body` as JSON, with `code`.
fn json(code: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => error(&Status::internal(format!(
            "the answer did not encode as JSON: {e}"
        ))),
    }
}

impl Api {
    /// Whether `headers` carry a read token, when read tokens are on.
    pub fn allowed(&self, headers: &HeaderMap) -> Result<(), Status> {
        self.tokens
            .check(
                Access::Read,
                headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
            )
            .map_err(|refused| Status::unauthenticated(refused.to_string()))
    }

    /// Checks the token, reads the request, asks the service, and answers
    /// its response as JSON, or the refusal.
    async fn answer<Req, Resp, Fut>(
        &self,
        headers: &HeaderMap,
        request: impl FnOnce() -> Result<Req, Status>,
        call: impl FnOnce(Arc<QueryService>, Request<Req>) -> Fut,
    ) -> Response
    where
        Resp: Serialize,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let request = match self.allowed(headers).and_then(|()| request()) {
            Ok(r) => r,
            Err(status) => return error(&status),
        };
        match call(self.query.clone(), Request::new(request)).await {
            Ok(response) => json(StatusCode::OK, response.get_ref()),
            Err(status) => error(&status),
        }
    }
}

async fn servers(State(api): State<Api>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    api.answer(
        &headers,
        || {
            let p = Params::parse(q.as_deref(), &["label"])?;
            Ok(v1::ListServersRequest {
                labels: p.labels()?,
            })
        },
        |s, r| async move { s.list_servers(r).await },
    )
    .await
}

async fn activity(
    State(api): State<Api>,
    Path(server_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    api.answer(
        &headers,
        || {
            let p = Params::parse(
                q.as_deref(),
                &[
                    "at",
                    "state",
                    "min_duration",
                    "include_background",
                    "wait_event_type",
                    "database",
                    "user",
                    "application_name",
                ],
            )?;
            Ok(v1::GetActivityRequest {
                server_id,
                state: p.text("state")?,
                min_duration: p.duration("min_duration")?,
                include_background: p.flag("include_background")?,
                wait_event_type: p.text("wait_event_type")?,
                database: p.text("database")?,
                user: p.text("user")?,
                application_name: p.text("application_name")?,
                at: p.time("at")?,
            })
        },
        |s, r| async move { s.get_activity(r).await },
    )
    .await
}

async fn pools(
    State(api): State<Api>,
    Path(server_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    api.answer(
        &headers,
        || {
            Params::parse(q.as_deref(), &[])?;
            Ok(v1::GetPoolsRequest { server_id })
        },
        |s, r| async move { s.get_pools(r).await },
    )
    .await
}

async fn databases(
    State(api): State<Api>,
    Path(server_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    api.answer(
        &headers,
        || {
            Params::parse(q.as_deref(), &[])?;
            Ok(v1::GetDatabasesRequest { server_id })
        },
        |s, r| async move { s.get_databases(r).await },
    )
    .await
}

async fn fleet(State(api): State<Api>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    api.answer(
        &headers,
        || {
            let p = Params::parse(q.as_deref(), &["group_by", "label"])?;
            Ok(v1::FleetSummaryRequest {
                group_by: p.text("group_by")?,
                labels: p.labels()?,
            })
        },
        |s, r| async move { s.fleet_summary(r).await },
    )
    .await
}

async fn top_sessions(
    State(api): State<Api>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    api.answer(
        &headers,
        || {
            let p = Params::parse(q.as_deref(), &["order_by", "label", "limit"])?;
            Ok(v1::TopSessionsRequest {
                order_by: p.text("order_by")?,
                labels: p.labels()?,
                limit: p.number("limit")?,
            })
        },
        |s, r| async move { s.top_sessions(r).await },
    )
    .await
}

async fn blocking(State(api): State<Api>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    api.answer(
        &headers,
        || {
            let p = Params::parse(q.as_deref(), &["server_id", "label"])?;
            Ok(v1::BlockingTreesRequest {
                server_id: p.text("server_id")?,
                labels: p.labels()?,
            })
        },
        |s, r| async move { s.blocking_trees(r).await },
    )
    .await
}

async fn metrics(State(api): State<Api>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    api.answer(
        &headers,
        || {
            let p = Params::parse(
                q.as_deref(),
                &[
                    "metric", "matchers", "start", "end", "range", "step", "group_by",
                ],
            )?;
            let (start, end) = p.range()?;
            Ok(v1::QueryMetricsRequest {
                metric: p.text("metric")?,
                matchers: p.all("matchers"),
                start,
                end,
                step: p.duration("step")?,
                group_by: p.all("group_by"),
            })
        },
        |s, r| async move { s.query_metrics(r).await },
    )
    .await
}

async fn load(State(api): State<Api>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    api.answer(
        &headers,
        || {
            let p = Params::parse(
                q.as_deref(),
                &[
                    "start", "end", "range", "step", "group_by", "matchers", "sessions", "limit",
                ],
            )?;
            let (start, end) = p.range()?;
            let sessions = match p.one("sessions")? {
                None | Some("active") => v1::LoadSessions::Active,
                Some("idle_in_transaction") => v1::LoadSessions::IdleInTransaction,
                Some("background") => v1::LoadSessions::Background,
                Some(other) => {
                    return Err(Status::invalid_argument(format!(
                        "sessions={other:?} is none of active, idle_in_transaction, background"
                    )));
                }
            };
            Ok(v1::QueryLoadRequest {
                start,
                end,
                step: p.duration("step")?,
                group_by: p.text("group_by")?,
                matchers: p.all("matchers"),
                sessions: sessions as i32,
                limit: p.number("limit")?,
            })
        },
        |s, r| async move { s.query_load(r).await },
    )
    .await
}

async fn top_queries(
    State(api): State<Api>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    api.answer(
        &headers,
        || {
            let p = Params::parse(
                q.as_deref(),
                &[
                    "start",
                    "end",
                    "range",
                    "server_id",
                    "matchers",
                    "order_by",
                    "limit",
                ],
            )?;
            let (start, end) = p.range()?;
            Ok(v1::TopQueriesRequest {
                start,
                end,
                server_id: p.text("server_id")?,
                matchers: p.all("matchers"),
                order_by: p.text("order_by")?,
                limit: p.number("limit")?,
            })
        },
        |s, r| async move { s.top_queries(r).await },
    )
    .await
}

async fn churn(State(api): State<Api>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    api.answer(
        &headers,
        || {
            let p = Params::parse(
                q.as_deref(),
                &["start", "end", "range", "server_id", "matchers"],
            )?;
            let (start, end) = p.range()?;
            Ok(v1::GetChurnRequest {
                start,
                end,
                server_id: p.text("server_id")?,
                matchers: p.all("matchers"),
            })
        },
        |s, r| async move { s.get_churn(r).await },
    )
    .await
}

/// `Watch` as Server-Sent Events: the whole fleet first (`full`), then
/// each server as it changes (`changed`) or goes (`removed`). A refusal
/// before the stream starts is a JSON error; one after it is an `error`
/// event, and the stream ends.
async fn watch(State(api): State<Api>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let request = api.allowed(&headers).and_then(|()| {
        let p = Params::parse(q.as_deref(), &["label"])?;
        Ok(v1::WatchRequest {
            labels: p.labels()?,
        })
    });
    let request = match request {
        Ok(r) => r,
        Err(status) => return error(&status),
    };
    let stream = match api.query.watch(Request::new(request)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return error(&status),
    };
    let events = stream.map(|item| -> Result<Event, std::convert::Infallible> {
        use v1::watch_event::Event as E;
        Ok(match item {
            Ok(v1::WatchEvent {
                event: Some(E::Full(full)),
            }) => event("full", &full),
            Ok(v1::WatchEvent {
                event: Some(E::Changed(server)),
            }) => event("changed", &server),
            Ok(v1::WatchEvent {
                event: Some(E::Removed(server_id)),
            }) => event("removed", &server_id),
            Ok(v1::WatchEvent { event: None }) => Event::default().comment(""),
            Err(status) => event(
                "error",
                &ErrorDetail {
                    code: http_status(status.code()).as_u16(),
                    status: status_name(status.code()),
                    message: status.message(),
                },
            ),
        })
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A Server-Sent Event named `name`, with `data` as JSON.
fn event(name: &str, data: &impl Serialize) -> Event {
    match serde_json::to_string(data) {
        Ok(json) => Event::default().event(name).data(json),
        Err(e) => Event::default().event("error").data(e.to_string()),
    }
}

/// Whether reading takes a token, and whether the request carries a good
/// one: what the pages ask before anything else, so that they ask for a
/// token up front rather than after a refusal. Always 200.
async fn session(State(api): State<Api>, headers: HeaderMap) -> Response {
    #[derive(Serialize)]
    struct Session {
        tokens: bool,
        signed_in: bool,
    }
    let tokens = !api.tokens.read.is_empty();
    let answer = Session {
        tokens,
        signed_in: tokens && api.allowed(&headers).is_ok(),
    };
    json(StatusCode::OK, &answer)
}

async fn unknown(Path(rest): Path<String>) -> Response {
    error(&Status::not_found(format!(
        "no endpoint /api/v1/{rest}; the endpoints are {ENDPOINTS}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http_statuses_and_names() {
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(status_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(status_name(Code::Ok), "OK");
    }
}
