//! Side-by-side rebuilds: a new version of a view built from the start of a
//! log of 100,000 events beside the version answering, swapped in one step;
//! queries asked all along see one version's whole view, never a partial
//! one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bookshelf_core::versions::{versioned, Kept, Versions, VersionsError};
use bookshelf_core::{
    Envelope, EventStore, ExpectedVersion, InMemoryStore, Position, ProjectionRunner, StreamId, View, ViewStore,
};
use bookshelf_testkit::accounts::{deposit, AccountEvent};
use serde::{Deserialize, Serialize};

/// What queries are answered with.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Totals {
    deposits: u64,
    sum: i64,
}

/// Version 1: sums the deposits.
#[derive(Default)]
struct Summed(Totals);

impl View for Summed {
    type Event = AccountEvent;
    fn apply(&mut self, event: Envelope<AccountEvent>) {
        if let AccountEvent::Deposited { amount } = event.payload {
            self.0.deposits += 1;
            self.0.sum += amount;
        }
    }
}

/// Version 2, the code changed: sums them in cents.
#[derive(Default, Serialize, Deserialize)]
struct InCents(Totals);

/// Where version 2's saved state cannot be read: it fails as it starts.
struct Unreadable;

#[bookshelf_core::async_trait]
impl bookshelf_core::ViewStore for Unreadable {
    async fn load(&self) -> Result<Option<bookshelf_core::StoredView>, bookshelf_core::ViewStoreError> {
        Err(bookshelf_core::ViewStoreError("the disk went away".into()))
    }
    async fn save(&self, _: &bookshelf_core::StoredView) -> Result<(), bookshelf_core::ViewStoreError> {
        Ok(())
    }
}

impl View for InCents {
    type Event = AccountEvent;
    fn apply(&mut self, event: Envelope<AccountEvent>) {
        if let AccountEvent::Deposited { amount } = event.payload {
            self.0.deposits += 1;
            self.0.sum += amount * 100;
        }
    }
}

fn summed(view: &Summed) -> &Totals {
    &view.0
}

fn in_cents(view: &InCents) -> &Totals {
    &view.0
}

const EVENTS: u64 = 100_000;

/// A log of [`EVENTS`] deposits; their sum.
async fn log() -> (InMemoryStore, i64) {
    let store = InMemoryStore::new();
    let mut sum = 0;
    for account in 0..EVENTS / 1_000 {
        let deposits: Vec<_> = (0..1_000)
            .map(|i| {
                let amount = (account * 1_000 + i) as i64 % 97 + 1;
                sum += amount;
                deposit(amount)
            })
            .collect();
        store
            .append(
                &StreamId::new(format!("account-{account}")),
                ExpectedVersion::NoStream,
                deposits,
            )
            .await
            .unwrap();
    }
    (store, sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_during_a_rebuild_of_100_000_events_never_see_a_partial_view() {
    let (store, sum) = log().await;
    let v1 = ProjectionRunner::<Summed, _>::new(versioned("totals", 1), store.clone()).start();
    assert_eq!(
        (versioned("totals", 1), versioned("totals", 2)),
        ("totals".to_owned(), "totals@v2".to_owned())
    );
    v1.wait_for(Position(EVENTS)).await.unwrap();
    let totals = Versions::new(1, v1, summed);
    let (old, new) = (
        Totals { deposits: EVENTS, sum },
        Totals {
            deposits: EVENTS,
            sum: sum * 100,
        },
    );

    // Queries all along, each checked: one whole version or the other.
    let done = Arc::new(AtomicBool::new(false));
    let (seen_old, seen_new) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let asking = {
        let (totals, done) = (totals.clone(), Arc::clone(&done));
        let (seen_old, seen_new) = (Arc::clone(&seen_old), Arc::clone(&seen_new));
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let (version, answer) = (totals.serving(), totals.read(|t| *t));
                match answer {
                    a if a == old => seen_old.fetch_add(1, Ordering::SeqCst),
                    a if a == new => seen_new.fetch_add(1, Ordering::SeqCst),
                    partial => panic!("a query saw a partial view: {partial:?} (version {version} served)"),
                };
                tokio::task::yield_now().await;
            }
        })
    };

    let v2 = ProjectionRunner::<InCents, _>::new(versioned("totals", 2), store.clone()).start();
    let building = v2.handle();
    totals.rebuild(2, v2, in_cents).await.unwrap();
    assert!(building.read(|v| v.0) == new, "swapped once whole");
    assert_eq!(totals.serving(), 2);
    assert_eq!(totals.previous(), Some(1), "the old version kept");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    done.store(true, Ordering::SeqCst);
    asking.await.expect("every answer whole");
    assert!(
        seen_old.load(Ordering::SeqCst) > 0,
        "the old version answered during the rebuild"
    );
    assert!(seen_new.load(Ordering::SeqCst) > 0, "the new one after");

    // Both follow the log; the old one until dropped.
    store
        .append(
            &StreamId::new("account-late"),
            ExpectedVersion::NoStream,
            vec![deposit(5)],
        )
        .await
        .unwrap();
    let end = Position(EVENTS + 1);
    totals.wait_for(end).await.unwrap();
    assert_eq!(totals.read(|t| t.sum), (sum + 5) * 100);
    totals.drop_previous().await.unwrap();
    assert_eq!(totals.previous(), None);
    totals.stop().await.unwrap();
}

