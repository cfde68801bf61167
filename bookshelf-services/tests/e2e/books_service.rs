//! The books service as a real process: its HTTP semantics, and, with
//! `last_read`, two services on one Kafka topic (tansu, from scripts/test.sh).

use std::time::{Duration, Instant};

use crate::support::{brokers, Service};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DUNE: &str = "9780441013593";

#[tokio::test]
async fn books_speaks_http_with_versions_conflicts_and_an_event_log() {
    let books = Service::start::<&str>("books", &[]);
    let (url, http) = (&books.url, reqwest::Client::new());

    let added = http
        .post(format!("{url}/books"))
        .header("x-correlation-id", "req-42")
        .json(&json!({"title": "Dune", "author": "Frank Herbert", "isbn": DUNE}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let location = added.headers()["location"].to_str().unwrap().to_owned();
    let id = added.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/books/{id}"));

    let book = http.get(format!("{url}{location}")).send().await.unwrap();
    assert_eq!(book.headers()["etag"], "\"1\"");
    let book: Value = book.json().await.unwrap();
    assert_eq!(
        (book["title"].as_str(), book["reads"].as_u64()),
        (Some("Dune"), Some(0))
    );
    assert_eq!(book["_links"]["events"]["href"], format!("/books/{id}/events"));

    // If-Match: the first writer at version 1 wins, the second gets a 409.
    let read = |version: &str| {
        http.post(format!("{url}/books/{id}/read"))
            .header("if-match", format!("\"{version}\""))
            .send()
    };
    let first = read("1").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["etag"], "\"2\"");
    let stale = read("1").await.unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    assert!(stale.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("conflict"));
    let garbled = http
        .post(format!("{url}/books/{id}/read"))
        .header("if-match", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status(), StatusCode::BAD_REQUEST);

    // Validation and bad input.
    let rate = |body: &'static str| {
        http.put(format!("{url}/books/{id}/rating"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(rate(r#"{"stars": 7}"#).await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(rate(r#"{"stars": "#).await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        rate(r#"{"stars": 4, "extra": 1}"#).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(rate(r#"{"stars": 4}"#).await.unwrap().status(), StatusCode::OK);
    let duplicate = http
        .post(format!("{url}/books"))
        .json(&json!({"title": "", "author": "x", "isbn": DUNE}))
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), StatusCode::BAD_REQUEST);
    for path in ["/books/nope", "/books/nope/events", "/nowhere"] {
        let missing = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(missing.json::<Value>().await.unwrap()["error"].is_string());
    }

    // The event log, as linked resources, with the correlation id in metadata.
    let log: Value = http
        .get(format!("{url}/books/{id}/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = log["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["BookAdded", "BookRead", "BookRated"]);
    assert_eq!(events[0]["metadata"]["correlation_id"], "req-42");
    assert_eq!(log["_links"]["book"]["href"], format!("/books/{id}"));
    let second_href = events[1]["_links"]["self"]["href"].as_str().unwrap().to_owned();
    let second: Value = http
        .get(format!("{url}{second_href}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["version"], 2);
    assert_eq!(second["payload"]["title"], "Dune");

    // Removal: 200, then the book is gone (410) and commands on it too.
    let removed = http.delete(format!("{url}/books/{id}")).send().await.unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!(
        http.get(format!("{url}/books/{id}")).send().await.unwrap().status(),
        StatusCode::GONE
    );
    assert_eq!(read("4").await.unwrap().status(), StatusCode::GONE);

    assert!(books.terminate(), "books exits cleanly on SIGTERM");
}

#[tokio::test]
async fn books_and_last_read_are_two_services_on_one_kafka_topic() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let topic = format!("bookshelf-test-services-{nanos}");
    let brokers = brokers();
    let books = Service::start("books", &["--broker", &brokers, "--topic", &topic]);
    let last_read = Service::start("last_read", &["--broker", &brokers, "--topic", &topic]);
    let http = reqwest::Client::new();

    let mut ids = Vec::new();
    for title in ["Dune", "Emma", "Ulysses"] {
        let added: Value = http
            .post(format!("{}/books", books.url))
            .json(&json!({"title": title, "author": "Somebody", "isbn": DUNE}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = added["id"].as_str().unwrap().to_owned();
        let read = http
            .post(format!("{}/books/{id}/read", books.url))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), StatusCode::OK);
        ids.push(id);
    }
    let start = Instant::now();
    loop {
        let list: Value = http
            .get(format!("{}/", last_read.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let titles: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["title"].as_str().unwrap())
            .collect();
        if titles == ["Ulysses", "Emma", "Dune"] {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "last_read shows {titles:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(books.terminate());
    assert!(last_read.terminate());
}
