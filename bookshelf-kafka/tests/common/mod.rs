//! What the Kafka tests share: the broker's address, fresh topic names, and a
//! simple event.

#![allow(dead_code)] // each test file uses its own part

use bookshelf_core::{EventId, Metadata, NewEvent};

/// The broker `scripts/test.sh` started; the tests fail loudly without one.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "these tests need a Kafka-protocol broker: run scripts/test.sh, which starts tansu, \
             or set KAFKA_BROKERS=host:port"
            )
        })
}

/// A topic name no earlier run used. Also turns on logs (`RUST_LOG`) once.
pub fn topic(name: &str) -> String {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bookshelf-test-{name}-{nanos}")
}

/// A `Counted { n }` event, with a correlation id and an `n` key-value.
pub fn counted(n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Counted".into(),
        schema_version: 1,
        metadata: Metadata::correlated(format!("req-{n}")).with("n", n.to_string()),
        payload: serde_json::value::RawValue::from_string(format!(r#"{{"n":{n}}}"#)).expect("valid JSON"),
    }
}
