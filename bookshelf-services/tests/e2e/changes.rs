//! Change events (examples/changes): order per aggregate, before/after
//! chaining, publishing once across restarts and copies, a replica that
//! catches up after downtime, and notifications delivered once with two
//! notifiers running.

use bookshelf_services::books;
use bookshelf_services::changes::consumers;
use std::sync::Arc;
use std::time::Duration;

use books::{Book, BookCommand, Clock};
use bookshelf::change::{change_stream, ChangeEvent, ChangeFeed};
use bookshelf::process::ProcessRunner;
use bookshelf::Running;
use bookshelf::{
    EventCodec, EventStore, FileViewStore, InMemoryStore, InMemoryViewStore, Metadata, ProjectionRunner, Repository,
    Version,
};
use consumers::{Mailbox, Notifier, Replica};

fn add(n: usize) -> BookCommand {
    BookCommand::Add {
        title: format!("Book {n}"),
        author: "Somebody".into(),
        isbn: "9780441013593".into(),
    }
}

async fn settled(feed: &Running<()>, writes: &InMemoryStore) {
    let end = writes.head().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), feed.wait_for(end))
            .await
            .is_ok_and(|reached| reached.is_ok()),
        "the feed caught up"
    );
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bookshelf-test-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_published_once_in_order_with_before_and_after() {
    let (writes, changes) = (InMemoryStore::new(), InMemoryStore::new());
    let books = Arc::new(Repository::<Book, _>::new(writes.clone(), Clock::system()));
    // Two feeds at once, as two copies of a service would run.
    let feeds = [
        ChangeFeed::<Book, _, _>::new(writes.clone(), changes.clone()).start(),
        ChangeFeed::<Book, _, _>::new(writes.clone(), changes.clone()).start(),
    ];
    // Five books changed concurrently, eleven events each.
    let tasks: Vec<_> = (0..5)
        .map(|n| {
            let books = Arc::clone(&books);
            tokio::spawn(async move {
                let id = n.to_string();
                books.execute(&id, &add(n), Metadata::default()).await.unwrap();
                for _ in 0..9 {
                    books
                        .execute(&id, &BookCommand::MarkRead, Metadata::default())
                        .await
                        .unwrap();
                }
                books
                    .execute(&id, &BookCommand::Rate { stars: 4 }, Metadata::default())
                    .await
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for feed in &feeds {
        settled(feed, &writes).await;
    }
    let [first, second] = feeds;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    // A restarted feed reads everything again and publishes nothing twice.
    let again = ChangeFeed::<Book, _, _>::new(writes.clone(), changes.clone()).start();
    settled(&again, &writes).await;
    again.stop().await.unwrap();

    let codec = EventCodec::<ChangeEvent>::new();
    for n in 0..5 {
        let id = n.to_string();
        let published = changes
            .read_stream(&change_stream("book", &id), Version(1))
            .await
            .unwrap();
        assert_eq!(published.len(), 11, "one change per event, none twice");
        let mut previous = serde_json::to_value(Book::Unknown).unwrap();
        for (at, record) in published.iter().enumerate() {
            let ChangeEvent::Changed(change) = codec.decode_envelope(record).unwrap().payload;
            assert_eq!(change.version, Version(at as u64 + 1), "in order");
            assert_eq!(change.before, previous, "each change starts where the last ended");
            previous = change.after.clone();
        }
        // The last state is the writer's.
        let state = books.load(&id).await.unwrap().state;
        assert_eq!(previous, serde_json::to_value(&state).unwrap());
        assert_eq!(previous["OnShelf"]["reads"], 9);
    }
    // In the change log as a whole, each book's versions only go up.
    let mut subscription = changes.subscribe(bookshelf::Position(0)).await.unwrap();
    let mut all = Vec::new();
    let mut batch = Vec::new();
    while all.len() < 55 {
        bookshelf::Subscription::next_batch(&mut subscription, &mut batch, 100)
            .await
            .unwrap();
        all.append(&mut batch);
    }
    let mut last = std::collections::HashMap::new();
    for record in &all {
        let previous = last.insert(record.stream_id.clone(), record.version);
        assert!(previous < Some(record.version));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_catches_up_after_downtime_from_its_own_store() {
    let (writes, changes) = (InMemoryStore::new(), InMemoryStore::new());
    let feed = ChangeFeed::<Book, _, _>::new(writes.clone(), changes.clone()).start();
    let books = Repository::<Book, _>::new(writes.clone(), Clock::system());
    let dir = temp_dir("replica");
    let replica_file = dir.join("replica.json");
    let start_replica = || {
        ProjectionRunner::<Replica, _>::new("replica", changes.clone())
            .persist_to(FileViewStore::new(&replica_file))
            .save_every(1)
            .start()
    };

    let replica = start_replica();
    for n in 0..3 {
        books
            .execute(&n.to_string(), &add(n), Metadata::default())
            .await
            .unwrap();
    }
    settled(&feed, &writes).await;
    replica.handle().wait_for(changes.head().await.unwrap()).await.unwrap();
    replica.stop().await.unwrap();

    // While the replica is down, books change and one goes.
    books
        .execute("0", &BookCommand::MarkRead, Metadata::default())
        .await
        .unwrap();
    books
        .execute("1", &BookCommand::Remove, Metadata::default())
        .await
        .unwrap();
    books.execute("3", &add(3), Metadata::default()).await.unwrap();
    settled(&feed, &writes).await;

    let replica = start_replica();
    replica.handle().wait_for(changes.head().await.unwrap()).await.unwrap();
    let mirrored = replica.handle().read(|r| r.books.clone());
    assert_eq!(mirrored.len(), 4);
    for n in 0..4 {
        let id = n.to_string();
        let loaded = books.load(&id).await.unwrap();
        let (version, state) = &mirrored[&id];
        assert_eq!(*version, loaded.version.0, "book {id}");
        assert_eq!(*state, serde_json::to_value(&loaded.state).unwrap(), "book {id}");
    }
    assert_eq!(mirrored["1"].1, "Removed");
    replica.stop().await.unwrap();
    feed.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_notifiers_and_a_restarted_one_deliver_each_message_once() {
    let (writes, changes) = (InMemoryStore::new(), InMemoryStore::new());
    let feed = ChangeFeed::<Book, _, _>::new(writes.clone(), changes.clone()).start();
    let books = Repository::<Book, _>::new(writes.clone(), Clock::system());
    let dir = temp_dir("mailbox");
    let mailbox = Mailbox { dir: dir.clone() };
    let notifier = |saved: &InMemoryViewStore| {
        ProcessRunner::<Notifier, _, _>::new("notifier", changes.clone(), mailbox.clone())
            .persist_to(saved.clone())
            .start()
    };
    let (saved_a, saved_b) = (InMemoryViewStore::new(), InMemoryViewStore::new());
    let (a, b) = (notifier(&saved_a), notifier(&saved_b));

    for n in 0..4 {
        let id = n.to_string();
        books.execute(&id, &add(n), Metadata::default()).await.unwrap(); // no message
        books
            .execute(&id, &BookCommand::MarkRead, Metadata::default())
            .await
            .unwrap(); // a message
    }
    books
        .execute("0", &BookCommand::Rate { stars: 3 }, Metadata::default())
        .await
        .unwrap(); // a message
    books
        .execute("0", &BookCommand::Rate { stars: 3 }, Metadata::default())
        .await
        .unwrap(); // same stars: none
    books
        .execute("1", &BookCommand::Remove, Metadata::default())
        .await
        .unwrap(); // none
    settled(&feed, &writes).await;
    let end = changes.head().await.unwrap();
    a.wait_for(end).await.unwrap();
    b.wait_for(end).await.unwrap();

    let delivered = mailbox.delivered().unwrap();
    assert_eq!(delivered.len(), 5, "{delivered:#?}");
    assert_eq!(mailbox.sent().unwrap().len(), 5, "each sent once");
    assert_eq!(
        a.read(|n| n.noticed) + b.read(|n| n.noticed),
        10,
        "both notifiers noticed all five"
    );
    let texts: Vec<&str> = delivered.values().filter_map(|m| m.lines().last()).collect();
    assert_eq!(
        texts.iter().filter(|t| t.ends_with("was read (1 times now)")).count(),
        4
    );
    assert!(texts.contains(&"Book 0 was rated 3 stars"), "{texts:?}");
    a.stop().await.unwrap();

    // A notifier that lost its checkpoint reads everything again: still
    // nothing is delivered twice.
    let fresh = notifier(&InMemoryViewStore::new());
    fresh.wait_for(end).await.unwrap();
    assert_eq!(mailbox.delivered().unwrap(), delivered);
    assert_eq!(mailbox.sent().unwrap().len(), 5, "none sent again");
    fresh.stop().await.unwrap();
    b.stop().await.unwrap();
    feed.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
