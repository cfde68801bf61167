//! A view saved by Bookshelf 0.1.0 over a source of several partitions
//! (`fixtures/view-saved-by-0.1.0.json`, in the form its Kafka projection
//! wrote: each partition's epoch under `NAME:epoch`) still loads: the runner
//! resumes every partition at its offset with its token, and saves in
//! today's form (`NAME:token`), which loads back the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bookshelf_core::{
    async_trait, Checkpoint, DomainEvent, Envelope, EventSource, FileViewStore, Followed, Follower, Mark,
    ProjectionRunner, StoreError, View, ViewStore,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Counted {
    Counted { n: u64 },
}
impl DomainEvent for Counted {}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    count: u64,
    sum: u64,
}

impl View for Tally {
    type Event = Counted;
    fn apply(&mut self, event: Envelope<Counted>) {
        let Counted::Counted { n } = event.payload;
        self.count += 1;
        self.sum += n;
    }
}

/// A source that records where a reader asked to start, and has nothing to
/// read.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Checkpoint>>>);

struct Nothing;

#[async_trait]
impl EventSource for Recorder {
    async fn follow(&self, from: &Checkpoint) -> Result<Box<dyn Follower>, StoreError> {
        self.0.lock().unwrap().push(from.clone());
        Ok(Box::new(Nothing))
    }
}

#[async_trait]
impl Follower for Nothing {
    async fn next_batch(&mut self, _: &mut Vec<Followed>, _: usize) -> Result<(), StoreError> {
        std::future::pending().await
    }

    fn ends(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
}

#[tokio::test]
async fn a_view_saved_with_epochs_by_0_1_0_resumes_with_its_tokens_and_is_saved_in_todays_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.json");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/view-saved-by-0.1.0.json"),
        &path,
    )
    .unwrap();
    let source = Recorder::default();
    let running = ProjectionRunner::<Tally, _>::new("tally", source.clone())
        .persist_to(FileViewStore::new(&path))
        .start();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while running.checkpoint().is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the view restores");
    let expected = [
        ("books/0", Mark { next: 12, token: 3 }),
        ("books/1", Mark { next: 7, token: 0 }),
        ("books/2", Mark { next: 30, token: 1 }),
    ];
    let asked = source.0.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    for (partition, mark) in expected {
        assert_eq!(asked[0].get(partition), mark, "{partition}");
    }
    assert_eq!(running.read(|t| (t.count, t.sum)), (46, 1081));
    running.stop().await.unwrap();

    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(saved.contains("\"books/0:token\":3"), "{saved}");
    assert!(!saved.contains(":epoch"), "{saved}");
    let reloaded = FileViewStore::new(&path).load().await.unwrap().unwrap();
    let checkpoint = Checkpoint::from_saved(reloaded.checkpoint, &reloaded.offsets);
    for (partition, mark) in expected {
        assert_eq!(checkpoint.get(partition), mark, "{partition} after saving again");
    }
}
