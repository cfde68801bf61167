//! `bookshelf`, the command line, on the store of a running `last_read`
//! (the embedded SQLite store in its data directory) and on PostgreSQL: the
//! streams, a stream's events for people and for scripts, following a
//! stream, and its exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{add_book, read_book, Service};
use bookshelf::{EventStore, ExpectedVersion, StreamId};
use serde_json::{json, Value};

/// A child process, killed when dropped (a failing test included), so
/// that nothing it holds open outlives the test.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `bookshelf` with `args`: its exit code, standard output and error.
fn bookshelf(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bookshelf"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("bookshelf runs");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}")))
        .collect()
}

/// Appends to each of `streams` its count of events, as a new stream.
async fn fill(store: &impl EventStore, streams: &[(&str, i64)]) {
    for &(stream, events) in streams {
        let batch = (0..events).map(bookshelf_testkit::accounts::deposit).collect();
        store
            .append(&StreamId::new(stream), ExpectedVersion::NoStream, batch)
            .await
            .expect("appended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_shows_a_running_services_streams_and_follows_one() {
    let dir = std::env::temp_dir().join(format!("bookshelf-cli-{}", uuid::Uuid::new_v4().simple()));
    let shelf = Service::start_in(&dir, "last_read", &["--data", "data"]);
    let data = dir.join("data");
    let data = data.to_str().expect("a UTF-8 path");
    let http = reqwest::Client::new();
    let dune = add_book(&http, &shelf.url, "Dune").await;
    let emma = add_book(&http, &shelf.url, "Emma").await;
    read_book(&http, &shelf.url, &dune).await;
    read_book(&http, &shelf.url, &dune).await;

    // The streams, for scripts and for people.
    let (code, out, err) = bookshelf(&["--data", data, "streams", "--json", "--category", "book"]);
    assert_eq!(code, 0, "{err}");
    let mut expected = vec![
        json!({"stream": format!("book-{dune}"), "version": 3}),
        json!({"stream": format!("book-{emma}"), "version": 1}),
    ];
    expected.sort_by_key(|s| s["stream"].as_str().unwrap_or_default().to_owned());
    assert_eq!(json_lines(&out), expected);
    let (code, out, _) = bookshelf(&["--data", data, "streams"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("STREAM") && out.contains(&format!("book-{dune}  3")),
        "{out}"
    );
    let (_, out, _) = bookshelf(&["--data", data, "streams", "--category", "author"]);
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    // A stream's events.
    let stream = format!("book-{dune}");
    let (code, out, err) = bookshelf(&["--data", data, "events", &stream, "--json"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    let seen: Vec<(u64, &str)> = events
        .iter()
        .map(|e| {
            (
                e["version"].as_u64().unwrap_or(0),
                e["event_type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(seen, vec![(1, "BookAdded"), (2, "BookRead"), (3, "BookRead")]);
    assert_eq!(events[0]["payload"]["title"], "Dune");
    let (_, out, _) = bookshelf(&["--data", data, "events", &stream]);
    assert!(
        out.contains(&format!("{stream} v1 @")) && out.contains("BookAdded"),
        "{out}"
    );
    assert!(out.contains(r#""title": "Dune""#), "the payload, pretty: {out}");

    // The projections: the authors table view (in views.sqlite) catches up
    // with the four events; the log's end and its lag beside it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = bookshelf(&["--data", data, "projections", "--json"]);
        assert_eq!(code, 0, "{err}");
        let authors = json_lines(&out).into_iter().find(|p| p["name"] == "authors");
        if let Some(authors) = authors.filter(|a| a["position"] == 4) {
            assert_eq!(
                authors,
                json!({"name": "authors", "kind": "table", "in": "views.sqlite", "partition": "",
                       "position": 4, "end": 4, "lag": 0})
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the authors view reached 4: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, out, _) = bookshelf(&["--data", data, "projections"]);
    assert!(out.starts_with("NAME") && out.contains("authors"), "{out}");

    // Exit codes, and errors that name what is at fault.
    let (code, _, err) = bookshelf(&["--data", data, "events", "book-nobody"]);
    assert_eq!((code, err.trim()), (3, "bookshelf: no stream book-nobody in the store"));
    let missing = dir.join("nowhere");
    let (code, _, err) = bookshelf(&["--data", missing.to_str().unwrap_or_default(), "streams"]);
    assert_eq!(code, 1);
    assert!(err.contains("nowhere/bookshelf.sqlite"), "{err}");
    assert!(!missing.exists(), "nothing was made where no store was");
    let (code, _, _) = bookshelf(&["streams"]);
    assert_eq!(code, 2, "no store named");

    // Following a stream: what it holds, then each new event as it comes.
    let stream = format!("book-{emma}");
    let mut follower = Killed(
        Command::new(env!("CARGO_BIN_EXE_bookshelf"))
            .args(["--data", data, "events", &stream, "--json", "--follow"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("bookshelf runs"),
    );
    let (lines, receive) = std::sync::mpsc::channel();
    let stdout = follower.0.stdout.take().expect("its output");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = receive
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what} within 10 s"));
        serde_json::from_str(&line).expect("JSON")
    };
    assert_eq!(next("the stream's first event")["version"], 1);
    read_book(&http, &shelf.url, &dune).await; // another stream: not shown
    read_book(&http, &shelf.url, &emma).await;
    let followed = next("the new event");
    assert_eq!(
        (followed["version"].as_u64(), followed["stream_id"].as_str()),
        (Some(2), Some(stream.as_str()))
    );
    drop(follower);
    drop(shelf);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `runners` asks a running service how its runners stand: the last-read
/// view and the authors view of a `last_read`, caught up after a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_shows_a_running_services_runners() {
    let dir = std::env::temp_dir().join(format!("bookshelf-cli-{}", uuid::Uuid::new_v4().simple()));
    let shelf = Service::start_in(&dir, "last_read", &["--data", "data"]);
    let http = reqwest::Client::new();
    let dune = add_book(&http, &shelf.url, "Dune").await;
    read_book(&http, &shelf.url, &dune).await;

    // Both views caught up with the two events: position 2, lag 0.
    let caught_up = |runners: &[Value]| {
        ["last-read", "authors"].iter().all(|name| {
            runners.iter().any(|r| {
                r["name"] == *name
                    && r["state"] == "running"
                    && r["partitions"][""]["position"] == 2
                    && r["partitions"][""]["lag"] == 0
                    && r["moved_at"].is_string()
            })
        })
    };
    let mut runners = Vec::new();
    for _ in 0..50 {
        let (code, out, err) = bookshelf(&["--service", &shelf.url, "runners", "--json"]);
        assert_eq!(code, 0, "{err}");
        runners = json_lines(&out);
        if caught_up(&runners) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(caught_up(&runners), "{runners:#?}");
    let (code, out, _) = bookshelf(&["--service", &shelf.url, "runners"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME"), "{out}");
    let line = out
        .lines()
        .find(|line| line.starts_with("last-read "))
        .unwrap_or_else(|| panic!("a line for last-read in {out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cells[1..6], ["running", "global", "2", "2", "0"], "{out}");

    // The wrong target says so.
    let (code, _, err) = bookshelf(&["--data", "somewhere", "runners"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--service"), "{err}");
    let (code, _, err) = bookshelf(&["--service", "http://127.0.0.1:9", "runners"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:9/runners"), "{err}");
    drop(shelf);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The names of the runners the service at `url` lists.
async fn runner_names(http: &reqwest::Client, url: &str) -> Vec<String> {
    let runners = crate::support::get_json(http, &format!("{url}/runners")).await;
    let names = runners.as_array().expect("a list").iter();
    names.filter_map(|r| r["name"].as_str().map(str::to_owned)).collect()
}

/// Runs `bookshelf --service URL ARGS…` off the test's runtime.
async fn asking(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--service".to_owned(), url.to_owned()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || bookshelf(&all.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("ran")
}

/// `rebuild` builds the next version of a view beside the one serving, and
/// with `--wait` shows its progress (plain lines, not on a terminal) until
/// it serves; the view answers the same all along. `roll-back` serves the
/// version kept again, a restart serves the version that served, and
/// `drop-previous` stops the one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_rebuilds_a_view_beside_the_one_serving() {
    let dir = tempfile::tempdir().expect("a directory");
    let shelf = Service::start_in(dir.path(), "last_read", &["--data", "data"]);
    let http = reqwest::Client::new();
    for n in 0..30 {
        let id = add_book(&http, &shelf.url, &format!("Book {n}")).await;
        read_book(&http, &shelf.url, &id).await;
    }
    let before = crate::support::get_json(&http, &format!("{}/last-read", shelf.url)).await;
    assert_eq!(before.as_array().map(Vec::len), Some(5));

    let (code, out, err) = asking(&shelf.url, &["rebuild", "last-read", "--wait=60"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("building version 2 of last-read beside the one serving (runner last-read@v2)")
    );
    assert_eq!(
        lines.last().copied(),
        Some("version 2 of last-read serves; version 1 kept until dropped"),
        "{out}"
    );
    let after = crate::support::get_json(&http, &format!("{}/last-read", shelf.url)).await;
    assert_eq!(after, before, "the rebuilt version answers the same");
    let views = crate::support::get_json(&http, &format!("{}/views", shelf.url)).await;
    assert_eq!(views[0]["serving"], 2);
    assert_eq!(views[0]["previous"], 1);
    let names = runner_names(&http, &shelf.url).await;
    assert!(
        names.iter().any(|n| n == "last-read") && names.iter().any(|n| n == "last-read@v2"),
        "{names:?}"
    );

    // Once more: version 3 serves, 2 is kept and 1 stopped.
    let (code, out, _) = asking(&shelf.url, &["rebuild", "last-read", "--wait=60"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("version 3 of last-read serves; version 2 kept until dropped\n"),
        "{out}"
    );
    let names = runner_names(&http, &shelf.url).await;
    assert!(!names.iter().any(|n| n == "last-read"), "version 1 stopped: {names:?}");
    // A write after the swap reaches the version serving.
    let id = add_book(&http, &shelf.url, "After").await;
    read_book(&http, &shelf.url, &id).await;
    let now = crate::support::get_json(&http, &format!("{}/last-read", shelf.url)).await;
    assert_eq!(now[0]["title"], "After", "{now}");

    let (code, _, err) = asking(&shelf.url, &["rebuild", "nothing", "--wait=60"]).await;
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = bookshelf(&["--data", "somewhere", "rebuild", "last-read"]);
    assert_eq!(code, 2, "{err}");

    // Back to version 2, which kept reading: it has the book read last.
    let (code, out, err) = asking(&shelf.url, &["views"]).await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "VIEW       SERVING  BUILDING  KEPT  LAST FAILURE\nlast-read  3        -         2     -\n"
        ),
        "{err}"
    );
    let (code, out, err) = asking(&shelf.url, &["roll-back", "last-read"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "version 2 of last-read serves again; version 3 kept until dropped\n"
    );
    let now = crate::support::get_json(&http, &format!("{}/last-read", shelf.url)).await;
    assert_eq!(now[0]["title"], "After", "{now}");

    // A restart serves the version that served, and keeps the one kept.
    assert!(shelf.terminate(), "stopped cleanly");
    let shelf = Service::start_in(dir.path(), "last_read", &["--data", "data"]);
    let views = crate::support::get_json(&http, &format!("{}/views", shelf.url)).await;
    assert_eq!(
        (views[0]["serving"].clone(), views[0]["previous"].clone()),
        (json!(2), json!(3)),
        "{views}"
    );
    let now = crate::support::get_json(&http, &format!("{}/last-read", shelf.url)).await;
    assert_eq!(
        now[0]["title"], "After",
        "version 2 resumed from its saved state: {now}"
    );
    let names = runner_names(&http, &shelf.url).await;
    assert!(
        names.iter().any(|n| n == "last-read@v3"),
        "version 3 kept running: {names:?}"
    );

    let (code, out, err) = asking(&shelf.url, &["drop-previous", "last-read"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "version 3 of last-read dropped; version 2 serves\n"),
        "{err}"
    );
    let names = runner_names(&http, &shelf.url).await;
    assert!(
        !names.iter().any(|n| n == "last-read@v3"),
        "version 3 stopped: {names:?}"
    );
    let (code, _, err) = asking(&shelf.url, &["drop-previous", "last-read"]).await;
    assert_eq!(code, 1, "nothing left to drop");
    assert!(err.contains("409") && err.contains("no version is kept"), "{err}");
    let (code, _, err) = asking(&shelf.url, &["roll-back", "nothing"]).await;
    assert_eq!(code, 3, "{err}");
    // The next rebuild is version 4: no name is built twice.
    let (code, out, err) = asking(&shelf.url, &["rebuild", "last-read", "--wait=60"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("version 4 of last-read serves; version 2 kept until dropped\n"),
        "{out}"
    );

    // Where the versions are remembered is no projection of the store, and
    // a dropped version's saved state is removed.
    assert!(shelf.terminate(), "stopped cleanly");
    let data = dir.path().join("data");
    let (code, out, err) = bookshelf(&["--data", data.to_str().expect("a path"), "projections", "--json"]);
    assert_eq!(code, 0, "{err}");
    let names: Vec<Value> = json_lines(&out).iter().map(|p| p["name"].clone()).collect();
    // Versions 1 (replaced as the kept one by 3) and 3 (dropped) are gone
    // from the store; 2 is kept, 4 serves.
    let versions: Vec<&str> = names
        .iter()
        .filter_map(Value::as_str)
        .filter(|n| n.starts_with("last-read"))
        .collect();
    assert_eq!(versions, ["last-read@v2", "last-read@v4"], "{names:?}");
}

/// `dead-letters` lists what a runner set aside in the store, by runner,
/// for people and for scripts; `redrive` hands them back to the runner,
/// which applies those the code now running reads and puts back the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_lists_and_redrives_the_dead_letters_a_store_keeps() {
    use bookshelf::{NewEvent, Position, ProjectionRunner};
    let dir = tempfile::tempdir().expect("a directory");
    let store = bookshelf::sqlite::SqliteStore::open(dir.path().join("bookshelf.sqlite")).expect("a store");
    let broken = NewEvent {
        payload: serde_json::value::RawValue::from_string(r#"{"amount":"lots"}"#.to_owned()).expect("JSON"),
        ..bookshelf_testkit::accounts::deposit(1)
    };
    let seven = bookshelf_testkit::accounts::raw_event("Deposited", 1, r#"{"amount":"7"}"#);
    let deposits = vec![bookshelf_testkit::accounts::deposit(5), broken, seven];
    store
        .append(&StreamId::new("account-1"), ExpectedVersion::NoStream, deposits)
        .await
        .expect("appended");
    let ledger = ProjectionRunner::<bookshelf_testkit::accounts::Ledger, _>::new("ledger", store.clone())
        .persist_to(store.view_store("ledger"))
        .dead_letters(store.dead_letters())
        .start();
    ledger.wait_for(Position(3)).await.expect("caught up");
    ledger.stop().await.expect("stopped");
    let data = dir.path().to_str().expect("a UTF-8 path");

    let (code, out, err) = bookshelf(&["--data", data, "dead-letters"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID  SET ASIDE"), "{out}");
    assert!(
        lines[1].starts_with("1 ") && lines[1].contains("  ledger  position 1  -  ") && lines[1].contains("Deposited"),
        "{out}"
    );
    let (code, out, _) = bookshelf(&["--data", data, "dead-letters", "ledger", "--json"]);
    assert_eq!(code, 0);
    let letters = json_lines(&out);
    assert_eq!(letters.len(), 2, "{out}");
    assert_eq!(letters[0]["runner"], "ledger");
    assert_eq!(letters[0]["record"]["event"]["position"], 1);
    assert_eq!(letters[0]["record"]["event"]["payload"], json!({"amount": "lots"}));
    assert_eq!(letters[0]["ticket"], Value::Null);
    let (code, out, _) = bookshelf(&["--data", data, "dead-letters", "another", "--json"]);
    assert_eq!((code, out.as_str()), (0, ""), "another runner's: none");

    // Re-driven to the fixed code, which reads "7" and not "lots".
    let (code, _, err) = bookshelf(&["--data", data, "redrive", "ledger"]);
    assert_eq!(code, 2, "--id or --all: {err}");
    let (code, _, err) = bookshelf(&["--data", data, "redrive", "ledger", "--id", "99"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no dead letter 99 of runner ledger"), "{err}");
    let fixed = ProjectionRunner::<bookshelf_testkit::accounts::FixedLedger, _>::new("ledger", store.clone())
        .persist_to(store.view_store("ledger"))
        .dead_letters(store.dead_letters())
        .redrive_every(Duration::from_millis(50))
        .start();
    fixed.wait_for(Position(3)).await.expect("caught up");
    assert_eq!(fixed.read(|l| l.0.total), 5);
    let redrive = |args: &'static [&'static str]| {
        let mut all = vec!["--data", data, "redrive", "ledger"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        tokio::task::spawn_blocking(move || bookshelf(&all.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let (code, out, err) = redrive(&["--id", "2", "--wait"]).await.expect("ran");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "queued 1 dead letter of ledger for re-drive (1 waiting)\nletter 2: applied\n"
    );
    assert_eq!(fixed.read(|l| l.0.total), 12, "applied once");
    let (code, out, err) = redrive(&["--all", "--wait"]).await.expect("ran");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("letter 1: put back: ") && out.contains("Deposited"),
        "{out}"
    );
    assert!(err.contains("1 of 1 still failed"), "{err}");
    let (_, out, _) = bookshelf(&["--data", data, "dead-letters", "ledger", "--json"]);
    let letters = json_lines(&out);
    assert_eq!((letters.len(), &letters[0]["ticket"]), (1, &Value::Null), "{out}");
    fixed.stop().await.expect("stopped");
    let (code, _, err) = bookshelf(&["--data", data, "redrive", "ledger", "--all", "--wait=1"]);
    assert_eq!(code, 1);
    assert!(err.contains("is it running?"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_reads_a_postgres_store_without_changing_it() {
    let url = bookshelf_testkit::postgres::fresh_database("cli").await;
    // Not a store yet: said, and nothing is made.
    let (code, _, err) = bookshelf(&["--postgres", &url, "streams"]);
    assert_eq!(code, 1);
    assert!(err.contains("migrate it first"), "{err}");
    let store = bookshelf::postgres::PostgresStore::connect(&url)
        .await
        .expect("a store");
    fill(&store, &[("book-2", 2), ("author-1", 1)]).await;
    let (code, out, err) = bookshelf(&["--postgres", &url, "streams", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_lines(&out),
        vec![
            json!({"stream": "author-1", "version": 1}),
            json!({"stream": "book-2", "version": 2})
        ]
    );
    let (code, out, _) = bookshelf(&["--postgres", &url, "events", "book-2", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json_lines(&out).len(), 2);

    // A view saved one event behind the end of the log.
    let state = serde_json::value::RawValue::from_string("{}".to_owned()).expect("JSON");
    let saved = bookshelf::StoredView::new(&bookshelf::Checkpoint::global(bookshelf::Position(2)), state);
    bookshelf::ViewStore::save(&store.view_store("shelf"), &saved)
        .await
        .expect("saved");
    let (code, out, err) = bookshelf(&["--postgres", &url, "projections", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_lines(&out),
        vec![json!({"name": "shelf", "kind": "view", "in": "-", "partition": "", "position": 2, "end": 3, "lag": 1})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_reads_a_kafka_topic_as_a_reader() {
    let topic = format!("bookshelf-test-cli-{}", uuid::Uuid::new_v4().simple());
    let config = bookshelf_kafka::KafkaConfig::new(crate::support::brokers(), topic.clone())
        .partitions(3)
        .create_topic(true);
    let store = bookshelf_kafka::KafkaStore::open(config).await.expect("a store");
    fill(&store, &[("account-1", 3), ("account-2", 1), ("book-1", 2)]).await;
    let brokers = crate::support::brokers();
    let on_topic = |rest: &[&str]| {
        let mut args = vec!["--broker", brokers.as_str(), "--topic", topic.as_str()];
        args.extend_from_slice(rest);
        bookshelf(&args)
    };

    // Every partition read to its end; the claims on it passed over.
    let (code, out, err) = on_topic(&["streams", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_lines(&out),
        vec![
            json!({"stream": "account-1", "version": 3}),
            json!({"stream": "account-2", "version": 1}),
            json!({"stream": "book-1", "version": 2}),
        ]
    );
    let (code, out, err) = on_topic(&["events", "account-1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let versions: Vec<_> = json_lines(&out).iter().map(|e| e["version"].as_u64()).collect();
    assert_eq!(versions, vec![Some(1), Some(2), Some(3)]);
    let (code, _, err) = on_topic(&["events", "account-9"]);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = on_topic(&["projections"]);
    assert_eq!(code, 1);
    assert!(err.contains("keeps no checkpoints"), "{err}");

    // Its dead letters, in `<topic>.dead-letters`, listed and queued.
    let letters = bookshelf_kafka::KafkaDeadLetters::open(
        &bookshelf_kafka::KafkaConfig::new(brokers.clone(), topic.clone()).create_topic(true),
    )
    .await
    .expect("the letters' topics");
    let read = store
        .read_stream(&StreamId::new("book-1"), bookshelf::Version(0))
        .await
        .expect("read");
    bookshelf::DeadLetters::put(
        &letters,
        bookshelf::DeadLetter {
            projection: "ledger".into(),
            location: format!("{topic}/0@7"),
            record: bookshelf::Poison::Event(std::sync::Arc::clone(&read[0])),
            reason: "a payload from the future".into(),
        },
    )
    .await
    .expect("set aside");
    let (code, out, err) = on_topic(&["dead-letters", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(
        (&listed[0]["runner"], &listed[0]["reason"], &listed[0]["ticket"]),
        (&json!("ledger"), &json!("a payload from the future"), &Value::Null)
    );
    assert_eq!(listed[0]["record"]["event"]["stream_id"], "book-1");
    let (code, out, err) = on_topic(&["redrive", "ledger", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("queued 1 dead letter of ledger"), "{out}");
    let (_, out, _) = on_topic(&["dead-letters", "ledger", "--json"]);
    assert_eq!(json_lines(&out)[0]["ticket"], 1, "{out}");

    // Read as a reader: the store that writes the topic still owns it.
    store
        .append(
            &StreamId::new("account-2"),
            ExpectedVersion::Exact(bookshelf::Version(1)),
            vec![bookshelf_testkit::accounts::deposit(5)],
        )
        .await
        .expect("the writer still writes");
}
