//! Built with feature `opentelemetry` and pointed at a collector through
//! OpenTelemetry's standard variables, a service exports the spans in which
//! its views handle each event, in the trace of the request that caused
//! it. The collector here is a small OTLP/HTTP (JSON) receiver in the test.

#![cfg(feature = "opentelemetry")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{get_json, Service};
use axum::routing::post;
use serde_json::Value;

/// Every span the collector received: (trace id, parent span id, name).
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::Json<Value>| {
            let store = Arc::clone(&store);
            async move {
                let spans = body["resourceSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|resource| resource["scopeSpans"].as_array().into_iter().flatten())
                    .flat_map(|scope| scope["spans"].as_array().into_iter().flatten());
                let mut store = store.lock().unwrap();
                for span in spans {
                    let field = |name: &str| span[name].as_str().unwrap_or_default().to_owned();
                    // Ids in OTLP's JSON are hex, of either case.
                    let id = |name: &str| field(name).to_lowercase();
                    store.push((id("traceId"), id("parentSpanId"), field("name")));
                }
                axum::Json(serde_json::json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_exports_its_views_spans_in_the_requests_trace() {
    let (endpoint, received) = collector().await;
    let service = Service::start_verbatim(
        "last_read",
        &["--in-memory", "--port", "0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let http = reqwest::Client::new();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let added: Value = http
        .post(format!("{}/books", service.url))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({"title": "Dune", "author": "Frank Herbert", "isbn": "9780441013593"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = added["id"].as_str().expect("the new book's id");
    let events = get_json(&http, &format!("{}/books/{id}/events", service.url)).await;
    // The service continued the request's trace in the event's metadata.
    let recorded = events["events"][0]["metadata"]["traceparent"]
        .as_str()
        .expect("the event keeps the trace")
        .to_owned();
    let parent_span = recorded.split('-').nth(2).unwrap().to_owned();
    assert!(recorded.contains(trace_id), "{recorded}");

    let start = Instant::now();
    let wanted = ["last-read BookAdded", "authors BookAdded"];
    loop {
        let spans = received.lock().unwrap().clone();
        let found: Vec<_> = spans
            .iter()
            .filter(|(trace, parent, name)| {
                trace == trace_id && *parent == parent_span && wanted.contains(&name.as_str())
            })
            .collect();
        if found.len() == wanted.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the views' spans for the event, children of {parent_span} in trace {trace_id}, reach the collector; \
             it has {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(service.terminate());
}
