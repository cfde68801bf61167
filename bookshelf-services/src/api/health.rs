//! Health, metrics in Prometheus's text format, and the answer to a path
//! no route takes.
//!
//! Besides the library's metrics (`bookshelf::telemetry`), every service
//! shows, from its start:
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `bookshelf_build_info` | gauge (1) | `service`, `version` | the program and its version |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`, `process_start_time_seconds`, … | gauges and a counter | | the process, read from `/proc` at each scrape (the `metrics-process` crate) |
//! | `bookshelf_http_requests_total` | counter | `method`, `route`, `status` | requests answered; `route` is the route's template (`/books/{id}`), `unmatched` for a path no route takes |
//! | `bookshelf_http_request_duration_seconds` | histogram | `method`, `route` | from the request to its answer's head |

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::docs::Api;

use super::*;

/// `GET /health`; `GET /metrics`, the process's metrics in Prometheus's
/// text format (see `bookshelf::telemetry` for the library's own);
/// `GET /runners` (see [`runner_routes`](super::runner_routes)); and the
/// dead letters (see [`dead_letter_routes`](super::dead_letter_routes)).
pub fn health_routes() -> Api {
    Api::new()
        .route(__path_health, health)
        .route(__path_metrics, metrics)
        .merge(super::runner_routes())
        .merge(super::dead_letter_routes())
        .merge(super::view_routes())
}

/// What `GET /health` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Healthy {
    /// `ok`.
    status: String,
}

/// Whether the service serves.
#[utoipa::path(
    get, path = "/health", tag = "meta",
    responses((status = 200, description = "The service serves", body = Healthy))
)]
async fn health() -> axum::Json<Healthy> {
    axum::Json(Healthy { status: "ok".into() })
}

/// The Prometheus recorder of this process, installed on first use.
fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Latency buckets from half a millisecond to ten seconds.
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ];
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|builder| builder.install_recorder())
                .map_err(|error| tracing::error!(%error, "no Prometheus recorder: /metrics stays empty"))
                .ok()
        })
        .as_ref()
}

/// `bookshelf_http_requests_total`.
pub const HTTP_REQUESTS: &str = "bookshelf_http_requests_total";
/// `bookshelf_http_request_duration_seconds`.
pub const HTTP_REQUEST_DURATION: &str = "bookshelf_http_request_duration_seconds";
/// `bookshelf_build_info`.
pub const BUILD_INFO: &str = "bookshelf_build_info";

/// The collector of the process's own metrics.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Installs the Prometheus recorder, so that what happens before the first
/// scrape is counted, and sets the build info and the process's metrics:
/// call at start.
pub fn record_metrics() {
    if prometheus().is_none() {
        return;
    }
    metrics::gauge!(BUILD_INFO, "service" => super::program_name(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    process().describe();
    process().collect();
}

/// Counts each request by route and status, and times it: the layer
/// [`traced`](super::traced) puts on every service.
pub async fn count_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_REQUEST_DURATION, "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status).increment(1);
    response
}

/// The process's metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus's text format, version 0.0.4", body = String,
        content_type = "text/plain"))
)]
pub async fn metrics() -> Response {
    process().collect();
    let text = prometheus().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// A JSON 404 for every path no route takes.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such resource")
}
