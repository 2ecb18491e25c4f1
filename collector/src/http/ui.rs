//! The web UI: a page shell, a script and a stylesheet, with uPlot (MIT,
//! v1.6.32, from the npm registry, in `ui/`), all embedded in the binary.
//! The pages draw themselves from the JSON API ([`super::api`]); the URL
//! holds their state, so every path below serves the same shell.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The files, by name under `/ui/`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("ui/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("ui/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("ui/uPlot.LICENSE"),
    ),
];

const INDEX: &[u8] = include_bytes!("ui/index.html");

/// Scripts and styles only from the collector itself (the bars' widths are
/// inline styles).
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

/// The pages' routes.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/servers/{id}", get(page))
        .route("/queries/{fingerprint}", get(page))
        .route("/ui/{file}", get(asset))
}

async fn page() -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assets_stay_small() {
        let total: usize = ASSETS.iter().map(|(_, _, b)| b.len()).sum::<usize>() + INDEX.len();
        assert!(total < 300 * 1024, "the UI's files take {total} bytes");
    }
}
