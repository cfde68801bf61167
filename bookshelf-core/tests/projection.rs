//! The projection runner: checkpoints kept with the state, crash and resume,
//! poison events, rebuilds.

use std::time::Duration;

use bookshelf_core::{
    EventStore, ExpectedVersion, FileViewStore, InMemoryDeadLetters, InMemoryStore, InMemoryViewStore, Position,
    ProjectionError, ProjectionRunner, StreamId, UnknownEvents, ViewStore,
};
use bookshelf_testkit::accounts::{deposit, raw_event, Ledger};

async fn fill(store: &InMemoryStore, events: usize) -> i64 {
    let mut total = 0;
    for n in 0..events {
        let amount = (n % 13) as i64 + 1;
        total += amount;
        let stream = StreamId::new(format!("account-{}", n % 17));
        store
            .append(&stream, ExpectedVersion::Any, vec![deposit(amount)])
            .await
            .unwrap();
    }
    total
}

/// A tiny deterministic generator, so that failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_restarts_neither_lose_nor_repeat_events() {
    for seed in 1..=5u64 {
        let mut rng = Lcg(seed);
        let store = InMemoryStore::new();
        let mut expected_total = fill(&store, 3_000).await;
        let saved = InMemoryViewStore::new();
        for _crash in 0..6 {
            let running = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
                .persist_to(saved.clone())
                .batch_size(1 + rng.below(64) as usize)
                .save_every(1 + rng.below(400))
                .start();
            // More events arrive while it runs.
            expected_total += fill(&store, rng.below(300) as usize).await;
            let head = store.head().await.unwrap().0;
            let target = Position(rng.below(head + 1));
            running.handle().wait_for(target).await.unwrap();
            running.abort().await; // no final save: the in-memory view is lost
        }
        let running = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
            .persist_to(saved.clone())
            .start();
        let view = running.handle();
        let head = store.head().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), view.wait_for(head))
            .await
            .expect("caught up within 30 s")
            .expect("the projection still runs");
        view.read(|ledger| {
            assert!(
                ledger.applied_each_once_in_order(),
                "seed {seed}: an event was applied twice or out of order"
            );
            assert_eq!(ledger.applied.len() as u64, head.0, "seed {seed}: an event was lost");
            assert_eq!(ledger.total, expected_total, "seed {seed}");
        });
        running.stop().await.unwrap();
        let stored = saved.load().await.unwrap().expect("stop saves the view");
        assert_eq!(stored.checkpoint, head);
    }
}

/// A projection far behind finds every batch ready at once; it must still
/// yield, or it holds its worker thread (here the only one) until it has caught
/// up, and an abort waits as long.
#[tokio::test(flavor = "current_thread")]
async fn a_projection_catching_up_yields_to_other_tasks_and_aborts_promptly() {
    let store = InMemoryStore::new();
    fill(&store, 20_000).await;
    let running = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .batch_size(1)
        .start();
    let view = running.handle();
    // Let the projection run until it gives the thread back.
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    let reached = view.checkpoint().map_or(0, |c| c.get("").next);
    assert!(
        reached < 20_000,
        "the projection applied all {reached} events before any other task ran"
    );
    running.abort().await;
    let after = view.read(|ledger| ledger.applied.len());
    assert!(
        after < 20_000,
        "abort waited for the projection to catch up ({after} applied)"
    );
}

