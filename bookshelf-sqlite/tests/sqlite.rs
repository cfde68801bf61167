//! What the SQLite store adds to the behaviour every store has
//! (`bookshelf-testkit`'s store suite, run at the end): it keeps its events across a reopen, two processes
//! on one file race as two tasks do, views keep state and checkpoint in
//! one row, and bad files are errors naming the file.

use std::collections::BTreeSet;
use std::process::Command;

use bookshelf_core::{
    EventStore, ExpectedVersion, Position, ProjectionRunner, StoreError, StreamId, Subscription, Version,
};
use bookshelf_sqlite::SqliteStore;
use bookshelf_testkit::accounts::{deposit, Ledger};

fn message(error: StoreError) -> String {
    error.to_string()
}

/// Deposits each amount of `amounts`, one per append, over `accounts`
/// accounts (amount `n` into `account-{n % accounts}`).
async fn deposit_into(store: &SqliteStore, amounts: std::ops::Range<i64>, accounts: i64) {
    for n in amounts {
        store
            .append(
                &StreamId::new(format!("account-{}", n % accounts)),
                ExpectedVersion::Any,
                vec![deposit(n)],
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_reopened_store_has_kept_every_event_and_goes_on_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("events.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    deposit_into(&store, 0..10, 3).await;
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.head().await.unwrap(), Position(10));
    assert_eq!(
        store.stream_version(&StreamId::new("account-0")).await.unwrap(),
        Version(4)
    );
    let next = store
        .append(
            &StreamId::new("account-0"),
            ExpectedVersion::Exact(Version(4)),
            vec![deposit(99)],
        )
        .await
        .unwrap();
    assert_eq!((next.version, next.first_position), (Version(5), Position(10)));
    let mut subscription = store.subscribe(Position(8)).await.unwrap();
    let mut batch = Vec::new();
    subscription.next_batch(&mut batch, 10).await.unwrap();
    assert_eq!(batch.iter().map(|e| e.position.0).collect::<Vec<_>>(), [8, 9, 10]);
}

#[tokio::test]
async fn a_view_keeps_its_state_and_checkpoint_together_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    deposit_into(&store, 1..51, 1).await;
    let ledger = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .persist_to(store.view_store("ledger"))
        .start();
    ledger.handle().wait_for(Position(50)).await.unwrap();
    ledger.stop().await.unwrap();
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    deposit_into(&store, 51..61, 1).await;
    let ledger = ProjectionRunner::<Ledger, _>::new("ledger", store.clone())
        .persist_to(store.view_store("ledger"))
        .start();
    ledger.handle().wait_for(Position(60)).await.unwrap();
    ledger.handle().read(|view| {
        assert_eq!(view.total, (1..=60).sum::<i64>());
        // Resumed at its checkpoint: only the ten new events were applied
        // in this run, after the fifty restored with the state.
        assert_eq!(view.applied.len(), 60);
        assert!(view.applied_each_once_in_order());
    });
    ledger.stop().await.unwrap();
}

/// One writer process of `two_processes_on_one_file_race_as_tasks_do`.
/// Run only by that test, in a child process (it is ignored otherwise).
#[tokio::test]
#[ignore = "a child process of two_processes_on_one_file_race_as_tasks_do"]
async fn racing_writer() {
    let Ok(path) = std::env::var("BOOKSHELF_RACE_FILE") else {
        panic!("racing_writer runs only as the child of two_processes_on_one_file_race_as_tasks_do");
    };
    let store = SqliteStore::open(&path).unwrap();
    // Both writers start together: when the parent says go.
    let go = format!("{path}.go");
    while !std::path::Path::new(&go).exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut won = Vec::new();
    let mut conflicts = 0;
    for n in 0..300 {
        let stream = StreamId::new(format!("account-{}", n % 2));
        let version = store.stream_version(&stream).await.unwrap();
        match store
            .append(&stream, ExpectedVersion::Exact(version), vec![deposit(1)])
            .await
        {
            Ok(outcome) => won.push(format!("{stream}@{}", outcome.version)),
            Err(StoreError::Conflict { .. }) => conflicts += 1,
            Err(other) => panic!("{other}"),
        }
    }
    println!("RACE {conflicts} {}", won.join(" "));
}

#[test]
fn two_processes_on_one_file_race_as_tasks_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sqlite");
    drop(SqliteStore::open(&path).unwrap());
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "racing_writer", "--ignored", "--nocapture"])
                .env("BOOKSHELF_RACE_FILE", &path)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("the test binary runs again as a writer")
        })
        .collect();
    // Let both open the store, then start them at once.
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(format!("{}.go", path.display()), b"").unwrap();
    let mut won = Vec::new();
    let mut conflicts = 0;
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "a writer failed");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("RACE "))
            .expect("the writer's report");
        let mut fields = line.split(' ');
        conflicts += fields.next().and_then(|c| c.parse::<u32>().ok()).unwrap();
        won.extend(fields.map(str::to_owned));
    }
    // Every append that won is in the file once, at the version it was
    // told; every one that lost is not: the file holds exactly the wins.
    let distinct: BTreeSet<&String> = won.iter().collect();
    assert_eq!(distinct.len(), won.len(), "two writers won the same version");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let head = runtime.block_on(store.head()).unwrap();
    assert_eq!(head.0 as usize, won.len());
    assert_eq!(won.len() as u32 + conflicts, 600);
    println!("{} appends won, {conflicts} conflicted", won.len());
}

