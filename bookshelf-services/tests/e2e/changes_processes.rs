//! The change feed, the replica and two notifiers as separate processes,
//! beside a `books` process on a three-partition books topic (tansu, from
//! `scripts/test.sh`), with two feed instances found through the Consul
//! double. The writing feed is SIGKILLed while books change, then started
//! again: every change is published once (one per book version), the
//! replica ends equal to the books, and every notification is sent once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{brokers, Service};
use bookshelf::change::{change_stream, ChangeEvent};
use bookshelf::{EventCodec, EventStore, Version};
use bookshelf_kafka::{KafkaConfig, KafkaStore};
use bookshelf_services::changes::consumers::describe;
use bookshelf_testkit::consul::ConsulDouble;
use serde_json::{json, Value};

const BOOKS: usize = 9;

struct System {
    consul: ConsulDouble,
    /// The broker's `bootstrap.servers`.
    broker: String,
    books_topic: String,
    changes_topic: String,
    data: std::path::PathBuf,
    books: Service,
    feeds: BTreeMap<String, Service>,
    /// The replica and the notifiers, by id, when the nemesis works on
    /// them.
    others: BTreeMap<String, Service>,
    http: reqwest::Client,
    /// The Unix user each role instance runs as, by id, when the test cuts
    /// them off the network.
    users: BTreeMap<String, u32>,
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
        let args = crate::support::on_kafka_at(
            &self.broker,
            &self.books_topic,
            &self.consul.url(),
            id,
            &self.data.join(id),
            &more,
        );
        Service::start_as_any(self.users.get(id).copied(), "changes", &args)
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

