//! One request's W3C trace, followed: a reservation sent through the
//! gateway with a `traceparent`, the `lending` service on Kafka (tansu,
//! from `scripts/test.sh`) storing it, and the loan process continuing the
//! trace into the commands it sends because of it (the charge, then the
//! lending of the copy). Every event of the loan carries the request's
//! trace id, each in a span of its own.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{brokers, get_json, Service};
use serde_json::{json, Value};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn trace_id(traceparent: &Value) -> Option<&str> {
    traceparent.as_str()?.split('-').nth(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_trace_reaches_the_commands_a_process_manager_sends() {
    let topic = format!("bookshelf-trace-{}", uuid::Uuid::new_v4().simple());
    let data = std::env::temp_dir().join(&topic);
    let lending = Service::start(
        "lending",
        &[
            "--broker",
            &brokers(),
            "--topic",
            &topic,
            "--data",
            &data.display().to_string(),
        ],
    );
    let mut args = vec!["--service".to_owned(), format!("lending={}", lending.url)];
    for prefix in ["/members", "/copies"] {
        args.extend(["--route".to_owned(), format!("{prefix}=lending")]);
    }
    let gateway = Service::start("gateway", &args);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value, trace: Option<&str>| {
        let mut request = http.post(format!("{}{path}", gateway.url)).json(&body);
        if let Some(trace) = trace {
            request = request.header("traceparent", trace);
        }
        request.send()
    };
    let start = Instant::now();
    // The one writer claims its partitions first: retry until it takes commands.
    loop {
        let answer = post("/members", json!({"id": "ann", "balance": 10}), None)
            .await
            .unwrap();
        if answer.status().is_success() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "lending takes commands");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(post("/copies", json!({"id": "c1"}), None)
        .await
        .unwrap()
        .status()
        .is_success());
    let caller = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let reserved = post(
        "/copies/c1/reserve",
        json!({"loan": "loan-t", "member": "ann", "fee": 3}),
        Some(&caller),
    )
    .await
    .unwrap();
    assert_eq!(reserved.status(), 202);

    // The loan ends: the copy is lent, after the charge.
    let start = Instant::now();
    let (copy, member) = loop {
        let copy = get_json(&http, &format!("{}/copies/c1", gateway.url)).await;
        let member = get_json(&http, &format!("{}/members/ann", gateway.url)).await;
        if copy["state"]["Lent"].is_object() {
            break (copy, member);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the loan ended: {copy}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let event = |stream: &Value, kind: &str| {
        stream["events"]
            .as_array()
            .and_then(|events| events.iter().find(|e| e["type"] == kind))
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} in {stream}"))
    };
    let reservation = event(&copy, "CopyReserved");
    let charge = event(&member, "MemberCharged");
    let lent = event(&copy, "CopyLent");
    let mut spans = BTreeSet::new();
    for (what, stored) in [("reservation", &reservation), ("charge", &charge), ("lending", &lent)] {
        assert_eq!(trace_id(&stored["traceparent"]), Some(TRACE_ID), "{what}: {stored}");
        assert_eq!(stored["correlation_id"], "loan-t", "{what}: {stored}");
        spans.insert(stored["traceparent"].as_str().unwrap_or_default().to_owned());
    }
    assert!(!spans.contains(&caller), "each step is a span of its own: {spans:?}");
    assert_eq!(spans.len(), 3, "{spans:?}");
    // The gateway and the service started no trace of their own.
    let unrelated = event(&member, "MemberJoined");
    assert_ne!(trace_id(&unrelated["traceparent"]), Some(TRACE_ID));
    let _ = std::fs::remove_dir_all(&data);
}
