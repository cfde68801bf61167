//! The PostgreSQL store against a real server (`DATABASE_URL`, started by
//! `scripts/test.sh`): the behaviour every store has, the global log under
//! torture, several stores on one database, and what a bad URL or a newer
//! schema gets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bookshelf_core::{EventStore, ExpectedVersion, Position, ProjectionRunner, StreamId, Subscription, Version};
use bookshelf_postgres::{Options, PostgresStore, SCHEMA_VERSION};
use bookshelf_testkit::accounts::{deposit, Ledger};
use bookshelf_testkit::postgres::{fresh_database, server_url, with_database};
use rand::{Rng, SeedableRng};

async fn store(hint: &str) -> PostgresStore {
    let url = fresh_database(hint).await;
    PostgresStore::connect(&url).await.expect("a store on a fresh database")
}

mod behaviour {
    use super::store;

    bookshelf_testkit::store_suite!(async || ((), store("suite").await), async || {
        ((), store("snapshots").await.snapshots())
    });
}

/// The amount of a deposit's payload.
fn amount_of(payload: &str) -> i64 {
    let payload: serde_json::Value = serde_json::from_str(payload).expect("a deposit");
    payload["amount"].as_i64().expect("an amount")
}

/// `(version, amount)` of each deposit of `stream`, in order.
async fn deposits_in(store: &PostgresStore, stream: &StreamId) -> Vec<(u64, i64)> {
    let events = store.read_stream(stream, Version(1)).await.expect("the stream");
    events
        .iter()
        .map(|e| (e.version.0, amount_of(e.payload.get())))
        .collect()
}

fn message(error: impl std::fmt::Display) -> String {
    error.to_string()
}

#[tokio::test]
async fn a_server_that_is_not_there_is_named_in_the_error() {
    let port = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        socket.local_addr().expect("its address").port()
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/bookshelf");
    let started = std::time::Instant::now();
    let error = message(PostgresStore::connect(&url).await.expect_err("nothing listens there"));
    assert!(error.contains(&format!("127.0.0.1:{port}/bookshelf")), "{error}");
    assert!(error.contains("cannot connect"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10), "an error, not a hang");
}

#[tokio::test]
async fn a_missing_database_or_user_is_named_in_the_error() {
    let url = with_database(&server_url(), "no_such_database");
    let error = message(PostgresStore::connect(&url).await.expect_err("no such database"));
    assert!(error.contains("no_such_database"), "{error}");
    assert!(error.contains("does not exist"), "{error}");

    let url = server_url().replacen("postgres@", "nobody_here@", 1);
    let error = message(PostgresStore::connect(&url).await.expect_err("no such role"));
    assert!(error.contains("nobody_here"), "{error}");

    let error = message(
        PostgresStore::connect("mysql://x:secret@host/db")
            .await
            .expect_err("not postgres"),
    );
    assert!(!error.contains("secret"), "{error}");
}

#[tokio::test]
async fn a_schema_written_by_a_newer_version_is_refused_and_left_untouched() {
    let url = fresh_database("newer").await;
    let store = PostgresStore::connect(&url).await.expect("a new store");
    store
        .append(&StreamId::new("a-1"), ExpectedVersion::Any, vec![deposit(5)])
        .await
        .expect("an append");
    let client = store.pool().get().await.expect("a connection");
    client
        .execute("UPDATE bookshelf_schema SET version = $1", &[&(SCHEMA_VERSION + 1)])
        .await
        .expect("a newer schema, faked");
    drop(client);
    drop(store);

    let error = message(PostgresStore::connect(&url).await.expect_err("a newer schema"));
    assert!(error.contains("newer Bookshelf"), "{error}");
    assert!(error.contains(&format!("version {}", SCHEMA_VERSION + 1)), "{error}");

    // Untouched: the version and the event are as they were.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("a plain connection");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT (SELECT version FROM bookshelf_schema), (SELECT COUNT(*) FROM bookshelf_events)",
            &[],
        )
        .await
        .expect("the tables are there");
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i64>(1)), (SCHEMA_VERSION + 1, 1));
}

