//! A store's memory does not grow with the log: opening on its local state
//! takes the same memory for a topic of 20,000 events as for one of 100,000.
//! Each open is the `kafka_open` example, a process of its own, so that its
//! peak resident memory is its own.

mod common;

use common::{brokers, topic};
use std::path::PathBuf;
use std::process::Command;

fn kafka_open(args: &[&str]) -> String {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binaries live in target/<profile>/deps")
        .join("examples")
        .join("kafka_open");
    assert!(
        bin.exists(),
        "{} is missing: build the examples first (scripts/test.sh does)",
        bin.display()
    );
    let output = Command::new(&bin).args(args).output().expect("kafka_open runs");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kafka_open {args:?} failed: {printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    printed
}

fn figure(printed: &str, key: &str) -> f64 {
    printed
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {printed:?}"))
}

/// Fills a topic with `events`, opens a store on it once (replaying it into
/// a new state file), then again on that state; returns the second open's
/// peak memory in KiB and its seconds.
fn reopen_peak(events: u64) -> (f64, f64) {
    let brokers = brokers();
    let topic = topic(&format!("memory-{events}"));
    let state: PathBuf = std::env::temp_dir().join(format!("{topic}.sqlite"));
    let state_text = state.display().to_string();
    kafka_open(&["fill", &brokers, &topic, &events.to_string(), "1000"]);
    kafka_open(&["open", &brokers, &topic, &state_text]);
    let printed = kafka_open(&["open", &brokers, &topic, &state_text]);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{state_text}{suffix}"));
    }
    println!("{events} events, reopened: {printed}");
    (figure(&printed, "peak_kib"), figure(&printed, "seconds"))
}

#[test]
fn reopening_on_local_state_takes_the_same_memory_for_a_five_times_longer_log() {
    let (small, _) = reopen_peak(20_000);
    let (large, seconds) = reopen_peak(100_000);
    // The events are in the state file, not in memory: 80,000 more events
    // (about 25 MB of JSON) may not show in the peak.
    assert!(
        large < small + 8_192.0,
        "peak {large} KiB for 100,000 events against {small} KiB for 20,000"
    );
    assert!(large < 48_000.0, "peak {large} KiB after reopening");
    assert!(seconds < 10.0, "reopening on local state took {seconds} s");
}
