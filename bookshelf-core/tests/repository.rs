//! The command runtime: conflicts and retries, preconditions, snapshots,
//! upcasting of stored old events, and the aggregate test kit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bookshelf_core::testing::AggregateTest;
use bookshelf_core::{
    async_trait, Aggregate, AppendOutcome, CommandError, DomainEvent, Envelope, EventStore, ExpectedVersion,
    InMemorySnapshots, InMemoryStore, Metadata, NewEvent, Position, ProjectionRunner, RecordedEvent, Repository,
    RetryPolicy, Snapshot, SnapshotStore, StoreError, StreamId, Upcasters, Version, View,
};
use bookshelf_testkit::accounts::{Account, AccountCommand, AccountError, AccountEvent};
use serde::{Deserialize, Serialize};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commands_take_turns_in_one_repository_and_conflict_across_repositories() {
    let store = InMemoryStore::new();
    let plain = || Arc::new(Repository::<Account, _>::new(store.clone(), ()));
    let retrying = || Arc::new(Repository::<Account, _>::new(store.clone(), ()).with_retry(RetryPolicy::attempts(50)));
    for id in ["1", "2", "3"] {
        plain()
            .execute(id, &AccountCommand::Open, Metadata::default())
            .await
            .unwrap();
    }

    // Eight deposits at once, each through the repository `repos` gives it.
    let race = |repos: Vec<Arc<Repository<Account, InMemoryStore>>>, id: &'static str| async move {
        let barrier = Arc::new(tokio::sync::Barrier::new(repos.len()));
        let tasks: Vec<_> = repos
            .into_iter()
            .map(|repo| {
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    repo.execute(id, &AccountCommand::Deposit(1), Metadata::default()).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    };

    // One repository: the commands take turns, and all land without retries.
    let shared = plain();
    let results = race(vec![shared; 8], "1").await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let loaded = plain().load("1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (8, Version(9)));

    // Eight repositories (as eight processes would be) without retries: the
    // losers see a conflict and their deposit is not stored.
    let results = race((0..8).map(|_| plain()).collect(), "2").await;
    let landed = results.iter().filter(|r| r.is_ok()).count();
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(_) | Err(CommandError::Conflict { .. }))));
    assert_eq!(plain().load("2").await.unwrap().state.balance, landed as i64);

    // With retries, every deposit lands exactly once.
    let results = race((0..8).map(|_| retrying()).collect(), "3").await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let loaded = plain().load("3").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (8, Version(9)));
}

#[tokio::test]
async fn an_if_match_precondition_is_checked_and_never_retried() {
    let repo = Repository::<Account, _>::new(InMemoryStore::new(), ()).with_retry(RetryPolicy::attempts(5));
    repo.execute("1", &AccountCommand::Open, Metadata::default())
        .await
        .unwrap();
    let ok = repo
        .execute_at("1", Version(1), &AccountCommand::Deposit(3), Metadata::default())
        .await
        .unwrap();
    assert_eq!(ok.version, Version(2));
    let stale = repo
        .execute_at("1", Version(1), &AccountCommand::Deposit(3), Metadata::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            CommandError::Conflict {
                actual: Version(2),
                expected: ExpectedVersion::Exact(Version(1)),
                ..
            }
        ),
        "{stale}"
    );
    let rejected = repo
        .execute("1", &AccountCommand::Deposit(-1), Metadata::default())
        .await
        .unwrap_err();
    assert!(matches!(
        rejected,
        CommandError::Rejected(AccountError::NotPositive(-1))
    ));
    assert_eq!(repo.load("1").await.unwrap().state.balance, 3);
}

#[tokio::test]
async fn events_carry_the_commands_metadata() {
    let store = InMemoryStore::new();
    let repo = Repository::<Account, _>::new(store.clone(), ());
    let metadata = Metadata::correlated("req-42").caused_by("cmd-1").with("user", "ann");
    repo.execute("1", &AccountCommand::Open, metadata.clone())
        .await
        .unwrap();
    let events = store
        .read_stream(&StreamId::new("account-1"), Version(1))
        .await
        .unwrap();
    assert_eq!(events[0].metadata, metadata);
    assert_eq!(events[0].event_type, "Opened");
}

