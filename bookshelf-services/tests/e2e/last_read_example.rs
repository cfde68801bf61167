//! `cargo run --example last_read` on the embedded default, as a real
//! process driven over HTTP.

use crate::support::Service;
use serde_json::{json, Value};

#[tokio::test]
async fn last_read_lists_books_as_they_are_read_and_refuses_bad_input() {
    let service = Service::start("last_read", &["--addr", "127.0.0.1"]);
    let http = reqwest::Client::new();
    let url = &service.url;

    let empty: Value = http.get(format!("{url}/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(empty, json!([]));

    let mut ids = Vec::new();
    for (n, title) in ["Dune", "Emma", "Ulysses", "Beloved", "Middlemarch", "Persuasion"]
        .iter()
        .enumerate()
    {
        let added = http
            .post(format!("{url}/books"))
            .json(&json!({ "title": title, "author": format!("Author {n}"), "isbn": "978-0-441-01359-3" }))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 201);
        let location = added.headers()["location"].to_str().unwrap().to_owned();
        let body: Value = added.json().await.unwrap();
        assert_eq!(body["version"], 1);
        let id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(location, format!("/books/{id}"));
        ids.push(id);
    }
    for id in &ids {
        let read = http.post(format!("{url}/books/{id}/read")).send().await.unwrap();
        assert_eq!(read.status(), 200);
    }
    // Reading the first book again moves it to the top.
    http.post(format!("{url}/books/{}/read", ids[0])).send().await.unwrap();

    let list: Value = http.get(format!("{url}/")).send().await.unwrap().json().await.unwrap();
    let titles: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Dune", "Persuasion", "Middlemarch", "Beloved", "Ulysses"]);
    assert_eq!(list[0]["id"], ids[0].as_str());
    assert!(list[0]["read_at"].as_str().unwrap().ends_with('Z'));

    let malformed = http
        .post(format!("{url}/books"))
        .header("content-type", "application/json")
        .body(r#"{"title": "Dune","#)
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let error: Value = malformed.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("JSON"), "{error}");

    let invalid_isbn = http
        .post(format!("{url}/books"))
        .json(&json!({ "title": "Dune", "author": "Frank Herbert", "isbn": "978-0-441-01359-4" }))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid_isbn.status(), 400);

    let unknown = http
        .post(format!("{url}/books/no-such-book/read"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let health: Value = http
        .get(format!("{url}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    assert!(service.terminate(), "last_read exits cleanly on SIGTERM");
}
