//! Dead letters in a Kafka topic: what the core's runners set aside, when
//! they read a topic, published where operators already look.

use bookshelf_core::{async_trait, DeadLetter, DeadLetters, Poison, StoreError};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::reader::backend;
use crate::store::admin_create_topics;

/// Header names added to a record set aside in the dead-letter topic.
pub mod dead_letter_headers {
    /// Why the record was set aside.
    pub const REASON: &str = "bookshelf.dead_letter.reason";
    /// Where it came from: `topic/partition@offset`.
    pub const SOURCE: &str = "bookshelf.dead_letter.source";
    /// The runner that could not apply it.
    pub const PROJECTION: &str = "bookshelf.dead_letter.projection";
}

/// A [`DeadLetters`] sink that publishes each letter to a topic (one
/// partition, idempotent producer, acknowledged by all replicas): a record
/// that was not an event as it was (key, body and headers), an event that
/// did not decode as its envelope's JSON keyed by its stream, each with
/// the reason, its source and the runner's name in the
/// [`dead_letter_headers`]. A runner moves its checkpoint past a letter
/// only once the topic has acknowledged it.
///
/// ```no_run
/// use bookshelf_core::ProjectionRunner;
/// use bookshelf_kafka::{KafkaConfig, KafkaDeadLetters, KafkaLog};
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] enum Ev { Read }
/// # impl bookshelf_core::DomainEvent for Ev {}
/// # #[derive(Default)] struct Reads(u64);
/// # impl bookshelf_core::View for Reads { type Event = Ev; fn apply(&mut self, _: bookshelf_core::Envelope<Ev>) { self.0 += 1 } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = KafkaConfig::new("127.0.0.1:9092", "books");
/// let reads = ProjectionRunner::<Reads, _>::new("reads", KafkaLog::new(config.clone()))
///     .dead_letters(KafkaDeadLetters::open(&config).await?) // to books.dead-letters
///     .start();
/// # Ok(()) }
/// ```
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
    timeout: std::time::Duration,
}

impl KafkaDeadLetters {
    /// Letters to `<topic>.dead-letters`, for `config`'s topic; the topic is
    /// created when missing if `config` says
    /// [`create_topic`](KafkaConfig::create_topic).
    ///
    /// # Errors
    /// When the producer cannot be made or the topic created.
    pub async fn open(config: &KafkaConfig) -> Result<Self, StoreError> {
        Self::open_topic(config, &format!("{}.dead-letters", config.topic)).await
    }

    /// Letters to `topic`, on `config`'s brokers.
    ///
    /// # Errors
    /// When the producer cannot be made or the topic created.
    pub async fn open_topic(config: &KafkaConfig, topic: &str) -> Result<Self, StoreError> {
        if config.create_topic {
            admin_create_topics(config, &[topic], 1).await?;
        }
        let producer = config
            .client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(backend)?;
        Ok(KafkaDeadLetters {
            producer,
            topic: topic.to_owned(),
            timeout: config.timeout,
        })
    }

    /// The topic letters go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

#[async_trait]
impl DeadLetters for KafkaDeadLetters {
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError> {
        let mut headers = OwnedHeaders::new();
        let (key, body): (Option<Vec<u8>>, Option<Vec<u8>>) = match &letter.record {
            Poison::Raw(raw) => {
                for (key, value) in &raw.headers {
                    headers = headers.insert(Header {
                        key: key.as_str(),
                        value: Some(value.as_slice()),
                    });
                }
                (raw.key.clone(), raw.body.clone())
            }
            Poison::Event(event) => (
                Some(event.stream_id.as_str().as_bytes().to_vec()),
                Some(event.to_json().into_bytes()),
            ),
        };
        for (key, value) in [
            (dead_letter_headers::REASON, letter.reason.as_str()),
            (dead_letter_headers::SOURCE, letter.location.as_str()),
            (dead_letter_headers::PROJECTION, letter.projection.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = &key {
            record = record.key(key.as_slice());
        }
        if let Some(body) = &body {
            record = record.payload(body.as_slice());
        }
        self.producer
            .send(record, self.timeout)
            .await
            .map_err(|(error, _)| backend(error))?;
        Ok(())
    }
}
