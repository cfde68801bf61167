//! `GET /metrics` after a known workload: `last_read` (in memory) behind the
//! gateway, seven commands and a stray path sent through the gateway, then
//! both scraped and their numbers checked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::{add_book, read_book, Service};
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
        ids.push(add_book(&http, &gateway.url, title).await);
    }
    for id in &ids[..2] {
        read_book(&http, &gateway.url, id).await;
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

/// One sample of a scrape, as Prometheus's own Python client parses it.
#[derive(serde::Deserialize, Debug)]
struct Parsed {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
    /// The type of the sample's family.
    kind: String,
}

/// `text` parsed by `prometheus_client` (from PyPI): a page a standard
/// parser refuses fails the test.
fn parse_with_prometheus_client(text: &str) -> Vec<Parsed> {
    use std::io::Write;
    let python = std::env::var("BOOKSHELF_PYTHON").unwrap_or_else(|_| {
        panic!(
            "this test needs prometheus-client from PyPI: run scripts/test.sh, which installs it, \
             or set BOOKSHELF_PYTHON to a python that has it (scripts/python.sh prints one)"
        )
    });
    const SCRIPT: &str = "
import json, sys
from prometheus_client.parser import text_string_to_metric_families
print(json.dumps([
    {'name': s.name, 'labels': s.labels, 'value': s.value, 'kind': family.type}
    for family in text_string_to_metric_families(sys.stdin.read())
    for s in family.samples
]))
";
    let mut child = std::process::Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .expect("its input")
        .write_all(text.as_bytes())
        .expect("the page written to it");
    let out = child.wait_with_output().expect("python ends");
    assert!(
        out.status.success(),
        "prometheus_client refused the page: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's samples as JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_from_the_start_and_a_standard_parser_reads_them() {
    let shelf = Service::start("last_read", &["--in-memory"]);
    let http = reqwest::Client::new();
    // No command yet: one request to a route, one to no route.
    let missing = http.get(format!("{}/books/nobody", shelf.url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let stray = http.get(format!("{}/nowhere", shelf.url)).send().await.unwrap();
    assert_eq!(stray.status(), 404);
    let text = http
        .get(format!("{}/metrics", shelf.url))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("text");
    let samples = parse_with_prometheus_client(&text);
    let find = |name: &str, labels: &[(&str, &str)]| -> &Parsed {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };

    // The build, and the process read from /proc.
    let build = find("bookshelf_build_info", &[("service", "last_read")]);
    assert_eq!(
        (build.value, build.labels["version"].as_str()),
        (1.0, env!("CARGO_PKG_VERSION"))
    );
    assert!(find("process_resident_memory_bytes", &[]).value > 1e6, "{text}");
    assert!(find("process_open_fds", &[]).value >= 3.0, "{text}");
    assert!(find("process_start_time_seconds", &[]).value > 1.7e9, "{text}");
    assert_eq!(find("process_cpu_seconds_total", &[]).kind, "counter");

    // Counters that have not moved, at 0.
    for outcome in ["ok", "duplicate", "rejected", "conflict", "failed"] {
        let commands = find(
            "bookshelf_commands_total",
            &[("aggregate", "book"), ("outcome", outcome)],
        );
        assert_eq!((commands.value, commands.kind.as_str()), (0.0, "counter"));
    }
    assert_eq!(
        find("bookshelf_events_appended_total", &[("store", "memory")]).value,
        0.0
    );
    for reader in ["last-read", "authors"] {
        assert_eq!(find("bookshelf_dead_letters_total", &[("reader", reader)]).value, 0.0);
        let at = [("reader", reader), ("partition", "")];
        assert_eq!(find("bookshelf_reader_position", &at).value, 0.0);
        assert_eq!(find("bookshelf_reader_lag", &at).value, 0.0);
    }

    // Requests by route template and status, with their latency.
    let requests = |route: &str| {
        find(
            "bookshelf_http_requests_total",
            &[("method", "GET"), ("route", route), ("status", "404")],
        )
        .value
    };
    assert_eq!(requests("/books/{id}"), 1.0);
    assert_eq!(requests("unmatched"), 1.0);
    let timed = find(
        "bookshelf_http_request_duration_seconds_count",
        &[("method", "GET"), ("route", "/books/{id}")],
    );
    assert_eq!((timed.value, timed.kind.as_str()), (1.0, "histogram"));
}
