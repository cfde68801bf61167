//! Change events on Kafka (tansu, from `scripts/test.sh`): the books on a
//! three-partition topic, their changes published to a three-partition
//! topic of their own, a replica projecting that topic, and two notifiers
//! on it, all in one process (`tests/changes_processes.rs` runs them as
//! processes).

use bookshelf_services::books;
use bookshelf_services::changes::consumers;
use std::time::Duration;

use crate::support::brokers;
use books::{Book, BookCommand, Clock};
use bookshelf::change::{change_stream, ChangeFeed};
use bookshelf::process::ProcessRunner;
use bookshelf::{EventStore, Metadata, Repository, Version};
use bookshelf_kafka::{high_watermarks, KafkaConfig, KafkaLog, KafkaStore};
use consumers::{Mailbox, Notifier, Replica};

/// A store on a new three-partition topic: the feed and the runners read
/// every partition.
async fn topic(name: &str) -> (KafkaStore, KafkaConfig) {
    let config = KafkaConfig::new(
        brokers(),
        format!("bookshelf-test-{name}-{}", uuid::Uuid::new_v4().simple()),
    )
    .partitions(3)
    .create_topic(true);
    (KafkaStore::open(config.clone()).await.unwrap(), config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_flow_through_kafka_to_a_replica_and_notifiers() {
    let (writes, writes_config) = topic("books").await;
    let ends = |config: KafkaConfig| async move { high_watermarks(&config, &[config.topic()]).await.unwrap() };
    let (changes, changes_config) = topic("book-changes").await;
    let books = Repository::<Book, _>::new(writes.clone(), Clock::system()).with_cache(100);
    for n in 0..3 {
        let add = BookCommand::Add {
            title: format!("Book {n}"),
            author: "Somebody".into(),
            isbn: "9780441013593".into(),
        };
        books.execute(&n.to_string(), &add, Metadata::default()).await.unwrap();
    }
    books
        .execute("0", &BookCommand::MarkRead, Metadata::default())
        .await
        .unwrap();
    books
        .execute("1", &BookCommand::Rate { stars: 4 }, Metadata::default())
        .await
        .unwrap();

    let feed = ChangeFeed::<Book, _, _>::new(writes.clone(), changes.clone()).start();
    let end = ends(writes_config.clone()).await;
    assert!(tokio::time::timeout(Duration::from_secs(30), feed.wait_for(&end))
        .await
        .is_ok_and(|reached| reached.is_ok()));
    let progress = feed.progress();
    assert_eq!(progress.len(), 3, "one entry per partition: {progress:?}");
    assert!(progress.values().all(|p| p.lag() == Some(0)), "{progress:?}");
    feed.stop().await.unwrap();
    // Restarted, it reads the books again and publishes nothing twice.
    let feed = ChangeFeed::<Book, _, _>::new(writes.clone(), changes.clone()).start();
    books
        .execute("2", &BookCommand::Remove, Metadata::default())
        .await
        .unwrap();
    let end = ends(writes_config.clone()).await;
    assert!(tokio::time::timeout(Duration::from_secs(30), feed.wait_for(&end))
        .await
        .is_ok_and(|reached| reached.is_ok()));
    for (id, versions) in [("0", 2), ("1", 2), ("2", 2)] {
        let published = changes
            .read_stream(&change_stream("book", id), Version(1))
            .await
            .unwrap();
        assert_eq!(published.len(), versions, "book {id}: one change per event");
    }

    // The replica: a view over the change topic, with its own offsets.
    let replica = bookshelf::ProjectionRunner::<Replica, _>::new("replica", KafkaLog::new(changes_config.clone()))
        .unknown_events(bookshelf::UnknownEvents::DeadLetter)
        .start();
    let mailbox = Mailbox {
        dir: std::env::temp_dir().join(format!(
            "bookshelf-test-kafka-mailbox-{}",
            uuid::Uuid::new_v4().simple()
        )),
    };
    std::fs::create_dir_all(&mailbox.dir).unwrap();
    let notifiers: Vec<_> = (0..2)
        .map(|_| ProcessRunner::<Notifier, _, _>::new("notifier", changes.clone(), mailbox.clone()).start())
        .collect();

    let published = ends(changes_config.clone()).await;
    for notifier in &notifiers {
        assert!(
            tokio::time::timeout(Duration::from_secs(30), notifier.wait_for(&published))
                .await
                .is_ok_and(|reached| reached.is_ok())
        );
    }
    let start = std::time::Instant::now();
    loop {
        let mirrored = replica.handle().read(|r| r.books.clone());
        if mirrored.get("2").is_some_and(|(v, _)| *v == 2) && mirrored.len() == 3 {
            for n in 0..3 {
                let id = n.to_string();
                let loaded = books.load(&id).await.unwrap();
                assert_eq!(
                    mirrored[&id].1,
                    serde_json::to_value(&loaded.state).unwrap(),
                    "book {id}"
                );
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the replica caught up: {mirrored:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A read and a rating: two messages, each sent once by two notifiers.
    assert_eq!(mailbox.delivered().unwrap().len(), 2);
    assert_eq!(mailbox.sent().unwrap().len(), 2);

    for notifier in notifiers {
        notifier.stop().await.unwrap();
    }
    replica.stop().await.unwrap();
    feed.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&mailbox.dir);
}