#[tokio::test]
async fn several_instances_migrating_at_once_apply_each_migration_once() {
    let url = fresh_database("migrate").await;
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    for start in starts {
        start.await.expect("no panic").expect("every instance starts");
    }
    assert_eq!(
        bookshelf_postgres::migrate(&url, None).await.expect("migrated"),
        SCHEMA_VERSION
    );
    // A store that only checks finds it up to date; on a fresh database it refuses.
    PostgresStore::connect_with(&url, Options::new().without_migrating())
        .await
        .expect("up to date");
    let empty = fresh_database("unmigrated").await;
    let error = message(
        PostgresStore::connect_with(&empty, Options::new().without_migrating())
            .await
            .expect_err("not migrated"),
    );
    assert!(error.contains("migrate it first"), "{error}");
}

#[tokio::test]
async fn stores_in_separate_schemas_of_one_database_are_apart() {
    let url = fresh_database("schemas").await;
    let books = PostgresStore::connect_with(&url, Options::new().schema("books"))
        .await
        .expect("a store in schema books");
    let changes = PostgresStore::connect_with(&url, Options::new().schema("changes"))
        .await
        .expect("a store in schema changes");
    books
        .append(
            &StreamId::new("a-1"),
            ExpectedVersion::Any,
            vec![deposit(1), deposit(2)],
        )
        .await
        .expect("an append");
    let mut subscription = changes.subscribe(Position::START).await.expect("a subscription");
    changes
        .append(&StreamId::new("a-1"), ExpectedVersion::NoStream, vec![deposit(3)])
        .await
        .expect("the same stream, apart");
    let mut batch = Vec::new();
    subscription.next_batch(&mut batch, 10).await.expect("a batch");
    assert_eq!(batch.len(), 1);
    assert_eq!(
        (books.head().await.unwrap(), changes.head().await.unwrap()),
        (Position(2), Position(1))
    );
    assert_eq!(
        bookshelf_postgres::migrate(&url, Some("changes"))
            .await
            .expect("migrated"),
        SCHEMA_VERSION
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_racing_from_separate_stores_on_one_database_have_one_winner() {
    let url = fresh_database("race").await;
    let stores = [
        PostgresStore::connect(&url).await.expect("store a"),
        PostgresStore::connect(&url).await.expect("store b"),
        PostgresStore::connect(&url).await.expect("store c"),
    ];
    for round in 0..50 {
        let stream = StreamId::new(format!("account-{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
        let racers: Vec<_> = stores
            .iter()
            .map(|store| {
                let (store, stream, barrier) = (store.clone(), stream.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.append(&stream, ExpectedVersion::NoStream, vec![deposit(1)]).await
                })
            })
            .collect();
        let mut wins = 0;
        for racer in racers {
            match racer.await.expect("no panic") {
                Ok(_) => wins += 1,
                Err(bookshelf_core::StoreError::Conflict { .. }) => {}
                Err(other) => panic!("neither a win nor a conflict: {other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
        assert_eq!(stores[0].stream_version(&stream).await.expect("a version"), Version(1));
    }
}

/// A store names the version of a one-event append when its own appends
/// reached the stream's last one, instead of looking the stream up; another
/// store's appends make what it knows stale, and every append still gets the
/// right version, or the conflict it should.
#[tokio::test]
async fn a_store_that_knows_a_stale_version_still_appends_at_the_right_one() {
    use bookshelf_core::StoreError::Conflict;
    let url = fresh_database("known").await;
    let a = PostgresStore::connect(&url).await.expect("store a");
    let b = PostgresStore::connect(&url).await.expect("store b");
    let stream = StreamId::new("account-1");
    let version = |outcome: Result<bookshelf_core::AppendOutcome, bookshelf_core::StoreError>| {
        outcome.map(|done| done.version.0).map_err(|error| match error {
            Conflict { actual, .. } => actual.0,
            other => panic!("neither an append nor a conflict: {other}"),
        })
    };
    let one = |amount| vec![deposit(amount)];
    let at = |v| ExpectedVersion::Exact(Version(v));

    assert_eq!(
        version(a.append(&stream, ExpectedVersion::NoStream, one(1)).await),
        Ok(1)
    );
    assert_eq!(version(a.append(&stream, ExpectedVersion::Any, one(2)).await), Ok(2));
    // b moves the stream on: a still believes it is at 2.
    assert_eq!(version(b.append(&stream, ExpectedVersion::Any, one(3)).await), Ok(3));
    assert_eq!(version(a.append(&stream, ExpectedVersion::Any, one(4)).await), Ok(4));
    assert_eq!(version(b.append(&stream, at(4), one(5)).await), Ok(5));
    // a knows 4: the stream is past it.
    assert_eq!(version(a.append(&stream, at(4), one(6)).await), Err(5));
    assert_eq!(version(a.append(&stream, at(3), one(6)).await), Err(5));
    assert_eq!(version(a.append(&stream, at(5), one(6)).await), Ok(6));
    // a knows 6; a version it has not seen the stream reach is looked up.
    assert_eq!(version(a.append(&stream, at(99), one(7)).await), Err(6));
    assert_eq!(
        version(a.append(&stream, ExpectedVersion::NoStream, one(7)).await),
        Err(6)
    );
    assert_eq!(version(a.append(&stream, ExpectedVersion::Any, one(7)).await), Ok(7));

    let stored = deposits_in(&a, &stream).await;
    assert_eq!(stored, (1..=7).map(|v| (v, v as i64)).collect::<Vec<_>>());
}

/// Appends gathered into one statement, each to a stream whose version the
/// store knows, some of them made stale by another store's appends: every
/// append lands at the next version of its stream, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gathered_appends_at_known_versions_land_right_when_some_are_stale() {
    let url = fresh_database("known_batch").await;
    let a = PostgresStore::connect(&url).await.expect("store a");
    let b = PostgresStore::connect(&url).await.expect("store b");
    let streams: Vec<StreamId> = (0..8).map(|i| StreamId::new(format!("account-{i}"))).collect();
    let mut amount = 0;
    let mut expected: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for round in 0..20 {
        if round % 3 == 1 {
            amount += 1;
            b.append(&streams[round % 8], ExpectedVersion::Any, vec![deposit(amount)])
                .await
                .expect("b's append");
            expected.entry(streams[round % 8].to_string()).or_default().push(amount);
        }
        let appends: Vec<_> = streams
            .iter()
            .map(|stream| {
                amount += 1;
                expected.entry(stream.to_string()).or_default().push(amount);
                let (a, stream, amount) = (a.clone(), stream.clone(), amount);
                tokio::spawn(async move { a.append(&stream, ExpectedVersion::Any, vec![deposit(amount)]).await })
            })
            .collect();
        for append in appends {
            append.await.expect("no panic").expect("a's append");
        }
    }
    for stream in &streams {
        let stored = deposits_in(&a, stream).await;
        let mut amounts: Vec<i64> = stored.iter().map(|e| e.1).collect();
        amounts.sort();
        assert_eq!(amounts, expected[&stream.to_string()], "{stream}: each append once");
        assert!(
            stored.iter().map(|e| e.0).eq(1..=stored.len() as u64),
            "{stream}: versions 1, 2, 3, …"
        );
    }
}

/// A runner's dead letters kept in the database, listed (the check every
/// store that keeps letters passes).
#[tokio::test]
async fn dead_letters_are_kept_in_the_database_and_listed_by_runner() {
    let store = store("dead_letters").await;
    let letters = store.dead_letters();
    bookshelf_testkit::dead_letters::kept_and_listed(store, letters.clone(), move |projection| {
        let letters = letters.clone();
        Box::pin(async move { letters.list(projection.as_deref()).await })
    })
    .await;
}

/// Dead letters re-driven from the database once the fix runs: each
/// applied once, in the order re-driven; one that still fails put back
/// (the check every store that keeps letters passes).
#[tokio::test]
async fn dead_letters_in_the_database_are_redriven_once() {
    let store = store("redriven").await;
    let (letters, views) = (store.dead_letters(), store.view_store("redriven-ledger"));
    bookshelf_testkit::dead_letters::redriven_once(store, letters.clone(), views, move |projection| {
        let letters = letters.clone();
        Box::pin(async move { letters.list(projection.as_deref()).await })
    })
    .await;
}

/// What the torture test's writers committed: each event's position and
/// amount (unique, so that a reader's view can be checked event by event).
#[derive(Default)]
struct Committed {
    events: Vec<(u64, i64)>,
    rolled_back: usize,
}

/// Many writers with random delays inside open transactions and random
/// rollbacks, beside plain appends; two subscriptions and a saved view
/// that is stopped and started again from its checkpoint, mid-run. Every
/// reader ends with exactly the committed events, in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_log_never_skips_under_slow_transactions_and_rollbacks() {
    let seed: u64 = std::env::var("BOOKSHELF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("torture seed {seed} (rerun with BOOKSHELF_SEED={seed})");
    let url = fresh_database("torture").await;
    let store = PostgresStore::connect_with(&url, Options::new().pool_size(24))
        .await
        .expect("a store");
    let committed = Arc::new(Mutex::new(Committed::default()));
    let next_amount = Arc::new(std::sync::atomic::AtomicI64::new(1));

    // Readers first, from the start: two subscriptions, and a view saved
    // every 50 events that is stopped and restarted mid-run.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut subscription = store.subscribe(Position::START).await.expect("a subscription");
                let mut seen: Vec<(u64, i64)> = Vec::new();
                let mut batch = Vec::new();
                loop {
                    let read =
                        tokio::time::timeout(Duration::from_secs(3), subscription.next_batch(&mut batch, 37)).await;
                    match read {
                        Ok(read) => read.expect("a batch"),
                        Err(_) => return seen, // quiet for 3 s: the writers are done
                    }
                    for event in &batch {
                        seen.push((event.position.0, amount_of(event.payload.get())));
                    }
                }
            })
        })
        .collect();
    let view_store = store.view_store("torture-ledger");
    let start_view = || {
        ProjectionRunner::<Ledger, _>::new("torture-ledger", store.clone())
            .persist_to(view_store.clone())
            .save_every(50)
            .start()
    };
    let view = start_view();

    let writers: Vec<_> = (0..12)
        .map(|w| {
            let (store, committed, next_amount) = (store.clone(), Arc::clone(&committed), Arc::clone(&next_amount));
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (w as u64 * 0x9e37_79b9));
                for _ in 0..40 {
                    let stream = StreamId::new(format!("account-{}", rng.random_range(0..6)));
                    let count = rng.random_range(1..=3);
                    let amounts: Vec<i64> = (0..count)
                        .map(|_| next_amount.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                        .collect();
                    let events = amounts.iter().map(|&a| deposit(a)).collect();
                    if w % 3 == 0 {
                        // Plain appends, gathered into the store's transactions.
                        let outcome = store
                            .append(&stream, ExpectedVersion::Any, events)
                            .await
                            .expect("an append");
                        let positions = outcome.first_position.0..=outcome.last_position.0;
                        committed.lock().unwrap().events.extend(positions.zip(amounts));
                        continue;
                    }
                    // Appends inside transactions of their own that wait
                    // with the transaction open, then commit or roll back.
                    let mut client = store.pool().get().await.expect("a connection");
                    let tx = client.transaction().await.expect("a transaction");
                    let outcome = store
                        .append_in(&tx, &stream, ExpectedVersion::Any, events)
                        .await
                        .expect("an append in a transaction");
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..8))).await;
                    if rng.random_bool(0.25) {
                        tx.rollback().await.expect("a rollback");
                        committed.lock().unwrap().rolled_back += 1;
                    } else {
                        tx.commit().await.expect("a commit");
                        let positions = outcome.first_position.0..=outcome.last_position.0;
                        committed.lock().unwrap().events.extend(positions.zip(amounts));
                    }
                }
            })
        })
        .collect();

    // Mid-run, the view is stopped and started again from its checkpoint.
    tokio::time::sleep(Duration::from_millis(300)).await;
    view.stop().await.expect("the view stops and saves");
    let view = start_view();

    for writer in writers {
        writer.await.expect("a writer ran to its end");
    }
    let (mut expected, rolled_back) = {
        let committed = committed.lock().unwrap();
        (committed.events.clone(), committed.rolled_back)
    };
    expected.sort();
    assert!(rolled_back > 0, "some transactions rolled back (seed {seed})");
    let head = store.head().await.expect("the head").0;

    for reader in readers {
        let seen = reader.await.expect("a reader ran to its end");
        let missing: Vec<_> = expected.iter().filter(|e| !seen.contains(e)).collect();
        assert!(
            missing.is_empty(),
            "a subscription skipped {} of {} committed events, the first at position {:?} (seed {seed})",
            missing.len(),
            expected.len(),
            missing.first().map(|e| e.0)
        );
        assert_eq!(seen.len(), expected.len(), "every committed event once (seed {seed})");
        assert!(seen == expected, "in position order (seed {seed})");
    }
    // The head is one past the last committed event (a rolled-back
    // append's positions stay unused).
    assert_eq!(expected.last().map(|e| e.0 + 1), Some(head), "seed {seed}");
    view.wait_for(Position(head)).await.expect("the view catches up");
    let (applied, total) = view.read(|ledger| (ledger.applied.clone(), ledger.total));
    assert!(
        applied.iter().copied().eq(expected.iter().map(|e| e.0)),
        "the restarted view applied each committed event once, in order (seed {seed})"
    );
    assert_eq!(total, expected.iter().map(|&(_, a)| a).sum::<i64>(), "seed {seed}");
    view.stop().await.expect("the view stops");
}

