//! With the `opentelemetry` feature, a projection's and a process runner's
//! work on an event is a span in the trace the event's `traceparent` names,
//! exported through `tracing-opentelemetry` (here to the SDK's in-memory
//! exporter); the commands a runner sends go out inside that span.

#![cfg(feature = "opentelemetry")]

use std::sync::{Arc, Mutex};

use bookshelf_core::process::{CommandBus, Dispatch, DispatchError, ProcessManager, ProcessRunner};
use bookshelf_core::trace::TraceParent;
use bookshelf_core::{async_trait, Envelope, EventStore, ExpectedVersion, InMemoryStore, ProjectionRunner, StreamId};
use bookshelf_testkit::accounts::{deposit, AccountEvent, Ledger};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// Sends one command per deposit.
#[derive(Default, Clone, Serialize, Deserialize)]
struct Thanks;

impl ProcessManager for Thanks {
    type Event = AccountEvent;
    type Command = String;
    fn react(&mut self, event: &Envelope<AccountEvent>) -> Vec<Dispatch<String>> {
        vec![Dispatch::new(format!("{}/thanks", event.stream_id), "thank".to_owned())]
    }
}

/// Remembers the trace id current when each command was sent.
#[derive(Clone, Default)]
struct Traced(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl CommandBus<String> for Traced {
    async fn dispatch(&self, _: &Dispatch<String>) -> Result<(), DispatchError> {
        let context = tracing::Span::current().context();
        let trace_id = context.span().span_context().trace_id().to_string();
        self.0.lock().unwrap().push(trace_id);
        Ok(())
    }
}

#[tokio::test]
async fn readers_continue_the_events_trace_as_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // This thread's subscriber: the test runtime has one thread, so the
    // runners' tasks see it too.
    let _default = tracing::subscriber::set_default(subscriber);

    let store = InMemoryStore::new();
    let request: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    let mut traced = deposit(5);
    traced.metadata.traceparent = Some(request.to_string());
    let untraced = deposit(7);
    let written = store
        .append(
            &StreamId::new("account-1"),
            ExpectedVersion::Any,
            vec![traced, untraced],
        )
        .await
        .unwrap();
    let end = written.last_position.next();

    let view = ProjectionRunner::<Ledger, _>::new("ledger", store.clone()).start();
    let bus = Traced::default();
    let process = ProcessRunner::<Thanks, _, _>::new("thanks", store.clone(), bus.clone()).start();
    view.handle().wait_for(end).await.unwrap();
    process.wait_for(end).await.unwrap();
    view.stop().await.unwrap();
    process.stop().await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let in_trace: Vec<_> = spans
        .iter()
        .filter(|span| span.span_context.trace_id().to_string() == request.trace_id())
        .collect();
    let names: Vec<&str> = in_trace.iter().map(|span| span.name.as_ref()).collect();
    assert!(names.contains(&"ledger Deposited"), "the projection's span: {names:?}");
    assert!(
        names.contains(&"thanks Deposited"),
        "the process runner's span: {names:?}"
    );
    for span in &in_trace {
        assert_eq!(
            span.parent_span_id.to_string(),
            request.span_id(),
            "{} is a child of the request's span",
            span.name
        );
    }
    // The event without a traceparent is handled in spans of their own trace.
    assert_eq!(spans.len(), 4, "two events, two readers: {spans:?}");
    assert_eq!(in_trace.len(), 2);

    // The runner's first command went out inside the event's trace.
    let sent = bus.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0], request.trace_id());
    assert_ne!(sent[1], request.trace_id());
}
