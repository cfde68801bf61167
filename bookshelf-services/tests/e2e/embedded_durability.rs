//! The embedded default keeps its data: `last_read` on SQLite, SIGKILLed
//! during a write load and started again on the same data directory. Every
//! command answered 2xx is there; nothing else is but the commands in
//! flight at the kill (at most one per client); and the views, resumed
//! from their checkpoints, equal a rebuild from the events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::Service;
use serde_json::{json, Value};

const CLIENTS: usize = 8;

/// What the clients were told, and what they were not.
#[derive(Default)]
struct Ledger {
    /// Books whose add was answered 201, with how many reads were answered 2xx.
    added: BTreeMap<String, u64>,
    /// Requests without an answer (the process died under them).
    unknown_adds: usize,
    unknown_reads: BTreeMap<String, u64>,
}

async fn client(url: String, n: usize, ledger: Arc<Mutex<Ledger>>) {
    let http = reqwest::Client::new();
    for i in 0.. {
        let book = json!({
            "title": format!("Book {n}-{i}"),
            "author": format!("Author {}", (n + i) % 5),
            "isbn": "9780441013593",
        });
        let added = http.post(format!("{url}/books")).json(&book).send().await;
        let id = match added {
            Ok(answer) if answer.status().as_u16() == 201 => {
                let body: Value = answer.json().await.unwrap_or(Value::Null);
                let id = body["id"].as_str().unwrap_or_default().to_owned();
                ledger.lock().unwrap().added.insert(id.clone(), 0);
                id
            }
            Ok(answer) => panic!("an add answered {}", answer.status()),
            Err(_) => {
                ledger.lock().unwrap().unknown_adds += 1;
                return;
            }
        };
        for _ in 0..(i % 3) {
            match http.post(format!("{url}/books/{id}/read")).send().await {
                Ok(answer) if answer.status().is_success() => {
                    *ledger.lock().unwrap().added.entry(id.clone()).or_default() += 1;
                }
                Ok(answer) => panic!("a read answered {}", answer.status()),
                Err(_) => {
                    *ledger.lock().unwrap().unknown_reads.entry(id.clone()).or_default() += 1;
                    return;
                }
            }
        }
    }
}

async fn get(url: &str) -> Value {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_embedded_service_keeps_every_answered_command_and_its_views() {
    let dir = std::env::temp_dir().join(format!("bookshelf-durable-{}", uuid::Uuid::new_v4().simple()));
    let service = Service::start_in(&dir, "last_read", &[] as &[&str]);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(service.url.clone(), n, Arc::clone(&ledger))))
        .collect();
    let start = Instant::now();
    while ledger.lock().unwrap().added.len() < 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "the load makes progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    service.crash();
    for client in clients {
        client.await.expect("a client ends when the service dies");
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.unknown_adds + ledger.unknown_reads.values().sum::<u64>() as usize <= CLIENTS);

    // Started again on the same data directory (the default one, in its
    // working directory).
    let service = Service::start_in(&dir, "last_read", &[] as &[&str]);
    let mut stored_books = 0;
    for (id, &reads) in &ledger.added {
        let book = get(&format!("{}/books/{id}", service.url)).await;
        let stored = book["reads"]
            .as_u64()
            .unwrap_or_else(|| panic!("book {id} is there: {book}"));
        let unknown = ledger.unknown_reads.get(id).copied().unwrap_or(0);
        assert!(
            (reads..=reads + unknown).contains(&stored),
            "book {id}: {stored} reads stored, {reads} answered, {unknown} unknown"
        );
        stored_books += 1;
    }
    let authors = get(&format!("{}/authors", service.url)).await;
    let on_shelf: u64 = authors
        .as_array()
        .expect("a list")
        .iter()
        .map(|a| a["books"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        (stored_books..=stored_books + ledger.unknown_adds as u64).contains(&on_shelf),
        "{on_shelf} books on the shelf, {stored_books} answered, {} unknown",
        ledger.unknown_adds
    );
    println!(
        "{} books answered ({} reads), {} requests cut by the kill; all kept",
        ledger.added.len(),
        ledger.added.values().sum::<u64>(),
        ledger.unknown_adds + ledger.unknown_reads.values().sum::<u64>() as usize
    );

    // The views as resumed from their checkpoints, then as rebuilt.
    let resumed = (get(&format!("{}/", service.url)).await, authors);
    assert!(service.terminate(), "stops cleanly");
    let service = Service::start_in(&dir, "last_read", &["--rebuild"]);
    // The rebuild reads the whole log again: wait for it to get there.
    let start = Instant::now();
    loop {
        let rebuilt = (
            get(&format!("{}/", service.url)).await,
            get(&format!("{}/authors", service.url)).await,
        );
        if rebuilt == resumed {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the views equal a rebuild from the events: {resumed:?} against {rebuilt:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(service.terminate());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_data_file_stops_the_service_with_an_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("bookshelf-bad-file-{}", uuid::Uuid::new_v4().simple()));
    let data = dir.join("bookshelf-data");
    std::fs::create_dir_all(&data).unwrap();
    let garbage = vec![0x5a_u8; 16_384];
    std::fs::write(data.join("bookshelf.sqlite"), &garbage).unwrap();
    let (ok, stderr) = crate::support::run_in(&dir, "last_read", &["--port", "0"]);
    assert!(!ok, "the service refused to start");
    assert!(
        stderr.contains("bookshelf.sqlite") && stderr.contains("not a"),
        "the error names the file and says what is wrong: {stderr}"
    );
    assert_eq!(
        std::fs::read(data.join("bookshelf.sqlite")).unwrap(),
        garbage,
        "nothing overwritten"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