/// A store that counts the events it hands out from `read_stream`.
#[derive(Clone, Default)]
struct CountingStore {
    inner: InMemoryStore,
    read: Arc<AtomicU64>,
}

#[async_trait]
impl EventStore for CountingStore {
    type Subscription = <InMemoryStore as EventStore>::Subscription;
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let events = self.inner.read_stream(stream, from).await?;
        self.read.fetch_add(events.len() as u64, Ordering::SeqCst);
        Ok(events)
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.inner.stream_version(stream).await
    }
    async fn head(&self) -> Result<Position, StoreError> {
        self.inner.head().await
    }
    async fn find_idempotency_key(&self, stream: &StreamId, key: &str) -> Result<Option<Version>, StoreError> {
        self.inner.find_idempotency_key(stream, key).await
    }
    async fn subscribe(&self, from: Position) -> Result<Self::Subscription, StoreError> {
        self.inner.subscribe(from).await
    }
}

#[tokio::test]
async fn an_idempotency_key_is_found_without_reading_the_stream() {
    let store = CountingStore::default();
    let repo = Repository::<Account, _>::new(store.clone(), ()).with_snapshots(InMemorySnapshots::new(), 100);
    repo.execute_once("1", "open", &AccountCommand::Open, Metadata::default())
        .await
        .unwrap();
    for n in 0..249 {
        repo.execute_once(
            "1",
            &format!("deposit-{n}"),
            &AccountCommand::Deposit(2),
            Metadata::default(),
        )
        .await
        .unwrap();
    }
    store.read.store(0, Ordering::SeqCst);
    let again = repo
        .execute_once("1", "deposit-3", &AccountCommand::Deposit(2), Metadata::default())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.version, Version(250));
    assert_eq!(store.read.load(Ordering::SeqCst), 0, "a known key reads no event");
    let new = repo
        .execute_once("1", "deposit-250", &AccountCommand::Deposit(2), Metadata::default())
        .await
        .unwrap();
    assert!(!new.duplicate);
    assert_eq!(
        store.read.load(Ordering::SeqCst),
        50,
        "a new key reads only what the load after the snapshot reads"
    );
    assert_eq!(repo.load("1").await.unwrap().state.balance, 500);
}

