//! How to reach Kafka and which topic holds the events.

use std::time::Duration;

use rdkafka::ClientConfig;

/// Configuration of a [`crate::KafkaStore`].
///
/// Any librdkafka property passes through [`set`](Self::set) untouched;
/// the store sets only what its guarantees need (`enable.idempotence=true`,
/// `acks=all` on the producer; no auto-commit on consumers), and
/// `linger.ms=0` unless you set it, since each append awaits its
/// acknowledgement.
///
/// ```
/// use bookshelf_kafka::KafkaConfig;
/// let config = KafkaConfig::new("127.0.0.1:9092", "books")
///     .partitions(3)
///     .create_topic(true)
///     .set("client.id", "books-writer")
///     .set("linger.ms", "5");
/// assert_eq!(config.topic(), "books");
/// ```
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub(crate) client: ClientConfig,
    pub(crate) topic: String,
    pub(crate) partitions: i32,
    pub(crate) create_topic: bool,
    pub(crate) timeout: Duration,
}

impl KafkaConfig {
    /// Events in `topic` on the brokers `bootstrap_servers`
    /// (`host:port[,host:port…]`); one partition, topic not created.
    pub fn new(bootstrap_servers: impl Into<String>, topic: impl Into<String>) -> Self {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", bootstrap_servers.into());
        KafkaConfig {
            client,
            topic: topic.into(),
            partitions: 1,
            create_topic: false,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets a librdkafka property for every client the store creates.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client.set(key.into(), value.into());
        self
    }

    /// How many partitions the topic gets when the store creates it.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Whether to create the topic on open (an existing topic is kept).
    pub fn create_topic(mut self, create: bool) -> Self {
        self.create_topic = create;
        self
    }

    /// How long to wait for the brokers on open and for each delivery.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The events topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}
