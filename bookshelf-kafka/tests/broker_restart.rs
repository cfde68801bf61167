//! A broker that dies and comes back in the middle of a run loses nothing it
//! acknowledged. This test runs its own tansu (the binary `scripts/test.sh`
//! names in `TANSU_BIN`) with file storage, kills it while a writer appends,
//! and restarts it on the same port and file.

mod common;

use common::counted;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bookshelf_core::{EventStore, ExpectedVersion, StreamId, Version};
use bookshelf_kafka::{KafkaConfig, KafkaStore};

fn tansu() -> PathBuf {
    let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
        panic!("this test runs its own broker: run scripts/test.sh, or set TANSU_BIN to a tansu binary")
    });
    PathBuf::from(bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts tansu with its records in `dir/tansu.db`. (tansu 0.6 reads a
/// `sqlite://` path relative to its working directory, even one that looks
/// absolute, so it runs in `dir`.)
fn start_broker(port: u16, dir: &Path) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu())
        .current_dir(dir)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu starts");
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "tansu did not listen on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_midway_loses_nothing_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = start_broker(port, dir.path());
    let config = KafkaConfig::new(format!("127.0.0.1:{port}"), "restart")
        .partitions(2)
        .create_topic(true)
        .timeout(Duration::from_secs(20))
        // Longer than the outage below: librdkafka holds and retries what it
        // could not send. (An outage longer than this makes tansu 0.6.0 with
        // sqlite storage panic after the restart, "more or less than one
        // row" in tansu-storage's lite.rs, and stop serving: see the README.)
        .set("message.timeout.ms", "8000");
    let store = KafkaStore::open(config.clone()).await.unwrap();

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(0u32));
    let writer = {
        let (store, acknowledged, failed) = (store.clone(), Arc::clone(&acknowledged), Arc::clone(&failed));
        tokio::spawn(async move {
            for n in 0..300u64 {
                let stream = StreamId::new(format!("counter-{}", n % 5));
                match store.append(&stream, ExpectedVersion::Any, vec![counted(n)]).await {
                    Ok(_) => acknowledged.lock().unwrap().push(n),
                    Err(_) => *failed.lock().unwrap() += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let start = Instant::now();
    while acknowledged.lock().unwrap().len() < 100 {
        assert!(start.elapsed() < Duration::from_secs(60), "the writer made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill().unwrap(); // SIGKILL, mid-run
    broker.wait().unwrap();
    // With the broker away, a read barrier cannot be passed: it says so
    // within its bound rather than waiting for the broker.
    let began = Instant::now();
    let barrier = store
        .read_barrier(&StreamId::new("counter-0"), Duration::from_millis(700))
        .await;
    assert!(barrier.is_err(), "a barrier passed with the broker down");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "the barrier took {:?}",
        began.elapsed()
    );
    // The store hears nothing from the broker: its silence grows (what a
    // service's health check reads).
    while store.broker_silence() < Duration::from_millis(1200) {
        assert!(
            began.elapsed() < Duration::from_secs(4),
            "silence {:?}",
            store.broker_silence()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut broker = start_broker(port, dir.path());
    writer.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    println!(
        "acknowledged {} appends, {} failed while the broker was down",
        acknowledged.len(),
        failed.lock().unwrap()
    );
    assert!(acknowledged.len() > 100, "the writer goes on after the restart");

    store
        .read_barrier(&StreamId::new("counter-0"), Duration::from_secs(10))
        .await
        .expect("a barrier passes once the broker is back");
    let back = Instant::now();
    while store.broker_silence() > Duration::from_secs(1) {
        assert!(back.elapsed() < Duration::from_secs(10), "the broker answers again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A fresh store reads back everything that was acknowledged, in order.
    let reopened = KafkaStore::open(config.create_topic(false)).await.unwrap();
    let mut found = Vec::new();
    for s in 0..5 {
        let stream = StreamId::new(format!("counter-{s}"));
        let events = reopened.read_stream(&stream, Version(1)).await.unwrap();
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.version, Version(i as u64 + 1), "stream {stream} has no holes");
            let n: serde_json::Value = serde_json::from_str(event.payload.get()).unwrap();
            found.push(n["n"].as_u64().unwrap());
        }
    }
    let missing: Vec<u64> = acknowledged.iter().copied().filter(|n| !found.contains(n)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    broker.kill().unwrap();
    broker.wait().unwrap();
}
