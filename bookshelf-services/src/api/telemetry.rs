//! Logs and traces: the structured log every service writes, and the export
//! of its spans to an OpenTelemetry collector.

use crate::logs;

use super::*;

/// Structured logs on standard error, filtered by `RUST_LOG` (default `info`);
/// built with feature `opentelemetry` and given `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// spans go to that OpenTelemetry collector too, as this program's name.
///
/// Lines are written by a thread of their own, in batches (see
/// [`logs`]), so that a request never waits for standard error; none is
/// dropped. Keep what this returns until the end of `main`: dropping it
/// writes what is queued.
#[must_use = "dropping it stops the logs"]
pub fn init_tracing() -> Logging {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    record_metrics();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = logs::batched(std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .fmt_fields(logs::Fields)
        .with_timer(logs::Time)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "opentelemetry")]
    {
        match bookshelf::otlp::OtlpExport::from_env(&program_name()) {
            Ok(export) => {
                registry.with(export.as_ref().map(|export| export.layer())).init();
                if let Some(export) = export {
                    tracing::info!("exporting spans over OTLP");
                    *EXPORT.lock().unwrap_or_else(|p| p.into_inner()) = Some(export);
                }
            }
            Err(error) => {
                registry.init();
                tracing::error!(%error, "spans are not exported");
            }
        }
    }
    #[cfg(not(feature = "opentelemetry"))]
    registry.init();
    Logging(guard)
}

/// This program's name, as its file is named (`last_read`, `books`, …): the
/// service name its metrics and spans carry.
pub fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|stem| stem.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "bookshelf".to_owned())
}

/// The log writer's thread: dropped, it writes what is queued and ends.
pub struct Logging(#[allow(dead_code)] logs::Flush);

/// The OTLP export, to finish at shutdown.
#[cfg(feature = "opentelemetry")]
static EXPORT: std::sync::Mutex<Option<bookshelf::otlp::OtlpExport>> = std::sync::Mutex::new(None);

/// Sends the spans not exported yet, if spans are exported.
pub fn finish_tracing() {
    #[cfg(feature = "opentelemetry")]
    if let Some(export) = EXPORT.lock().unwrap_or_else(|p| p.into_inner()).take() {
        export.shutdown();
    }
}