#[tokio::test]
async fn poison_events_are_dead_lettered_and_the_projection_goes_on() {
    let store = InMemoryStore::new();
    let stream = StreamId::new("account-1");
    let events = vec![
        deposit(5),
        raw_event("Deposited", 1, r#"{"amount":"lots"}"#), // bad payload
        raw_event("Deposited", 9, r#"{"amount":1}"#),      // schema from the future
        raw_event("Closed", 1, "{}"),                      // a type the view does not know
        deposit(7),
    ];
    store.append(&stream, ExpectedVersion::Any, events).await.unwrap();

    let letters = InMemoryDeadLetters::new();
    let running = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .dead_letters(letters.clone())
        .start();
    running.handle().wait_for(Position(5)).await.unwrap();
    assert_eq!(running.handle().read(|l| l.total), 12);
    assert_eq!(running.handle().read(|l| l.applied.clone()), vec![0, 4]);
    let dead: Vec<_> = letters
        .letters()
        .iter()
        .map(|l| l.record.event().expect("an event").position.0)
        .collect();
    assert_eq!(
        dead,
        vec![1, 2],
        "bad payload and future schema are set aside; unknown types skipped"
    );
    assert!(letters.letters()[1].reason.contains("schema version 9"));
    running.stop().await.unwrap();

    // Where the source should carry only this view's events, unknown types are poison too.
    let letters = InMemoryDeadLetters::new();
    let running = ProjectionRunner::<Ledger, _>::new("strict", store.clone())
        .dead_letters(letters.clone())
        .unknown_events(UnknownEvents::DeadLetter)
        .start();
    running.handle().wait_for(Position(5)).await.unwrap();
    let dead: Vec<_> = letters
        .letters()
        .iter()
        .map(|l| l.record.event().expect("an event").position.0)
        .collect();
    assert_eq!(dead, vec![1, 2, 3]);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn rebuild_replays_from_scratch_and_replaces_the_saved_view() {
    let store = InMemoryStore::new();
    let total = fill(&store, 500).await;
    let saved = InMemoryViewStore::new();
    let first = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .persist_to(saved.clone())
        .start();
    first.handle().wait_for(Position(500)).await.unwrap();
    let progress = first.handle().progress()[bookshelf_core::source::GLOBAL];
    assert_eq!(
        (progress.position, progress.end, progress.lag()),
        (500, Some(500), Some(0))
    );
    let incremental = first.handle().read(Ledger::clone);
    first.stop().await.unwrap();

    let rebuilt = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .persist_to(saved.clone())
        .rebuild()
        .start();
    rebuilt.handle().wait_for(Position(500)).await.unwrap();
    assert_eq!(rebuilt.handle().read(Ledger::clone), incremental);
    assert_eq!(incremental.total, total);
    rebuilt.stop().await.unwrap();
    assert_eq!(saved.load().await.unwrap().unwrap().checkpoint, Position(500));
}

#[tokio::test]
async fn a_file_view_store_survives_a_restart_and_reports_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.json");
    let store = InMemoryStore::new();
    let total = fill(&store, 200).await;
    let running = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .persist_to(FileViewStore::new(&path))
        .start();
    running.handle().wait_for(Position(200)).await.unwrap();
    running.stop().await.unwrap();

    let more = fill(&store, 50).await;
    let running = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .persist_to(FileViewStore::new(&path))
        .start();
    running.handle().wait_for(Position(250)).await.unwrap();
    running.handle().read(|l| {
        assert_eq!(l.total, total + more);
        assert!(l.applied_each_once_in_order());
        assert_eq!(l.applied.len(), 250);
    });
    running.stop().await.unwrap();

    std::fs::write(&path, br#"{"checkpoint":3,"state":{"applied":"nope"}}"#).unwrap();
    let running = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .persist_to(FileViewStore::new(&path))
        .start();
    assert!(
        running.handle().wait_for(Position(250)).await.is_err(),
        "a view that cannot load must not report progress"
    );
    assert!(running.handle().failure().unwrap().contains("rebuild"));
    assert!(matches!(running.stop().await, Err(ProjectionError::SavedState { .. })));
}

#[tokio::test]
async fn view_stores_in_memory_and_in_files_remove_a_view() {
    use bookshelf_testkit::view_stores::a_removed_view_is_gone_and_the_others_stay;
    a_removed_view_is_gone_and_the_others_stay(InMemoryViewStore::new(), InMemoryViewStore::new()).await;
    let dir = tempfile::tempdir().unwrap();
    a_removed_view_is_gone_and_the_others_stay(
        FileViewStore::new(dir.path().join("one.json")),
        FileViewStore::new(dir.path().join("other.json")),
    )
    .await;
}
