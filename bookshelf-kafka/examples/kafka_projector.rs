//! A projection process over a Kafka topic, used by the tests that kill it:
//! it tallies `Counted` events into a view saved, with its partition offsets,
//! in a JSON file, and stops gracefully on SIGINT or SIGTERM.
//!
//! ```text
//! cargo run -p bookshelf-kafka --example kafka_projector -- BROKERS TOPIC STATE_FILE [PACE_MICROS]
//! ```
//!
//! `PACE_MICROS` slows each event down, so that a test can kill the process
//! in the middle of the topic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bookshelf_core::{DomainEvent, Envelope, FileViewStore, ProjectionRunner, UnknownEvents, View};
use bookshelf_kafka::{KafkaConfig, KafkaDeadLetters, KafkaLog};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CounterEvent {
    Counted { n: u64 },
}

impl DomainEvent for CounterEvent {}

/// How many events, their sum, and whether each stream came in order.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    count: u64,
    sum: u64,
    last_version: BTreeMap<String, u64>,
    out_of_order: u64,
}

/// Microseconds to spend on each event.
static PACE_MICROS: AtomicU64 = AtomicU64::new(0);

impl View for Tally {
    type Event = CounterEvent;
    fn apply(&mut self, event: Envelope<CounterEvent>) {
        let CounterEvent::Counted { n } = event.payload;
        self.count += 1;
        self.sum += n;
        let last = self.last_version.entry(event.stream_id.to_string()).or_default();
        if event.version.0 != *last + 1 {
            self.out_of_order += 1;
        }
        *last = event.version.0;
        let pace = PACE_MICROS.load(Ordering::Relaxed);
        if pace > 0 {
            std::thread::sleep(Duration::from_micros(pace));
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, state_file, rest @ ..] = args.as_slice() else {
        return Err("usage: kafka_projector BROKERS TOPIC STATE_FILE [PACE_MICROS]".into());
    };
    PACE_MICROS.store(
        rest.first().map(|p| p.parse()).transpose()?.unwrap_or(0),
        Ordering::Relaxed,
    );
    let config = KafkaConfig::new(brokers.as_str(), topic.as_str());
    let running = ProjectionRunner::<Tally, _>::new("tally", KafkaLog::new(config.clone()))
        .persist_to(FileViewStore::new(state_file))
        .dead_letters(KafkaDeadLetters::open(&config).await?)
        .unknown_events(UnknownEvents::DeadLetter)
        .batch_size(16)
        .save_every(40)
        .save_when_caught_up()
        .start();
    println!("projecting {topic}");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    running.stop().await?;
    println!("stopped");
    Ok(())
}