#[test]
fn bad_files_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();

    let garbage = dir.path().join("garbage.sqlite");
    std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
    let error = message(SqliteStore::open(&garbage).unwrap_err());
    assert!(error.contains("garbage.sqlite") && error.contains("not a"), "{error}");
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![b'x'; 8192], "left as it was");

    let foreign = dir.path().join("foreign.sqlite");
    {
        let db = rusqlite::Connection::open(&foreign).unwrap();
        db.execute_batch("CREATE TABLE invoices (id INTEGER); INSERT INTO invoices VALUES (1);")
            .unwrap();
    }
    let error = message(SqliteStore::open(&foreign).unwrap_err());
    assert!(
        error.contains("foreign.sqlite") && error.contains("another program"),
        "{error}"
    );
    let db = rusqlite::Connection::open(&foreign).unwrap();
    let kept: i64 = db.query_row("SELECT COUNT(*) FROM invoices", [], |r| r.get(0)).unwrap();
    assert_eq!(kept, 1, "the other program's data is untouched");

    let in_a_file = dir.path().join("a-file");
    std::fs::write(&in_a_file, b"not a directory").unwrap();
    let error = message(SqliteStore::open(in_a_file.join("events.sqlite")).unwrap_err());
    assert!(error.contains("a-file"), "{error}");
}

#[tokio::test]
async fn a_truncated_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    deposit_into(&store, 0..2_000, 7).await;
    drop(store);
    // Checkpointed into the main file when the last connection closed; cut
    // it in half.
    let length = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length / 2).unwrap();
    drop(file);
    let outcome = async {
        let store = SqliteStore::open(&path)?;
        for n in 0..7 {
            store
                .read_stream(&StreamId::new(format!("account-{n}")), Version(1))
                .await?;
        }
        store.head().await
    }
    .await;
    let error = message(outcome.expect_err("half a file cannot be read whole"));
    assert!(error.contains("events.sqlite"), "{error}");
}

mod behaviour {
    use bookshelf_sqlite::SqliteStore;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(dir.path().join("events.sqlite")).expect("a new SQLite store");
        (dir, store)
    }

    bookshelf_testkit::store_suite!(async || store(), async || {
        let (dir, store) = store();
        (dir, store.snapshots())
    });
}

