//! The showcase's documented command lines, run verbatim after
//! `cargo run --example NAME --`: the `last_read` line against tansu (for
//! its `localhost:9092`) and the Consul double (found through
//! `CONSUL_HTTP_ADDR`, as Consul's own tools find their agent).

use std::time::{Duration, Instant};

use crate::support::{brokers, get_json, Service};
use bookshelf_testkit::consul::ConsulDouble;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_showcase_last_read_line_runs_verbatim() {
    let consul = ConsulDouble::start().await.expect("the Consul double starts");
    let consul_addr = consul.url().trim_start_matches("http://").to_owned();
    let broker = brokers();
    // python last_read.py --topic bookshelf --broker localhost:9092 --addr 127.0.0.1
    //     --port 8087 --name lastreadbooks --id lastread1 --tags books last
    let line = [
        "--topic",
        "bookshelf",
        "--broker",
        &broker,
        "--addr",
        "127.0.0.1",
        "--port",
        "8087",
        "--name",
        "lastreadbooks",
        "--id",
        "lastread1",
        "--tags",
        "books",
        "last",
    ];
    let service = Service::start_verbatim("last_read", &line, &[("CONSUL_HTTP_ADDR", &consul_addr)]);
    assert_eq!(service.url, "http://127.0.0.1:8087");

    let http = reqwest::Client::new();
    let start = Instant::now();
    let instance = loop {
        let answer = get_json(&http, &format!("{}/v1/health/service/lastreadbooks", consul.url())).await;
        if let Some(entry) = answer.as_array().and_then(|a| a.first()) {
            break entry["Service"].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "last_read registered in Consul"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(instance["ID"], "lastread1");
    assert_eq!(instance["Tags"], serde_json::json!(["books", "last"]));
    assert_eq!(instance["Port"], 8087);
    let shelf = get_json(&http, &format!("{}/", service.url)).await;
    assert!(shelf.is_array(), "{shelf}");

    assert!(service.terminate(), "it stops cleanly");
    let left = get_json(&http, &format!("{}/v1/agent/services", consul.url())).await;
    assert!(left.get("lastread1").is_none(), "deregistered on shutdown: {left}");
}