#[tokio::test]
async fn a_version_that_fails_while_it_builds_never_serves() {
    let (store, sum) = log().await;
    let v1 = ProjectionRunner::<Summed, _>::new(versioned("totals", 1), store.clone()).start();
    v1.wait_for(Position(EVENTS)).await.unwrap();
    let totals = Versions::new(1, v1, summed);
    let v2 = ProjectionRunner::<InCents, _>::new(versioned("totals", 2), store.clone())
        .persist_to(Unreadable)
        .start();
    let refused = totals.rebuild(2, v2, in_cents).await;
    assert!(
        matches!(refused, Err(VersionsError::Ended { version: 2, .. })),
        "{refused:?}"
    );
    assert_eq!((totals.serving(), totals.read(|t| t.sum)), (1, sum));
    let again = ProjectionRunner::<Summed, _>::new(versioned("totals", 1), store.clone()).start();
    assert!(matches!(
        totals.rebuild(1, again, summed).await,
        Err(VersionsError::Served(1))
    ));
    totals.stop().await.unwrap();
}

/// Version `number` of the totals in cents, saved in its own store of
/// `saved` (which outlives the runner, as a database would).
fn in_cents_version(
    store: &InMemoryStore,
    saved: &[bookshelf_core::InMemoryViewStore],
    number: u32,
) -> bookshelf_core::Running<bookshelf_core::ViewState<InCents>> {
    ProjectionRunner::<InCents, _>::new(versioned("totals", number), store.clone())
        .persist_to(saved[number as usize].clone())
        .save_every(1)
        .start()
}

#[tokio::test]
async fn a_restart_serves_the_version_that_served_and_keeps_the_one_kept() {
    let (store, sum) = log().await;
    let saved: Vec<_> = (0..4).map(|_| bookshelf_core::InMemoryViewStore::new()).collect();
    let memory = bookshelf_core::InMemoryViewStore::new();
    // A dropped version's saved state is removed.
    let open = || async {
        let totals = Versions::open(memory.clone(), |n| in_cents_version(&store, &saved, n), in_cents).await?;
        let saved = saved.clone();
        Ok::<_, bookshelf_core::ViewStoreError>(totals.forgetting(move |n| {
            let saved = saved[n as usize].clone();
            async move { saved.remove().await.map_err(Into::into) }
        }))
    };
    let kept = |serving, previous, highest| Kept {
        serving,
        previous,
        highest,
    };

    let totals = open().await.unwrap();
    assert_eq!(totals.kept(), kept(1, None, 1), "nothing remembered: version 1");
    totals
        .rebuild(2, in_cents_version(&store, &saved, 2), in_cents)
        .await
        .unwrap();
    totals.stop().await.unwrap();

    // Restarted: version 2 serves, from its own saved state; 1 is kept.
    let totals = open().await.unwrap();
    assert_eq!(totals.kept(), kept(2, Some(1), 2));
    assert_eq!(Kept::load(&memory).await.unwrap(), kept(2, Some(1), 2));
    totals.wait_for(Position(EVENTS)).await.unwrap();
    assert_eq!(totals.read(|t| t.sum), sum * 100);

    // Back to version 1, in one step; remembered too.
    assert_eq!(totals.serve_previous().await.unwrap(), 1);
    totals.stop().await.unwrap();
    let totals = open().await.unwrap();
    assert_eq!(totals.kept(), kept(1, Some(2), 2));

    // Version 2 dropped: forgotten; the next rebuild is version 3, not 2 again.
    assert_eq!(totals.drop_previous().await.unwrap(), Some(2));
    assert!(saved[2].load().await.unwrap().is_none(), "version 2's state removed");
    assert!(saved[1].load().await.unwrap().is_some(), "version 1's kept");
    assert_eq!(totals.drop_previous().await.unwrap(), None, "nothing left to drop");
    assert!(matches!(totals.serve_previous().await, Err(VersionsError::NoneKept(1))));
    totals.stop().await.unwrap();
    let totals = open().await.unwrap();
    assert_eq!(totals.kept(), kept(1, None, 2));
    assert_eq!(totals.kept().next(), 3);
    totals.stop().await.unwrap();
}
