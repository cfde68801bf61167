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

/// A header of a record as text (empty when missing).
pub fn header<M: rdkafka::Message>(message: &M, name: &str) -> String {
    use rdkafka::message::Headers;
    message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == name))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The first `count` records of `topic`'s dead-letter topic, each as its key
/// and its `bookshelf.dead_letter.*` headers (reason, source, projection).
pub async fn dead_letters(topic: &str, count: usize) -> Vec<(String, String, String, String)> {
    use bookshelf_kafka::dead_letter_headers;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let dead: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "bookshelf-test-dead")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a plain consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(&format!("{topic}.dead-letters"), 0, rdkafka::Offset::Beginning)
        .expect("the dead-letter partition");
    dead.assign(&assignment).expect("assigned");
    let mut letters = Vec::new();
    while letters.len() < count {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), dead.recv())
            .await
            .unwrap_or_else(|_| panic!("{count} dead letters within 30 s; got {}", letters.len()))
            .expect("a dead letter");
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        letters.push((
            key,
            header(&message, dead_letter_headers::REASON),
            header(&message, dead_letter_headers::SOURCE),
            header(&message, dead_letter_headers::PROJECTION),
        ));
    }
    letters
}

/// A view `V` of `config`'s topic as these tests run one: the core's
/// projection runner over a [`KafkaLog`](bookshelf_kafka::KafkaLog), dead
/// letters (unknown event types too) in `<topic>.dead-letters`, saved
/// whenever it has caught up.
pub async fn projection<V: bookshelf_core::View>(
    name: &str,
    config: &bookshelf_kafka::KafkaConfig,
) -> bookshelf_core::ProjectionRunner<V, bookshelf_kafka::KafkaLog> {
    let dead_letters = bookshelf_kafka::KafkaDeadLetters::open(config)
        .await
        .expect("the dead-letter topic");
    bookshelf_core::ProjectionRunner::<V, _>::new(name, bookshelf_kafka::KafkaLog::new(config.clone()))
        .dead_letters(dead_letters)
        .unknown_events(bookshelf_core::UnknownEvents::DeadLetter)
        .save_when_caught_up()
}

/// Runs `projection` until it has taken every record of `topic` there is
/// now, then hands its view to `check` and stops it.
pub async fn project_to_end<V: bookshelf_core::View>(
    projection: bookshelf_core::ProjectionRunner<V, bookshelf_kafka::KafkaLog>,
    config: &bookshelf_kafka::KafkaConfig,
    topic: &str,
    check: impl FnOnce(&V),
) {
    let running = projection.start();
    let ends = bookshelf_kafka::high_watermarks(config, &[topic])
        .await
        .expect("the topic's ends");
    let reached = tokio::time::timeout(std::time::Duration::from_secs(30), running.wait_for(&ends)).await;
    assert!(
        reached.is_ok_and(|r| r.is_ok()),
        "the projection reaches the end of {topic} within 30 s"
    );
    running.handle().read(check);
    running.stop().await.expect("the projection stops and saves");
}

/// `records` `Counted` events over 30 streams (versions in order, on each
/// stream's partition, no epoch), written by a plain producer that batches
/// (`linger.ms` 50): hundreds of records per batch. Returns their sum.
pub async fn fill_in_batches(topic: &str, records: u64) -> u64 {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "50")
        .set("batch.num.messages", "1000")
        .create()
        .unwrap();
    let admin: rdkafka::admin::AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let new = rdkafka::admin::NewTopic::new(topic, 3, rdkafka::admin::TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&new], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    let mut deliveries = Vec::new();
    let mut sum = 0;
    for n in 0..records {
        let stream = format!("counter-{}", n % 30);
        let body = format!(
            r#"{{"event_id":"{}","stream_id":"{stream}","version":{},"position":0,"recorded_at":"2026-11-23T00:00:00Z","event_type":"Counted","schema_version":1,"payload":{{"n":{n}}}}}"#,
            bookshelf_core::EventId::new(),
            n / 30 + 1
        );
        sum += n;
        let record = rdkafka::producer::FutureRecord::to(topic)
            .key(&stream)
            .payload(&body)
            .partition(bookshelf_kafka::partition_for(&stream, 3));
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
    sum
}

/// The event `counted` and `fill_in_batches` write.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum CounterEvent {
    Counted { n: u64 },
}
impl bookshelf_core::DomainEvent for CounterEvent {}

/// A fold that shows what a reader took: how many events, their sum, and
/// each stream's versions in the order taken.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub count: u64,
    pub sum: u64,
    pub seen: std::collections::BTreeMap<String, Vec<u64>>,
}

impl Tally {
    pub fn take(&mut self, event: &bookshelf_core::Envelope<CounterEvent>) {
        let CounterEvent::Counted { n } = event.payload;
        self.count += 1;
        self.sum += n;
        self.seen
            .entry(event.stream_id.to_string())
            .or_default()
            .push(event.version.0);
    }

    /// Panics unless this is one fold of `records` events summing to `sum`:
    /// each stream's versions once each, in order.
    pub fn assert_one_fold(&self, records: u64, sum: u64, what: &str) {
        assert_eq!((self.count, self.sum), (records, sum), "{what}");
        for (stream, versions) in &self.seen {
            let in_order: Vec<u64> = (1..=versions.len() as u64).collect();
            assert_eq!(versions, &in_order, "{what}: stream {stream} once each, in order");
        }
    }
}

/// As a process manager, the tally only folds: it sends nothing.
impl bookshelf_core::process::ProcessManager for Tally {
    type Event = CounterEvent;
    type Command = ();

    fn react(&mut self, event: &bookshelf_core::Envelope<CounterEvent>) -> Vec<bookshelf_core::process::Dispatch<()>> {
        self.take(event);
        Vec::new()
    }
}

/// A command bus for processes that send nothing.
pub struct Nowhere;

#[bookshelf_core::async_trait]
impl bookshelf_core::process::CommandBus<()> for Nowhere {
    async fn dispatch(
        &self,
        _: &bookshelf_core::process::Dispatch<()>,
    ) -> Result<(), bookshelf_core::process::DispatchError> {
        Ok(())
    }
}