/// Deposits as rows, one per event (its position the key, so that an event
/// applied twice is an error), in whatever database the view is given.
struct DepositRows;

#[bookshelf_core::async_trait]
impl bookshelf_postgres::table::TableView for DepositRows {
    type Event = bookshelf_testkit::accounts::AccountEvent;

    async fn create(&self, db: &deadpool_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        db.batch_execute(
            "CREATE TABLE IF NOT EXISTS deposits (position bigint PRIMARY KEY, account text, amount bigint)",
        )
        .await
    }

    async fn apply(
        &self,
        db: &deadpool_postgres::Transaction<'_>,
        event: &bookshelf_core::Envelope<Self::Event>,
    ) -> Result<(), tokio_postgres::Error> {
        if let bookshelf_testkit::accounts::AccountEvent::Deposited { amount } = event.payload {
            db.execute(
                "INSERT INTO deposits (position, account, amount) VALUES ($1, $2, $3)",
                &[&(event.position.0 as i64), &event.stream_id.as_str(), &amount],
            )
            .await?;
        }
        Ok(())
    }
}

/// Events in one database, their rows in another (a replica, database to
/// database): stopped and started again, and run over events appended
/// while it was stopped, the table holds each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_view_in_another_database_reflects_each_event_once_across_restarts() {
    use bookshelf_postgres::table::TableFold;
    let events = store("table-events").await;
    let replica = store("table-replica").await;
    let append = |n: i64| {
        let events = events.clone();
        async move {
            events
                .append(
                    &StreamId::new(format!("account-{}", n % 3)),
                    ExpectedVersion::Any,
                    vec![deposit(n)],
                )
                .await
                .expect("an append")
        }
    };
    let start = || async {
        TableFold::open("deposits", &replica, DepositRows)
            .await
            .expect("the view's tables")
            .follow(events.clone())
            .start()
    };
    let view = start().await;
    for n in 1..=100 {
        append(n).await;
    }
    let last = append(101).await;
    view.wait_for(last.last_position.next()).await.expect("caught up");
    view.stop().await.expect("stopped");

    for n in 102..=200 {
        append(n).await;
    }
    let view = start().await;
    view.wait_for(Position(200)).await.expect("caught up again");
    let db = view.client().await.expect("a connection to the replica");
    let row = db
        .query_one("SELECT COUNT(*), SUM(amount)::bigint FROM deposits", &[])
        .await
        .expect("the rows");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (200, (1..=200).sum::<i64>())
    );
    let saved = db
        .query_one(
            "SELECT position FROM bookshelf_checkpoints WHERE name = 'deposits'",
            &[],
        )
        .await
        .expect("the checkpoint, in the replica");
    assert_eq!(saved.get::<_, i64>(0), 200);
    drop(db);
    view.stop().await.expect("stopped");
}

