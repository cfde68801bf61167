//! The change feed, the replica and two notifiers as separate processes,
//! beside a `books` process on a three-partition books topic (tansu, from
//! `scripts/test.sh`), with two feed instances found through the Consul
//! double. The writing feed is SIGKILLed while books change, then started
//! again: every change is published once (one per book version), the
//! replica ends equal to the books, and every notification is sent once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::{brokers, Service};
use bookshelf::change::{change_stream, ChangeEvent};
use bookshelf::{EventCodec, EventStore, Version};
use bookshelf_kafka::{KafkaConfig, KafkaStore};
use bookshelf_testkit::consul::ConsulDouble;
use serde_json::{json, Value};

const BOOKS: usize = 9;

struct System {
    consul: ConsulDouble,
    books_topic: String,
    changes_topic: String,
    data: std::path::PathBuf,
    books: Service,
    feeds: BTreeMap<String, Service>,
    http: reqwest::Client,
}

impl System {
    fn role(&self, role: &str, id: &str) -> Service {
        let mailbox = self.data.join("mailbox").display().to_string();
        let more = [
            "--changes-topic",
            &self.changes_topic,
            "--role",
            role,
            "--mailbox",
            &mailbox,
        ];
        let args = crate::support::on_kafka(&self.books_topic, &self.consul.url(), id, &self.data.join(id), &more);
        Service::start("changes", &args)
    }

    async fn json(&self, url: &str) -> Option<Value> {
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let answer = self
            .http
            .post(format!("{}{path}", self.books.url))
            .json(&body)
            .send()
            .await
            .expect("books answers");
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        answer.json().await.expect("JSON")
    }

    /// Reads, ratings and one removal over the books: `round` picks which.
    async fn change_books(&self, ids: &[String], round: usize) -> usize {
        let mut notable = 0;
        for (n, id) in ids.iter().enumerate() {
            match (n + round) % 3 {
                0 => {
                    self.post(&format!("/books/{id}/read"), json!({})).await;
                    notable += 1;
                }
                1 => {
                    let answer = self
                        .http
                        .put(format!("{}/books/{id}/rating", self.books.url))
                        .json(&json!({"stars": 1 + (n + round) % 5}))
                        .send()
                        .await
                        .expect("books answers");
                    assert!(answer.status().is_success());
                    notable += 1; // a new rating each round: (n + round) % 5 changes
                }
                _ => {}
            }
        }
        notable
    }

