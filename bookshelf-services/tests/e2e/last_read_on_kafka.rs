//! `last_read --broker … --consul …` as a real process: it projects the book
//! events that the `Book` aggregate wrote to Kafka (tansu, from
//! `scripts/test.sh`), registers in Consul (the double) once it listens, and
//! deregisters on SIGTERM.

use bookshelf_services::books;
use std::time::{Duration, Instant};

use crate::support::{brokers, Service};
use books::{Book, BookCommand, Clock};
use bookshelf::{Discovery, Metadata, Repository};
use bookshelf_consul::{ConsulConfig, ConsulDiscovery};
use bookshelf_kafka::{KafkaConfig, KafkaStore};
use bookshelf_testkit::consul::ConsulDouble;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_read_projects_from_kafka_and_registers_in_consul() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let topic = format!("bookshelf-test-books-{nanos}");
    let store = KafkaStore::open(KafkaConfig::new(brokers(), &topic).partitions(3).create_topic(true))
        .await
        .unwrap();
    let books = Repository::<Book, _>::new(store, Clock::system());
    let titles = ["Dune", "Emma", "Ulysses", "Beloved", "Middlemarch", "Persuasion"];
    for (n, title) in titles.iter().enumerate() {
        let add = BookCommand::Add {
            title: (*title).into(),
            author: format!("Author {n}"),
            isbn: "9780441013593".into(),
        };
        books.execute(&n.to_string(), &add, Metadata::default()).await.unwrap();
        books
            .execute(
                &n.to_string(),
                &BookCommand::MarkRead,
                Metadata::correlated(format!("req-{n}")),
            )
            .await
            .unwrap();
    }

    let consul = ConsulDouble::start().await.unwrap();
    let service = Service::start(
        "last_read",
        &[
            "--broker",
            &brokers(),
            "--topic",
            &topic,
            "--consul",
            &consul.url(),
            "--name",
            "last-read",
            "--id",
            "last-read-1",
            "--tags",
            "v1,eu",
        ],
    );

    // Found through discovery, by name and tags, at the address it listens on.
    let discovery = ConsulDiscovery::new(ConsulConfig::new(consul.url())).unwrap();
    let start = Instant::now();
    let instance = loop {
        let found = discovery
            .resolve("last-read", &["v1".into(), "eu".into()])
            .await
            .unwrap();
        if let Some(instance) = found.into_iter().next() {
            break instance;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "last_read never showed up in Consul"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(instance.id, "last-read-1");
    assert_eq!(format!("http://{}", instance.authority()), service.url);

    // The view catches up with what the aggregate wrote.
    let http = reqwest::Client::new();
    let start = Instant::now();
    let list = loop {
        let list: Value = http
            .get(format!("{}/", service.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list.as_array().is_some_and(|l| l.len() == 5) && list[0]["title"] == "Persuasion" {
            break list;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the view did not catch up: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shown: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["title"].as_str().unwrap())
        .collect();
    assert_eq!(shown, ["Persuasion", "Middlemarch", "Beloved", "Ulysses", "Emma"]);

    assert!(service.terminate(), "last_read exits cleanly on SIGTERM");
    assert!(consul.registered().is_empty(), "and deregisters on the way out");
}