    /// Reads and ratings over the books: `round` picks which. Each must
    /// succeed when `strict`; otherwise a failure (the broker away, say) is
    /// let be: the checks read what the books have.
    async fn change_books(&self, ids: &[String], round: usize, strict: bool) {
        for (n, id) in ids.iter().enumerate() {
            let request = match (n + round) % 3 {
                0 => self
                    .http
                    .post(format!("{}/books/{id}/read", self.books.url))
                    .json(&json!({})),
                // A new rating each round: (n + round) % 5 changes.
                1 => self
                    .http
                    .put(format!("{}/books/{id}/rating", self.books.url))
                    .json(&json!({"stars": 1 + (n + round) % 5})),
                _ => continue,
            };
            let answer = request.send().await;
            if strict {
                let answer = answer.expect("books answers");
                assert!(answer.status().is_success(), "{}", answer.status());
            }
        }
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

impl System {
    /// A `books` process on `broker` (one writer, no discovery) and the
    /// Consul double; no role yet. The roles run as `users` (by id) when
    /// given.
    async fn start(broker: String, users: BTreeMap<String, u32>) -> System {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let data = std::env::temp_dir().join(format!("bookshelf-changes-{suffix}"));
        crate::support::open_to(!users.is_empty(), &data);
        let books_topic = format!("bookshelf-books-{suffix}");
        let books = Service::start(
            "books",
            &[
                "--broker",
                &broker,
                "--topic",
                &books_topic,
                "--data",
                &data.join("books").display().to_string(),
            ],
        );
        System {
            consul: ConsulDouble::start().await.expect("the Consul double starts"),
            broker,
            books_topic,
            changes_topic: format!("bookshelf-changes-{suffix}"),
            data,
            books,
            feeds: BTreeMap::new(),
            others: BTreeMap::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            users,
        }
    }

    /// Starts role instance `id` (`ROLE-N`) as a feed or among the others.
    fn start_role(&mut self, id: &str) {
        let role = id.split('-').next().expect("a role");
        let service = self.role(role, id);
        if role == "feed" {
            self.feeds.insert(id.to_owned(), service);
        } else {
            self.others.insert(id.to_owned(), service);
        }
    }

    /// Role instance `id`, while it runs.
    fn running(&self, id: &str) -> Option<&Service> {
        self.feeds.get(id).or_else(|| self.others.get(id))
    }

    /// Adds `BOOKS` books; their ids.
    async fn add_books(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for n in 0..BOOKS {
            let added = self
                .post(
                    "/books",
                    json!({"title": format!("Book {n}"), "author": "Somebody", "isbn": "9780441013593"}),
                )
                .await;
            ids.push(added["id"].as_str().expect("an id").to_owned());
        }
        ids
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changes_run_as_processes_and_survive_a_killed_feed() {
    let mut system = System::start(brokers(), BTreeMap::new()).await;
    let ids = system.add_books().await;
    for id in ["feed-1", "feed-2"] {
        let feed = system.role("feed", id);
        system.feeds.insert(id.to_owned(), feed);
    }
    let replica = system.role("replica", "replica-1");
    let notifiers = [
        system.role("notifier", "notifier-1"),
        system.role("notifier", "notifier-2"),
    ];

    system.change_books(&ids, 0, true).await;
    let writer = system.feed_writer().await;
    system.change_books(&ids, 1, true).await;
    // The writing feed dies while books change; the other takes over.
    let killed = system.feeds.remove(&writer).expect("the writer runs");
    killed.crash();
    system.change_books(&ids, 2, true).await;
    let other = system.feed_writer().await;
    assert_ne!(other, writer);
    // The killed one comes back (and may take the topic over again).
    let back = system.role("feed", &writer);
    system.feeds.insert(writer.clone(), back);
    system.change_books(&ids, 3, true).await;
    system.post(&format!("/books/{}/read", ids[0]), json!({})).await;

    check_the_changes(&system, &replica.url, &ids).await;
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

/// Every book as the books service answers it now; a book it does not
/// answer with a version (503 while it cannot yet read its log to the end,
/// the broker just back) is left out.
async fn books_now(system: &System, ids: &[String]) -> BTreeMap<String, Value> {
    let mut books = BTreeMap::new();
    for id in ids {
        let book = system.json(&format!("{}/books/{id}", system.books.url)).await;
        if let Some(book) = book.filter(|b| b["version"].is_u64()) {
            books.insert(id.clone(), book);
        }
    }
    books
}

/// Each book's version.
fn versions_of(books: &BTreeMap<String, Value>) -> BTreeMap<String, u64> {
    books
        .iter()
        .filter_map(|(id, book)| Some((id.clone(), book["version"].as_u64()?)))
        .collect()
}

/// After the books stopped changing: the replica at `replica` ends equal to
/// the books; the changes topic holds one change per book version, none
/// twice, none missing; and the mailbox holds one message per change worth
/// telling (a read, or new stars), none twice, although two notifiers share
/// it.
async fn check_the_changes(system: &System, replica: &str, ids: &[String]) {
    // Every book's version, as the books service has it once they hold
    // still.
    let mut versions = BTreeMap::new();
    let start = Instant::now();
    loop {
        let now = versions_of(&books_now(system, ids).await);
        if now == versions && now.len() == ids.len() {
            break;
        }
        versions = now;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the books still change, or do not answer: {versions:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // The replica ends equal to the books, both read again each time: a
    // command whose outcome was unknown may still land after the books held
    // still for a while (its record held by the producer until the broker
    // answers it again, which after a broker restart waits out librdkafka's
    // reconnect backoff, up to 10 s), and the replica then follows.
    let start = Instant::now();
    let versions = loop {
        let books = books_now(system, ids).await;
        let now = versions_of(&books);
        let mirrored = system
            .json(&format!("{}/replica", replica))
            .await
            .unwrap_or(Value::Null);
        let equal = now.len() == ids.len()
            && now
                .iter()
                .all(|(id, &version)| mirrored[id][0].as_u64() == Some(version));
        if equal {
            for (id, book) in &books {
                assert_eq!(mirrored[id][1]["OnShelf"]["reads"], book["reads"], "book {id}");
                assert_eq!(mirrored[id][1]["OnShelf"]["stars"], book["stars"], "book {id}");
            }
            break now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the replica did not catch up in 90 s: {mirrored} against {now:?} (when the books held still: \
             {versions:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // One change per book version, none twice, none missing: read by a
    // store that only follows the changes topic.
    let follower = KafkaStore::builder(KafkaConfig::new(system.broker.as_str(), system.changes_topic.as_str()))
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
    // The messages the changes call for, by key (the change's event id).
    let mut telling = BTreeSet::new();
    for (id, &version) in &versions {
        let published = follower
            .read_stream(&change_stream("book", id), Version(1))
            .await
            .expect("the change stream");
        let mut changed = Vec::new();
        for event in &published {
            let ChangeEvent::Changed(change) = codec.decode_envelope(event).expect("a change").payload;
            changed.push(change.version.0);
            if describe(&change).is_some() {
                telling.insert(change.event_id.to_string());
            }
        }
        // Versions 1 to the book's version at least (one more may have
        // landed since it was read, as above), each once, none missing.
        assert_eq!(changed, (1..=changed.len() as u64).collect::<Vec<_>>(), "book {id}");
        assert!(
            changed.len() as u64 >= version,
            "book {id}: {changed:?} short of {version}"
        );
    }

    // Every notification once, although two notifiers share the mailbox.
    let mailbox = system.data.join("mailbox");
    let start = Instant::now();
    loop {
        let sent = std::fs::read_to_string(mailbox.join("sent.log")).unwrap_or_default();
        let keys: Vec<String> = sent.lines().map(str::to_owned).collect();
        let unique: BTreeSet<String> = keys.iter().cloned().collect();
        assert_eq!(keys.len(), unique.len(), "a message sent twice");
        assert!(
            unique.is_subset(&telling),
            "messages no change calls for: {:?}",
            unique.difference(&telling).collect::<Vec<_>>()
        );
        if unique == telling {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {} messages after 60 s",
            keys.len(),
            telling.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl crate::nemesis::Processes for System {
    fn crash(&mut self, id: &str) {
        let killed = match self.feeds.remove(id) {
            Some(feed) => feed,
            None => self.others.remove(id).expect("the victim runs"),
        };
        killed.crash();
    }
    fn restart(&mut self, id: &str) {
        self.start_role(id);
    }
    fn pid(&self, id: &str) -> u32 {
        self.running(id).expect("an instance").pid()
    }
    fn url(&self, id: &str) -> Option<String> {
        self.running(id).map(|s| s.url.clone())
    }
    fn consul(&self) -> &ConsulDouble {
        &self.consul
    }
}

/// The fault suite over the change feed: two feed instances, the replica
/// and two notifiers, each feed and the replica as its own Unix user and
/// the notifiers as one (they share a mailbox directory, whose files that
/// user writes; a cut takes both), on a broker of their own and the Consul
/// double, beside one `books` process. Books change all along while the
/// nemesis kills and restarts, pauses and cuts off the role processes, and
/// restarts the broker and the Consul agent; then every change is published
/// once, the replica equals the books, and every notification is sent once.
/// (`BOOKSHELF_FAULT_SECONDS`, default 30, and `BOOKSHELF_FAULT_SEED` as
/// for the books' suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_changes_are_published_once_under_the_nemesis() {
    let (seed, seconds) = crate::nemesis::seed_and_seconds(30);
    let broker = crate::nemesis::broker();
    let users = crate::support::fault_users();
    assert!(users.len() >= 4, "four fault users: run scripts/fault-env.sh");
    let placed: Vec<(String, u32)> = [
        ("feed-1", users[0].1),
        ("feed-2", users[1].1),
        ("replica-1", users[2].1),
        ("notifier-1", users[3].1),
        ("notifier-2", users[3].1),
    ]
    .into_iter()
    .map(|(id, uid)| (id.to_owned(), uid))
    .collect();
    let mut system = System::start(broker.address(), placed.iter().cloned().collect()).await;
    system.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let ids = system.add_books().await;
    for (id, _) in &placed {
        system.start_role(id);
    }
    system.feed_writer().await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let changing = {
        let (http, books, ids, stop) = (
            system.http.clone(),
            system.books.url.clone(),
            ids.clone(),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = &ids[round % ids.len()];
                let sent = if round % 2 == 0 {
                    http.post(format!("{books}/books/{id}/read")).json(&json!({}))
                } else {
                    http.put(format!("{books}/books/{id}/rating"))
                        .json(&json!({"stars": 1 + round % 5}))
                };
                // Failures (the broker away) are let be: the checks read
                // what the books have.
                let _ = sent.send().await;
                round += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            round
        })
    };
    let mut nemesis = crate::nemesis::Nemesis::with_users(system, broker, placed);
    let injected = nemesis.run(seed, seconds, |_| {}).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = changing.await.expect("the changes");
    println!(
        "changes under the nemesis (seed {seed}): {} faults, {rounds} changes sent",
        injected.len()
    );
    let system = &nemesis.processes;
    let replica = system.others["replica-1"].url.clone();
    check_the_changes(system, &replica, &ids).await;
    let _ = std::fs::remove_dir_all(&system.data);
}