    /// Which feed instance writes the changes topic, once the Consul double
    /// lists them all and one runs the feed.
    async fn feed_writer(&self) -> String {
        let start = Instant::now();
        loop {
            for (id, feed) in &self.feeds {
                let progress = self.json(&format!("{}/progress", feed.url)).await;
                if progress.is_some_and(|p| p["partitions"].as_object().is_some_and(|m| m.len() == 3)) {
                    return id.clone();
                }
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no feed runs after 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changes_run_as_processes_and_survive_a_killed_feed() {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let data = std::env::temp_dir().join(format!("bookshelf-changes-{suffix}"));
    let books_topic = format!("bookshelf-books-{suffix}");
    let books = Service::start(
        "books",
        &[
            "--broker",
            &brokers(),
            "--topic",
            &books_topic,
            "--data",
            &data.join("books").display().to_string(),
        ],
    );
    let mut system = System {
        consul: ConsulDouble::start().await.expect("the Consul double starts"),
        books_topic,
        changes_topic: format!("bookshelf-changes-{suffix}"),
        data,
        books,
        feeds: BTreeMap::new(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client"),
    };
    let mut ids = Vec::new();
    for n in 0..BOOKS {
        let added = system
            .post(
                "/books",
                json!({"title": format!("Book {n}"), "author": "Somebody", "isbn": "9780441013593"}),
            )
            .await;
        ids.push(added["id"].as_str().expect("an id").to_owned());
    }
    for id in ["feed-1", "feed-2"] {
        let feed = system.role("feed", id);
        system.feeds.insert(id.to_owned(), feed);
    }
    let replica = system.role("replica", "replica-1");
    let notifiers = [
        system.role("notifier", "notifier-1"),
        system.role("notifier", "notifier-2"),
    ];

    let mut notable = system.change_books(&ids, 0).await;
    let writer = system.feed_writer().await;
    notable += system.change_books(&ids, 1).await;
    // The writing feed dies while books change; the other takes over.
    let killed = system.feeds.remove(&writer).expect("the writer runs");
    killed.crash();
    notable += system.change_books(&ids, 2).await;
    let other = system.feed_writer().await;
    assert_ne!(other, writer);
    // The killed one comes back (and may take the topic over again).
    let back = system.role("feed", &writer);
    system.feeds.insert(writer.clone(), back);
    notable += system.change_books(&ids, 3).await;
    system.post(&format!("/books/{}/read", ids[0]), json!({})).await;
    notable += 1;

    // Every book's version, as the books service has it.
    let mut versions = BTreeMap::new();
    for id in &ids {
        let book = system
            .json(&format!("{}/books/{id}", system.books.url))
            .await
            .expect("a book");
        versions.insert(id.clone(), book["version"].as_u64().expect("a version"));
    }

    // The replica ends equal to the books.
    let start = Instant::now();
    loop {
        let mirrored = system
            .json(&format!("{}/replica", replica.url))
            .await
            .unwrap_or(Value::Null);
        let equal = versions
            .iter()
            .all(|(id, &version)| mirrored[id][0].as_u64() == Some(version));
        if equal {
            for id in &ids {
                let book = system
                    .json(&format!("{}/books/{id}", system.books.url))
                    .await
                    .expect("a book");
                assert_eq!(mirrored[id][1]["OnShelf"]["reads"], book["reads"], "book {id}");
                assert_eq!(mirrored[id][1]["OnShelf"]["stars"], book["stars"], "book {id}");
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the replica did not catch up in 90 s: {mirrored} against {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // One change per book version, none twice, none missing: read by a
    // store that only follows the changes topic.
    let follower = KafkaStore::builder(KafkaConfig::new(brokers(), system.changes_topic.as_str()))
        .members(tokio::sync::watch::channel(vec!["nobody".to_owned()]).1)
        .open()
        .await
        .expect("a follower of the changes topic");
    let start = Instant::now();
    while !follower.caught_up().0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the follower did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let codec = EventCodec::<ChangeEvent>::new();
    for (id, &version) in &versions {
        let published = follower
            .read_stream(&change_stream("book", id), Version(1))
            .await
            .expect("the change stream");
        let changed: Vec<u64> = published
            .iter()
            .map(|e| {
                let ChangeEvent::Changed(change) = codec.decode_envelope(e).expect("a change").payload;
                change.version.0
            })
            .collect();
        assert_eq!(changed, (1..=version).collect::<Vec<_>>(), "book {id}");
    }

    // Every notification once, although two notifiers share the mailbox.
    let mailbox = system.data.join("mailbox");
    let start = Instant::now();
    loop {
        let sent = std::fs::read_to_string(mailbox.join("sent.log")).unwrap_or_default();
        let keys: Vec<&str> = sent.lines().collect();
        let unique: BTreeSet<&str> = keys.iter().copied().collect();
        assert_eq!(keys.len(), unique.len(), "a message sent twice");
        if keys.len() >= notable {
            assert_eq!(keys.len(), notable, "one message per read or rating");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {notable} messages after 60 s",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for notifier in notifiers {
        let progress = system
            .json(&format!("{}/progress", notifier.url))
            .await
            .expect("progress");
        let partitions = progress["partitions"].as_object().expect("partitions");
        assert_eq!(partitions.len(), 3, "{progress}");
        assert!(notifier.terminate(), "a notifier stops cleanly");
    }
    let _ = std::fs::remove_dir_all(&system.data);
}
