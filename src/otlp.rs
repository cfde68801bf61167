//! Export to OpenTelemetry over OTLP/HTTP (feature `opentelemetry`).
//!
//! With the feature, each reader's work on an event is a span in the trace
//! the event's `traceparent` names (see [`trace`](crate::trace)). An
//! [`OtlpExport`] sends the process's spans, those among them, to a
//! collector, configured as OpenTelemetry's SDKs are: from
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
//! `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`http/protobuf`, the default, or `http/json`).
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let export = bookshelf::otlp::OtlpExport::from_env("last-read")?;
//! tracing_subscriber::registry()
//!     .with(export.as_ref().map(|export| export.layer()))
//!     .init();
//! // ... run the service; then, to send what is left:
//! if let Some(export) = export {
//!     export.shutdown();
//! }
//! # Ok(()) }
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// Why the export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP export: {0}")]
pub struct OtlpError(String);

/// Spans sent to an OpenTelemetry collector in batches, by a thread of
/// their own.
pub struct OtlpExport {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExport").finish_non_exhaustive()
    }
}

impl OtlpExport {
    /// The export OpenTelemetry's environment variables describe, for
    /// service `service` (its `service.name`, unless `OTEL_SERVICE_NAME`
    /// says otherwise); `None` when no endpoint is set.
    ///
    /// # Errors
    /// [`OtlpError`] when the exporter cannot be built (an endpoint that is
    /// not a URL, say).
    pub fn from_env(service: &str) -> Result<Option<OtlpExport>, OtlpError> {
        let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Ok("http/json") => Protocol::HttpJson,
            Ok("http/protobuf") | Err(_) => Protocol::HttpBinary,
            Ok(other) => {
                return Err(OtlpError(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL {other:?}: only http/protobuf and http/json are built in"
                )))
            }
        };
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| service.to_owned());
        // The exporter's blocking HTTP client is made (and later dropped) off
        // any async runtime's threads.
        let built = std::thread::spawn(move || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .build()
                .map(|exporter| {
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(Resource::builder().with_service_name(service).build())
                        .build()
                })
        })
        .join()
        .map_err(|_| OtlpError("the exporter panicked while being built".into()))?;
        let provider = built.map_err(|error| OtlpError(error.to_string()))?;
        Ok(Some(OtlpExport { provider }))
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans for
    /// this export.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("bookshelf"))
    }

    /// Sends the spans not sent yet and stops the export.
    pub fn shutdown(self) {
        let provider = self.provider;
        // The batch thread is joined: off the async runtime's threads.
        let _ = std::thread::spawn(move || {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "the OTLP export did not shut down cleanly");
            }
        })
        .join();
    }
}
