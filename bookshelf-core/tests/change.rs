//! The change feed: each aggregate's state kept with the feed's checkpoint,
//! so that a restart resumes without reading the log from its start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bookshelf_core::change::{change_stream, Change, ChangeEvent, ChangeFeed};
use bookshelf_core::source::GLOBAL;
use bookshelf_core::{
    async_trait, Checkpoint, EventCodec, EventSource, EventStore, Followed, Follower, InMemoryStore, InMemoryViewStore,
    Metadata, Repository, StoreError, Version,
};
use bookshelf_testkit::accounts::{Account, AccountCommand};

/// A source that counts the records its followers hand out.
#[derive(Clone)]
struct Counted {
    store: InMemoryStore,
    read: Arc<AtomicUsize>,
}

struct CountedFollower {
    inner: Box<dyn Follower>,
    read: Arc<AtomicUsize>,
}

#[async_trait]
impl EventSource for Counted {
    async fn follow(&self, from: &Checkpoint) -> Result<Box<dyn Follower>, StoreError> {
        Ok(Box::new(CountedFollower {
            inner: self.store.follow(from).await?,
            read: Arc::clone(&self.read),
        }))
    }
}

#[async_trait]
impl Follower for CountedFollower {
    async fn next_batch(&mut self, batch: &mut Vec<Followed>, max: usize) -> Result<(), StoreError> {
        let before = batch.len();
        self.inner.next_batch(batch, max).await?;
        self.read.fetch_add(batch.len() - before, Ordering::SeqCst);
        Ok(())
    }

    fn ends(&self) -> BTreeMap<String, u64> {
        self.inner.ends()
    }
}

async fn change_of(changes: &InMemoryStore, id: &str, version: u64) -> Change {
    let published = changes
        .read_stream(&change_stream("account", id), Version(version))
        .await
        .unwrap();
    let ChangeEvent::Changed(change) = EventCodec::<ChangeEvent>::new()
        .decode_envelope(&published[0])
        .unwrap()
        .payload;
    change
}

#[tokio::test]
async fn a_restarted_feed_resumes_from_its_saved_states_and_checkpoint() {
    let (writes, changes, saved) = (InMemoryStore::new(), InMemoryStore::new(), InMemoryViewStore::new());
    let source = Counted {
        store: writes.clone(),
        read: Arc::default(),
    };
    let accounts = Repository::<Account, _>::new(writes.clone(), ());
    accounts
        .execute("a", &AccountCommand::Open, Metadata::default())
        .await
        .unwrap();
    accounts
        .execute("a", &AccountCommand::Deposit(5), Metadata::default())
        .await
        .unwrap();

    let start_feed = || {
        ChangeFeed::<Account, _, _>::new(source.clone(), changes.clone())
            .persist_to(saved.clone())
            .start()
    };
    let feed = start_feed();
    feed.wait_for(writes.head().await.unwrap()).await.unwrap();
    feed.stop().await.unwrap();
    assert_eq!(source.read.swap(0, Ordering::SeqCst), 2);

    accounts
        .execute("a", &AccountCommand::Deposit(7), Metadata::default())
        .await
        .unwrap();
    let feed = start_feed();
    feed.wait_for(writes.head().await.unwrap()).await.unwrap();
    let progress = feed.progress();
    assert_eq!((progress[GLOBAL].position, progress[GLOBAL].lag()), (3, Some(0)));
    feed.stop().await.unwrap();
    assert_eq!(
        source.read.load(Ordering::SeqCst),
        1,
        "the restart read only the new event"
    );

    let third = change_of(&changes, "a", 3).await;
    assert_eq!(
        third.before["balance"], 5,
        "the state before came from the saved states"
    );
    assert_eq!(third.after["balance"], 12);
    let all = changes
        .read_stream(&change_stream("account", "a"), Version(1))
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "one change per event, none twice");
}