/// The checkpoints of a file, as tools list them: views' (one of a global
/// log, one of Kafka partitions with its token), none for a file without
/// them, and an error naming a file that is not there.
#[tokio::test]
async fn saved_checkpoints_are_listed_by_kind_and_name() {
    use bookshelf_core::{Checkpoint, Mark, Position, StoredView, ViewStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    assert!(bookshelf_sqlite::saved_checkpoints(&path).unwrap().is_empty());
    let state = || serde_json::value::RawValue::from_string("{}".to_owned()).unwrap();
    let global = Checkpoint::global(Position(7));
    let mut partitions = Checkpoint::new();
    partitions.set("books/0", Mark { next: 3, token: 2 });
    partitions.set("books/1", Mark { next: 5, token: 0 });
    store
        .view_store("shelf")
        .save(&StoredView::new(&global, state()))
        .await
        .unwrap();
    store
        .view_store("kafka-fed")
        .save(&StoredView::new(&partitions, state()))
        .await
        .unwrap();
    let listed: Vec<_> = bookshelf_sqlite::saved_checkpoints(&path)
        .unwrap()
        .into_iter()
        .map(|saved| (saved.name, saved.kind, saved.checkpoint))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("kafka-fed".to_owned(), "view", partitions),
            ("shelf".to_owned(), "view", global)
        ]
    );
    let missing = dir.path().join("nowhere.sqlite");
    let error = bookshelf_sqlite::saved_checkpoints(&missing).unwrap_err().to_string();
    assert!(error.contains("nowhere.sqlite"), "{error}");
    assert!(!missing.exists(), "nothing was made");
}

/// A runner's dead letters kept in the file, listed (the check every store
/// that keeps letters passes).
#[tokio::test]
async fn dead_letters_are_kept_in_the_file_and_listed_by_runner() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("bookshelf.sqlite")).unwrap();
    let letters = store.dead_letters();
    bookshelf_testkit::dead_letters::kept_and_listed(store, letters.clone(), move |projection| {
        let letters = letters.clone();
        Box::pin(async move { letters.list(projection.as_deref()) })
    })
    .await;
}

/// Dead letters re-driven from the file once the fix runs: each applied
/// once, in the order re-driven; one that still fails put back (the check
/// every store that keeps letters passes).
#[tokio::test]
async fn dead_letters_in_the_file_are_redriven_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("bookshelf.sqlite")).unwrap();
    let (letters, views) = (store.dead_letters(), store.view_store("redriven-ledger"));
    bookshelf_testkit::dead_letters::redriven_once(store, letters.clone(), views, move |projection| {
        let letters = letters.clone();
        Box::pin(async move { letters.list(projection.as_deref()) })
    })
    .await;
}

/// A file made before the re-drive queue gets its column on open, and its
/// letters stay.
#[tokio::test]
async fn a_file_from_before_the_redrive_queue_gains_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bookshelf.sqlite");
    drop(SqliteStore::open(&path).unwrap());
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "ALTER TABLE dead_letters DROP COLUMN ticket; \
             INSERT INTO dead_letters (projection, location, reason, set_aside_at, event) \
             VALUES ('old', 'position 0', 'why', '2026-12-01T00:00:00Z', NULL)",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let kept = store.dead_letters().list(None).unwrap();
    assert_eq!((kept.len(), kept[0].ticket), (1, None));
    let letters = store.dead_letters();
    let queued = bookshelf_core::DeadLetters::redrive(&letters, "old", bookshelf_core::Redrive::All);
    assert_eq!(queued.await.unwrap(), 1);
    assert_eq!(store.dead_letters().list(None).unwrap()[0].ticket, Some(1));
}

#[tokio::test]
async fn a_view_removed_from_the_file_is_gone_and_the_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("views.sqlite")).unwrap();
    bookshelf_testkit::view_stores::a_removed_view_is_gone_and_the_others_stay(
        store.view_store("last-read@v2"),
        store.view_store("last-read"),
    )
    .await;
}
