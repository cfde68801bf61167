//! Dead letters re-driven: on the in-memory sink, the check every store
//! that keeps letters passes; and a re-driven event applied exactly once
//! whichever step a crash interrupts (the save of the state with the
//! queue's mark, or the letters' removal after it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bookshelf_core::{
    async_trait, DeadLetter, DeadLetters, EventStore, ExpectedVersion, InMemoryDeadLetters, InMemoryStore,
    InMemoryViewStore, Position, ProjectionRunner, Redrive, Redriven, StoreError, StoredView, StreamId, ViewStore,
    ViewStoreError,
};
use bookshelf_testkit::accounts::{deposit, raw_event, FixedLedger, Ledger};

#[tokio::test]
async fn dead_letters_in_memory_are_redriven_once() {
    let letters = InMemoryDeadLetters::new();
    let listed = letters.clone();
    bookshelf_testkit::dead_letters::redriven_once(
        InMemoryStore::new(),
        letters,
        InMemoryViewStore::new(),
        move |runner| {
            let kept = listed
                .kept()
                .into_iter()
                .filter(|k| runner.as_ref().is_none_or(|r| *r == k.letter.projection))
                .collect();
            Box::pin(async move { Ok(kept) })
        },
    )
    .await;
}

/// A view store whose saves fail while `failing` is set.
#[derive(Clone, Default)]
struct Views {
    inner: InMemoryViewStore,
    failing: Arc<AtomicBool>,
}

#[async_trait]
impl ViewStore for Views {
    async fn load(&self) -> Result<Option<StoredView>, ViewStoreError> {
        self.inner.load().await
    }

    async fn save(&self, view: &StoredView) -> Result<(), ViewStoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(ViewStoreError("the disk is full".into()));
        }
        self.inner.save(view).await
    }
}

/// Letters in memory whose removal fails while `failing` is set.
#[derive(Clone, Default)]
struct Letters {
    inner: InMemoryDeadLetters,
    failing: Arc<AtomicBool>,
}

#[async_trait]
impl DeadLetters for Letters {
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.inner.put(letter).await
    }
    fn redrives(&self) -> bool {
        true
    }
    async fn redrive(&self, runner: &str, which: Redrive) -> Result<usize, StoreError> {
        self.inner.redrive(runner, which).await
    }
    async fn queued(&self, runner: &str, after: u64) -> Result<Vec<Redriven>, StoreError> {
        self.inner.queued(runner, after).await
    }
    async fn put_back(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        self.inner.put_back(id, reason).await
    }
    async fn forget(&self, runner: &str, through: Option<u64>) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Closed("the letters' store went away".into()));
        }
        self.inner.forget(runner, through).await
    }
}

/// A log of 5, a deposit the old code cannot read ("7"), and 11; the old
/// ledger's state saved at its end with the letter set aside.
async fn set_aside(store: &InMemoryStore, views: &Views, letters: &Letters) {
    store
        .append(
            &StreamId::new("account-1"),
            ExpectedVersion::NoStream,
            vec![deposit(5), raw_event("Deposited", 1, r#"{"amount":"7"}"#), deposit(11)],
        )
        .await
        .unwrap();
    let old = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .persist_to(views.clone())
        .dead_letters(letters.clone())
        .start();
    old.wait_for(Position(3)).await.unwrap();
    old.stop().await.unwrap();
    assert_eq!(letters.inner.kept().len(), 1);
}

fn fixed(
    store: &InMemoryStore,
    views: &Views,
    letters: &Letters,
) -> bookshelf_core::Running<bookshelf_core::ViewState<FixedLedger>> {
    ProjectionRunner::<FixedLedger, _>::new("ledger", store.clone())
        .persist_to(views.clone())
        .dead_letters(letters.clone())
        .redrive_every(Duration::from_millis(10))
        .start()
}

#[tokio::test]
async fn a_redriven_event_whose_save_fails_is_applied_once_after_the_restart() {
    let (store, views, letters) = (InMemoryStore::new(), Views::default(), Letters::default());
    set_aside(&store, &views, &letters).await;
    let first = fixed(&store, &views, &letters);
    first.wait_for(Position(3)).await.unwrap();
    views.failing.store(true, Ordering::SeqCst);
    letters.redrive("ledger", Redrive::All).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), first.ended())
        .await
        .unwrap();
    let failure = first
        .failure()
        .expect("a batch of re-driven letters must be saved, or the runner stops");
    assert!(failure.contains("the disk is full"), "{failure}");
    assert_eq!(letters.inner.kept()[0].ticket, Some(1), "still queued");
    drop(first);

    views.failing.store(false, Ordering::SeqCst);
    let second = fixed(&store, &views, &letters);
    second.wait_for(Position(3)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !letters.inner.kept().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(second.read(|l| (l.0.applied.clone(), l.0.total)), (vec![0, 2, 1], 23));
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_redriven_event_saved_before_a_crash_is_not_applied_again() {
    let (store, views, letters) = (InMemoryStore::new(), Views::default(), Letters::default());
    set_aside(&store, &views, &letters).await;
    let first = fixed(&store, &views, &letters);
    first.wait_for(Position(3)).await.unwrap();
    letters.failing.store(true, Ordering::SeqCst);
    letters.redrive("ledger", Redrive::All).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), first.ended())
        .await
        .unwrap();
    assert!(first.failure().is_some(), "the removal failed after the save");
    assert_eq!(first.read(|l| l.0.total), 23);
    assert_eq!(letters.inner.kept().len(), 1, "the letter is still there");
    drop(first);

    letters.failing.store(false, Ordering::SeqCst);
    let second = fixed(&store, &views, &letters);
    second.wait_for(Position(3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        second.read(|l| (l.0.applied.clone(), l.0.total)),
        (vec![0, 2, 1], 23),
        "the saved checkpoint passes over the letter"
    );
    assert!(letters.inner.kept().is_empty(), "and it is forgotten at the start");
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_runner_that_starts_from_the_start_forgets_its_letters_and_sets_aside_again() {
    let (store, views, letters) = (InMemoryStore::new(), Views::default(), Letters::default());
    set_aside(&store, &views, &letters).await;
    // Not persisted: every start reads the log from its start.
    for _ in 0..2 {
        let runner = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
            .dead_letters(letters.clone())
            .start();
        runner.wait_for(Position(3)).await.unwrap();
        runner.stop().await.unwrap();
        let kept = letters.inner.kept();
        assert_eq!(kept.len(), 1, "set aside once, not once per start: {kept:?}");
    }
}
