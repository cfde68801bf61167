//! `GET /metrics` after a known workload: `last_read` (in memory) behind the
//! gateway, seven commands and a stray path sent through the gateway, then
//! both scraped and their numbers checked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::Service;
use serde_json::json;

/// The samples of a Prometheus text page: `name{labels}` to value.
async fn scrape(url: &str) -> BTreeMap<String, f64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:#?}", samples.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload() {
    let shelf = Service::start("last_read", &["--in-memory"]);
    let mut args: Vec<String> = Vec::new();
    for name in ["books", "last-read"] {
        args.extend(["--service".into(), format!("{name}={}", shelf.url)]);
        args.extend(["--route".into(), format!("/{name}={name}")]);
    }
    let gateway = Service::start("gateway", &args);
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for title in ["Dune", "Emma", "Kindred"] {
        let added: serde_json::Value = http
            .post(format!("{}/books", gateway.url))
            .json(&json!({"title": title, "author": "Somebody", "isbn": "9780441013593"}))
            .send()
            .await
            .expect("an answer")
            .json()
            .await
            .expect("JSON");
        ids.push(added["id"].as_str().expect("an id").to_owned());
    }
    for id in &ids[..2] {
        let read = http
            .post(format!("{}/books/{id}/read", gateway.url))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
    }
    let invalid = http
        .post(format!("{}/books", gateway.url))
        .json(&json!({"title": "X", "author": "Y", "isbn": "123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let missing = http
        .post(format!("{}/books/nobody/read", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let stray = http.get(format!("{}/nowhere", gateway.url)).send().await.unwrap();
    assert_eq!(stray.status(), 404);

    // The service: commands by outcome, events, the views' positions.
    let service = scrape(&shelf.url).await;
    assert_eq!(
        sample(&service, r#"bookshelf_commands_total{aggregate="book",outcome="ok"}"#),
        5.0
    );
    assert_eq!(
        sample(
            &service,
            r#"bookshelf_commands_total{aggregate="book",outcome="rejected"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &service,
            r#"bookshelf_command_duration_seconds_count{aggregate="book"}"#
        ),
        7.0
    );
    assert_eq!(
        sample(&service, r#"bookshelf_events_appended_total{store="memory"}"#),
        5.0
    );
    let start = Instant::now();
    loop {
        let service = scrape(&shelf.url).await;
        let at = |reader: &str, what: &str| {
            service
                .get(&format!(r#"bookshelf_reader_{what}{{reader="{reader}",partition=""}}"#))
                .copied()
        };
        if at("last-read", "position") == Some(5.0) && at("authors", "position") == Some(5.0) {
            assert_eq!(at("last-read", "lag"), Some(0.0));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the views reached position 5"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The gateway: requests by route, status and instance, and discovery.
    let front = scrape(&gateway.url).await;
    let requests = |route: &str, status: u16, instance: &str| {
        front
            .get(&format!(
                r#"bookshelf_gateway_requests_total{{route="{route}",status="{status}",instance="{instance}"}}"#
            ))
            .copied()
            .unwrap_or(0.0)
    };
    let by_instance: f64 = front
        .iter()
        .filter(|(name, _)| name.starts_with("bookshelf_gateway_requests_total{route=\"/books\""))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(by_instance, 7.0, "{front:#?}");
    assert_eq!(requests("none", 404, "-"), 1.0, "{front:#?}");
    assert_eq!(
        sample(
            &front,
            r#"bookshelf_gateway_request_duration_seconds_count{route="/books"}"#
        ),
        7.0
    );
    assert_eq!(sample(&front, r#"bookshelf_discovery_instances{service="books"}"#), 1.0);
    let statuses: BTreeMap<u16, f64> = [201, 200, 400, 404]
        .into_iter()
        .map(|status| {
            let total: f64 = front
                .iter()
                .filter(|(name, _)| {
                    name.starts_with("bookshelf_gateway_requests_total{route=\"/books\"")
                        && name.contains(&format!("status=\"{status}\""))
                })
                .map(|(_, value)| value)
                .sum();
            (status, total)
        })
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([(200, 2.0), (201, 3.0), (400, 1.0), (404, 1.0)])
    );
}
