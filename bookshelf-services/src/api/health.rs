//! Health, metrics in Prometheus's text format, and the answer to a path
//! no route takes.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::docs::Api;

use super::*;

/// `GET /health`, and `GET /metrics`: the process's metrics in Prometheus's
/// text format (see `bookshelf::telemetry` for the library's own).
pub fn health_routes() -> Api {
    Api::new().route(__path_health, health).route(__path_metrics, metrics)
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

/// Installs the Prometheus recorder, so that what happens before the first
/// scrape is counted: call at start.
pub fn record_metrics() {
    let _ = prometheus();
}

/// The process's metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus's text format, version 0.0.4", body = String,
        content_type = "text/plain"))
)]
pub async fn metrics() -> Response {
    let text = prometheus().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// A JSON 404 for every path no route takes.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such resource")
}