/// The server crashes (stopped at once) and comes back under a steady load
/// of appends, with a saved view and a table view following: appends fail
/// fast while it is away and succeed once it is back, every acknowledged
/// append is kept once, and neither view applies anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_crashes_and_returns_loses_no_acknowledged_append_and_no_view_applies_twice() {
    use bookshelf_postgres::table::TableFold;
    let server = bookshelf_testkit::postgres::OwnServer::start("restart");
    let store = PostgresStore::connect(&server.url).await.expect("a store");
    let ledger = ProjectionRunner::<Ledger, _>::new("restart-ledger", store.clone())
        .persist_to(store.view_store("restart-ledger"))
        .save_every(20)
        .start();
    let table = TableFold::open("deposits", &store, DepositRows)
        .await
        .expect("the table")
        .follow(store.clone())
        .start();

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let (mut acknowledged, mut failed, mut slowest_failure) = (Vec::new(), 0, Duration::ZERO);
            let mut amount = 0;
            while acknowledged.len() < 400 {
                amount += 1;
                let stream = StreamId::new(format!("account-{}", amount % 5));
                let sent = std::time::Instant::now();
                match store.append(&stream, ExpectedVersion::Any, vec![deposit(amount)]).await {
                    Ok(_) => acknowledged.push(amount),
                    Err(error) => {
                        assert!(
                            matches!(error, bookshelf_core::StoreError::Backend(_)),
                            "a failure of the server: {error}"
                        );
                        failed += 1;
                        slowest_failure = slowest_failure.max(sent.elapsed());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acknowledged, failed, slowest_failure)
        })
    };
    // Let some land, then crash the server for two seconds.
    while store.head().await.map(|h| h.0).unwrap_or(0) < 150 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.up();

    let (acknowledged, failed, slowest_failure) = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the appends succeed again once the server is back")
        .expect("the writer ran to its end");
    assert!(failed > 0, "appends failed while the server was away");
    assert!(
        slowest_failure < Duration::from_secs(6),
        "a failure within the connect timeout, not a hang: {slowest_failure:?}"
    );

    // Every acknowledged append is in the log, once.
    let head = store.head().await.expect("the head").0;
    // (position, amount) of each stored event, in the log's order.
    let stored: Vec<(u64, i64)> = {
        let client = store.pool().get().await.expect("a connection");
        let rows = client
            .query(
                "SELECT position, payload::text FROM bookshelf_events ORDER BY position",
                &[],
            )
            .await
            .expect("the events");
        rows.iter()
            .map(|row| (row.get::<_, i64>(0) as u64, amount_of(row.get(1))))
            .collect()
    };
    assert_eq!(stored.last().map(|e| e.0 + 1), Some(head));
    for amount in &acknowledged {
        assert_eq!(
            stored.iter().filter(|e| e.1 == *amount).count(),
            1,
            "deposit {amount} kept once"
        );
    }

    // Both views caught up by themselves, each event applied once.
    tokio::time::timeout(Duration::from_secs(30), async {
        ledger.wait_for(Position(head)).await.expect("the ledger catches up");
        table.wait_for(Position(head)).await.expect("the table catches up");
    })
    .await
    .expect("the views reconnect by themselves");
    let applied = ledger.read(|l| l.applied.clone());
    assert!(
        applied.iter().copied().eq(stored.iter().map(|e| e.0)),
        "the ledger applied each event once, in order"
    );
    let db = table.client().await.expect("a connection");
    let row = db
        .query_one("SELECT COUNT(*), COUNT(DISTINCT position) FROM deposits", &[])
        .await
        .expect("the rows");
    let events = stored.len() as i64;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (events, events));
    drop(db);
    ledger.stop().await.expect("the ledger stops");
    table.stop().await.expect("the table stops");
}