#[tokio::test]
async fn snapshots_spare_loading_the_whole_stream() {
    let store = CountingStore::default();
    let snapshots = InMemorySnapshots::new();
    let repo = Repository::<Account, _>::new(store.clone(), ()).with_snapshots(snapshots.clone(), 100);
    repo.execute("1", &AccountCommand::Open, Metadata::default())
        .await
        .unwrap();
    for _ in 0..249 {
        repo.execute("1", &AccountCommand::Deposit(2), Metadata::default())
            .await
            .unwrap();
    }
    let snapshot = snapshots.load(&StreamId::new("account-1")).await.unwrap().unwrap();
    assert_eq!(snapshot.version, Version(200));

    store.read.store(0, Ordering::SeqCst);
    let loaded = repo.load("1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (498, Version(250)));
    assert_eq!(
        store.read.load(Ordering::SeqCst),
        50,
        "only the events after the snapshot are read"
    );

    // The same stream without snapshots agrees.
    let plain = Repository::<Account, _>::new(store.clone(), ());
    assert_eq!(plain.load("1").await.unwrap().state, loaded.state);

    // A snapshot that no longer fits the state's type is ignored.
    snapshots
        .save(Snapshot {
            stream_id: StreamId::new("account-1"),
            version: Version(240),
            state: serde_json::json!({"opened": "maybe"}),
            taken_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    store.read.store(0, Ordering::SeqCst);
    assert_eq!(repo.load("1").await.unwrap().state.balance, 498);
    assert_eq!(store.read.load(Ordering::SeqCst), 250);
}

// --- Schema evolution, against events stored by older versions of the code.

#[derive(Default, Debug)]
struct Wallet {
    cents: i64,
    currencies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum WalletEvent {
    Opened,
    /// v1 was `Credited { value }`; v2 renamed it and called the field
    /// `amount`; v3 added `currency`.
    Deposited {
        amount: i64,
        currency: String,
    },
}

impl DomainEvent for WalletEvent {
    fn schema_version(event_type: &str) -> u32 {
        if event_type == "Deposited" {
            3
        } else {
            1
        }
    }

    fn upcasters() -> Upcasters {
        Upcasters::new()
            .add("Credited", 1, |event| {
                let value = event
                    .payload
                    .get_mut("value")
                    .map(serde_json::Value::take)
                    .ok_or("Credited without value")?;
                event.event_type = "Deposited".into();
                event.payload = serde_json::json!({ "amount": value });
                Ok(())
            })
            .add("Deposited", 2, |event| {
                event.payload["currency"] = "USD".into();
                Ok(())
            })
    }
}

#[async_trait]
impl Aggregate for Wallet {
    const CATEGORY: &'static str = "wallet";
    type Command = ();
    type Event = WalletEvent;
    type Error = std::convert::Infallible;
    type Services = ();
    async fn handle(&self, _: &(), _: &()) -> Result<Vec<WalletEvent>, Self::Error> {
        Ok(vec![])
    }
    fn apply(&mut self, event: &WalletEvent) {
        if let WalletEvent::Deposited { amount, currency } = event {
            self.cents += amount;
            self.currencies.push(currency.clone());
        }
    }
}

#[derive(Default)]
struct Deposits(Vec<(u64, i64, String)>);

impl View for Deposits {
    type Event = WalletEvent;
    fn apply(&mut self, event: Envelope<WalletEvent>) {
        if let WalletEvent::Deposited { amount, currency } = event.payload {
            self.0.push((event.version.0, amount, currency));
        }
    }
}

fn stored_old_events() -> InMemoryStore {
    let store = InMemoryStore::new();
    let fixture = include_str!("fixtures/wallet-events-v1-v2.jsonl");
    store.import(
        fixture
            .lines()
            .map(|line| RecordedEvent::from_json(line).expect("fixture lines are envelopes")),
    );
    store
}

#[tokio::test]
async fn old_stored_events_are_upcast_on_load_and_in_projections() {
    let store = stored_old_events();
    let wallet = Repository::<Wallet, _>::new(store.clone(), ()).load("7").await.unwrap();
    assert_eq!(wallet.version, Version(4));
    assert_eq!(wallet.state.cents, 390);
    assert_eq!(wallet.state.currencies, ["USD", "USD", "EUR"]);

    let running = ProjectionRunner::<Deposits, _>::new("deposits", store.clone()).start();
    running.handle().wait_for(Position(4)).await.unwrap();
    assert_eq!(
        running.handle().read(|d| d.0.clone()),
        vec![(2, 250, "USD".into()), (3, 100, "USD".into()), (4, 40, "EUR".into())]
    );
    running.stop().await.unwrap();
}

// --- The test kit.

#[tokio::test]
async fn test_kit_given_when_then() {
    let state = AggregateTest::<Account>::new()
        .given([AccountEvent::Opened])
        .when(AccountCommand::Deposit(5))
        .await
        .then_expect_events([AccountEvent::Deposited { amount: 5 }]);
    assert_eq!(state.balance, 5);

    AggregateTest::<Account>::new()
        .when(AccountCommand::Deposit(5))
        .await
        .then_expect_error(|e| *e == AccountError::NotOpen);

    AggregateTest::<Account>::new()
        .given([AccountEvent::Opened])
        .when(AccountCommand::Open)
        .await
        .then_expect_error_message("the account is already open");
}

#[tokio::test]
#[should_panic(expected = "the command produced other events than expected")]
async fn test_kit_fails_on_other_events() {
    AggregateTest::<Account>::new()
        .given([AccountEvent::Opened])
        .when(AccountCommand::Deposit(5))
        .await
        .then_expect_events([AccountEvent::Deposited { amount: 6 }]);
}

#[tokio::test]
#[should_panic(expected = "but the command was rejected: the account is not open")]
async fn test_kit_fails_when_events_were_expected_but_the_command_was_rejected() {
    AggregateTest::<Account>::new()
        .when(AccountCommand::Deposit(5))
        .await
        .then_expect_events([AccountEvent::Deposited { amount: 5 }]);
}

#[tokio::test]
#[should_panic(expected = "expected an error, but the command produced")]
async fn test_kit_fails_when_an_error_was_expected_but_events_came() {
    AggregateTest::<Account>::new()
        .given([AccountEvent::Opened])
        .when(AccountCommand::Deposit(5))
        .await
        .then_expect_error(|_| true);
}

#[tokio::test]
#[should_panic(expected = "event changes on its way through JSON")]
async fn test_kit_catches_events_that_do_not_survive_json() {
    #[derive(Default)]
    struct Lossy;
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum LossyEvent {
        Happened {
            #[serde(skip)]
            at: u32,
            when: String,
        },
    }
    impl DomainEvent for LossyEvent {}
    #[async_trait]
    impl Aggregate for Lossy {
        const CATEGORY: &'static str = "lossy";
        type Command = ();
        type Event = LossyEvent;
        type Error = std::convert::Infallible;
        type Services = ();
        async fn handle(&self, _: &(), _: &()) -> Result<Vec<LossyEvent>, Self::Error> {
            Ok(vec![LossyEvent::Happened {
                at: 1,
                when: "now".into(),
            }])
        }
        fn apply(&mut self, _: &LossyEvent) {}
    }
    AggregateTest::<Lossy>::new()
        .when(())
        .await
        .then_expect_events([LossyEvent::Happened {
            at: 1,
            when: "now".into(),
        }]);
}

#[tokio::test]
async fn a_state_cache_reads_only_the_events_it_has_not_seen() {
    let store = CountingStore::default();
    let cached = Repository::<Account, _>::new(store.clone(), ()).with_cache(2);
    cached
        .execute("1", &AccountCommand::Open, Metadata::default())
        .await
        .unwrap();
    for _ in 0..9 {
        cached
            .execute("1", &AccountCommand::Deposit(3), Metadata::default())
            .await
            .unwrap();
    }

    // Commands through the cache read nothing more.
    store.read.store(0, Ordering::SeqCst);
    let loaded = cached.load("1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (27, Version(10)));
    assert_eq!(store.read.load(Ordering::SeqCst), 0, "the kept state is current");

    // A refused command and a stale If-Match put the state they took back.
    let refused = cached.execute("1", &AccountCommand::Open, Metadata::default()).await;
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(AccountError::AlreadyOpen))
    ));
    let stale = cached
        .execute_at("1", Version(3), &AccountCommand::Deposit(1), Metadata::default())
        .await;
    assert!(matches!(stale, Err(CommandError::Conflict { .. })));
    let loaded = cached.load("1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (27, Version(10)));
    assert_eq!(store.read.load(Ordering::SeqCst), 0, "still kept after both");

    // Another writer's events are read, and only those.
    let other = Repository::<Account, _>::new(store.clone(), ());
    for _ in 0..2 {
        other
            .execute("1", &AccountCommand::Deposit(5), Metadata::default())
            .await
            .unwrap();
    }
    store.read.store(0, Ordering::SeqCst);
    let loaded = cached.load("1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (37, Version(12)));
    assert_eq!(store.read.load(Ordering::SeqCst), 2, "only the two new events");
    let deposited = cached
        .execute_at("1", Version(12), &AccountCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    assert_eq!(
        deposited.version,
        Version(13),
        "its If-Match sees the other writer's events"
    );

    // Past its capacity the least recently used state goes, and is read again.
    for id in ["2", "3"] {
        cached
            .execute(id, &AccountCommand::Open, Metadata::default())
            .await
            .unwrap();
    }
    store.read.store(0, Ordering::SeqCst);
    let loaded = cached.load("1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (38, Version(13)));
    assert_eq!(store.read.load(Ordering::SeqCst), 13, "evicted: the whole stream again");
}

#[tokio::test]
async fn a_command_sent_twice_under_one_idempotency_key_is_carried_out_once() {
    let store = CountingStore::default();
    let accounts = Repository::<Account, _>::new(store.clone(), ()).with_cache(16);
    accounts
        .execute("1", &AccountCommand::Open, Metadata::default())
        .await
        .unwrap();
    let first = accounts
        .execute_once("1", "pay-7", &AccountCommand::Deposit(5), Metadata::correlated("req-1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.version, Version(2));
    let again = accounts
        .execute_once("1", "pay-7", &AccountCommand::Deposit(5), Metadata::correlated("req-2"))
        .await
        .unwrap();
    assert!(again.duplicate, "the key was seen");
    assert!(again.events.is_empty());
    assert_eq!(again.version, Version(2));
    let other = accounts
        .execute_once("1", "pay-8", &AccountCommand::Deposit(5), Metadata::default())
        .await
        .unwrap();
    assert_eq!((other.duplicate, other.version), (false, Version(3)));

    let loaded = accounts.load("1").await.unwrap();
    assert_eq!(loaded.state.balance, 10);
    let recorded = store
        .read_stream(&StreamId::new("account-1"), Version(2))
        .await
        .unwrap();
    assert_eq!(
        recorded[0]
            .metadata
            .extra
            .get(bookshelf_core::IDEMPOTENCY_KEY)
            .map(String::as_str),
        Some("pay-7")
    );
}

/// A cached state is decided on as it is, and what the append does not
/// check is decided again on the stream as stored: another writer's events
/// turn a conflict into a second try, a refusal into acceptance, and a
/// stale If-Match into a current one, with no retry policy at all.
#[tokio::test]
async fn a_cached_state_that_another_writer_moved_on_is_read_again_before_any_answer() {
    let store = InMemoryStore::new();
    let cached = Repository::<Account, _>::new(store.clone(), ()).with_cache(10);
    let other = Repository::<Account, _>::new(store.clone(), ());

    // A conflict on the cached version: read again, decided again, stored.
    cached
        .execute("1", &AccountCommand::Open, Metadata::default())
        .await
        .unwrap();
    other
        .execute("1", &AccountCommand::Deposit(5), Metadata::default())
        .await
        .unwrap();
    let deposited = cached
        .execute("1", &AccountCommand::Deposit(1), Metadata::default())
        .await
        .expect("decided again on the stored stream");
    assert_eq!(deposited.version, Version(3));
    assert_eq!(cached.load("1").await.unwrap().state.balance, 6);

    // A refusal on a cached state: checked against the stored stream.
    let refused = cached
        .execute("2", &AccountCommand::Deposit(2), Metadata::default())
        .await;
    assert!(matches!(refused, Err(CommandError::Rejected(AccountError::NotOpen))));
    other
        .execute("2", &AccountCommand::Open, Metadata::default())
        .await
        .unwrap();
    let accepted = cached
        .execute("2", &AccountCommand::Deposit(2), Metadata::default())
        .await
        .expect("the other writer opened it");
    assert_eq!(accepted.version, Version(2));

    // An If-Match for the stored version, not the cached one, is met.
    other
        .execute("2", &AccountCommand::Deposit(4), Metadata::default())
        .await
        .unwrap();
    let current = cached
        .execute_at("2", Version(3), &AccountCommand::Deposit(1), Metadata::default())
        .await
        .expect("version 3 is the stored one");
    assert_eq!(current.version, Version(4));
    let stale = cached
        .execute_at("2", Version(3), &AccountCommand::Deposit(1), Metadata::default())
        .await;
    assert!(matches!(stale, Err(CommandError::Conflict { actual: Version(4), .. })));
    assert_eq!(
        store.stream_version(&StreamId::new("account-2")).await.unwrap(),
        Version(4)
    );
}