/// A reader catching up on a log longer than one streamed read (50,000
/// events) gets every event once, in order, across the reads, and then
/// goes on live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_catching_up_across_streamed_reads_gets_each_event_once_in_order() {
    let store = store("streamed").await;
    let total: u64 = 50_000 + 1_234;
    let mut written = 0;
    while written < total {
        let n = 2_000.min(total - written);
        store
            .append(
                &StreamId::new(format!("account-{written}")),
                ExpectedVersion::NoStream,
                (0..n).map(|i| deposit(i as i64)).collect(),
            )
            .await
            .expect("appended");
        written += n;
    }
    let mut subscription = store.subscribe(Position(0)).await.expect("a subscription");
    let (mut batch, mut next) = (Vec::new(), 0u64);
    while next < total {
        subscription.next_batch(&mut batch, 700).await.expect("a batch");
        assert!(!batch.is_empty() && batch.len() <= 700, "a batch of {}", batch.len());
        for event in &batch {
            assert_eq!(event.position, Position(next), "every position once, in order");
            next += 1;
        }
    }
    assert_eq!(subscription.position(), Position(total));
    // Then live: a new event arrives, and nothing before it again.
    store
        .append(
            &StreamId::new("account-live"),
            ExpectedVersion::NoStream,
            vec![deposit(1)],
        )
        .await
        .expect("appended");
    tokio::time::timeout(Duration::from_secs(5), subscription.next_batch(&mut batch, 700))
        .await
        .expect("the live event within the poll")
        .expect("a batch");
    let positions: Vec<_> = batch.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![Position(total)]);
}

#[tokio::test]
async fn a_view_removed_from_the_database_is_gone_and_the_others_stay() {
    let store = store("views-removed").await;
    bookshelf_testkit::view_stores::a_removed_view_is_gone_and_the_others_stay(
        store.view_store("last-read@v2"),
        store.view_store("last-read"),
    )
    .await;
}
