//! The event store on a Kafka topic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bookshelf_core::{
    AppendOutcome, Envelope, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StoreError, StreamId,
    Subscription, Version,
};
use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::partition::partition_for;

fn backend(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(error))
}

fn backend_msg(message: String) -> StoreError {
    StoreError::Backend(message.into())
}

/// The header names under which an event's envelope fields travel, beside
/// the JSON body, so that tools can route and filter without parsing it.
pub mod headers {
    /// The event id.
    pub const EVENT_ID: &str = "bookshelf.event_id";
    /// The event type name.
    pub const EVENT_TYPE: &str = "bookshelf.event_type";
    /// The payload's schema version.
    pub const SCHEMA_VERSION: &str = "bookshelf.schema_version";
    /// The stream id (also the record key).
    pub const STREAM_ID: &str = "bookshelf.stream_id";
    /// The event's version in its stream.
    pub const VERSION: &str = "bookshelf.version";
    /// The correlation id, when there is one.
    pub const CORRELATION_ID: &str = "bookshelf.correlation_id";
    /// The causation id, when there is one.
    pub const CAUSATION_ID: &str = "bookshelf.causation_id";
    /// Prefix of the free metadata key-values.
    pub const META_PREFIX: &str = "bookshelf.meta.";
}

fn record_headers(event: &RecordedEvent) -> OwnedHeaders {
    let mut fields: Vec<(String, String)> = vec![
        (headers::EVENT_ID.into(), event.event_id.to_string()),
        (headers::EVENT_TYPE.into(), event.event_type.clone()),
        (headers::SCHEMA_VERSION.into(), event.schema_version.to_string()),
        (headers::STREAM_ID.into(), event.stream_id.to_string()),
        (headers::VERSION.into(), event.version.to_string()),
    ];
    if let Some(id) = &event.metadata.correlation_id {
        fields.push((headers::CORRELATION_ID.into(), id.clone()));
    }
    if let Some(id) = &event.metadata.causation_id {
        fields.push((headers::CAUSATION_ID.into(), id.clone()));
    }
    for (key, value) in &event.metadata.extra {
        fields.push((format!("{}{key}", headers::META_PREFIX), value.clone()));
    }
    fields.iter().fold(OwnedHeaders::new(), |all, (key, value)| {
        all.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}

fn header_version<M: Message>(message: &M) -> Option<u64> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == headers::VERSION)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// Decodes a record of the events topic; its position is its offset.
fn decode<M: Message>(message: &M) -> Result<RecordedEvent, String> {
    let where_ = || format!("{}/{}@{}", message.topic(), message.partition(), message.offset());
    let body = message
        .payload()
        .ok_or_else(|| format!("record {} has no body", where_()))?;
    let json = std::str::from_utf8(body).map_err(|e| format!("record {} is not UTF-8: {e}", where_()))?;
    let mut event =
        RecordedEvent::from_json(json).map_err(|e| format!("record {} is not an envelope: {e}", where_()))?;
    event.position = Position(message.offset() as u64);
    Ok(event)
}

static READERS: AtomicU64 = AtomicU64::new(0);

/// The settings of a consumer that reads by assignment: no group
/// membership, no commits.
fn reader_client(config: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut client = config.client.clone();
    let n = READERS.fetch_add(1, Ordering::Relaxed);
    client
        .set("group.id", format!("bookshelf-reader-{}-{n}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    client
}

/// A consumer that reads by assignment: no group membership, no commits.
pub(crate) fn reader(config: &KafkaConfig) -> Result<StreamConsumer, StoreError> {
    reader_client(config).create().map_err(backend)
}

/// An event store on one Kafka topic.
///
/// # How it keeps its guarantees
///
/// * **Per-stream order.** Every event of a stream is a record keyed by the
///   stream id, on the partition Kafka's default partitioner gives that key
///   (murmur2), so a stream is ordered and Java clients agree on where it is.
/// * **Expected versions: one writer per topic.** The store is the single
///   writer of its topic. On open it reads the topic once and keeps, per
///   stream, the offsets of its events; appends to a partition go one at a
///   time, check the stream's version against that index, and update it once
///   Kafka acknowledges the records (`acks=all`, idempotent producer). Two
///   processes writing the same topic are **not** detected: Kafka's
///   transactions could fence a second writer, but the broker we test on
///   (tansu) has none, so run one writing process per topic and let other
///   services read. After a failed append the partition is read again from
///   where the index stopped before the next append goes out, so a record
///   that landed although its acknowledgement was lost is counted rather
///   than followed by a second event of the same version.
/// * **Atomic appends: one event at a time.** An append of one event is one
///   record, written or not. An append of several is several records, sent
///   together; without transactions a failure in the middle can leave the
///   first ones written. The index then holds what Kafka holds.
/// * **Positions are offsets.** An event's position is its offset in its
///   partition. A topic of one partition is one global log, and
///   [`subscribe`](EventStore::subscribe) and [`head`](EventStore::head)
///   work on it; on a topic of several partitions they return an error (a
///   projection over several partitions keeps an offset per partition).
/// * **Metadata in headers.** The body is the event's JSON envelope; the
///   envelope's fields travel in headers too (see [`headers`]).
#[derive(Clone)]
pub struct KafkaStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer,
    partitions: i32,
    writers: Vec<tokio::sync::Mutex<()>>,
    /// Per partition: the next offset the index has not seen.
    ends: Vec<AtomicI64>,
    /// Per partition: an append failed, so Kafka may hold records the index
    /// lacks (an acknowledgement lost on the way); re-read before appending.
    dirty: Vec<AtomicBool>,
    index: Mutex<HashMap<StreamId, Vec<i64>>>,
}

impl std::fmt::Debug for KafkaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStore")
            .field("topic", &self.inner.config.topic)
            .field("partitions", &self.inner.partitions)
            .finish()
    }
}

impl KafkaStore {
    /// Connects, creates the topic if configured to, and reads the topic once
    /// to learn each stream's version.
    ///
    /// # Errors
    /// When the brokers cannot be reached, the topic is missing, or a record
    /// cannot be read.
    pub async fn open(config: KafkaConfig) -> Result<Self, StoreError> {
        if config.create_topic {
            admin_create_topics(&config, &[config.topic.as_str()], config.partitions).await?;
        }
        let mut producer_config = config.client.clone();
        producer_config.set("enable.idempotence", "true").set("acks", "all");
        let producer: FutureProducer = producer_config.create().map_err(backend)?;
        let partitions = partition_count(&config, &config.topic).await?;
        let from: Vec<(i32, i64)> = (0..partitions).map(|p| (p, 0)).collect();
        let (records, reached) = read_tail(&config, &from).await?;
        let mut index = HashMap::new();
        extend_index(&mut index, records);
        let ends = reached.into_iter().map(|(_, end)| AtomicI64::new(end)).collect();
        tracing::info!(topic = %config.topic, partitions, streams = index.len(), "Kafka event store open");
        Ok(KafkaStore {
            inner: Arc::new(Inner {
                writers: (0..partitions).map(|_| tokio::sync::Mutex::new(())).collect(),
                ends,
                dirty: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
                config,
                producer,
                partitions,
                index: Mutex::new(index),
            }),
        })
    }

    /// The number of partitions of the topic.
    pub fn partitions(&self) -> i32 {
        self.inner.partitions
    }

    /// The partition a stream's events are on.
    pub fn partition_of(&self, stream: &StreamId) -> i32 {
        partition_for(stream.as_str(), self.inner.partitions)
    }

    /// Waits until every record sent has been acknowledged (or `timeout`
    /// passes); for a graceful shutdown.
    ///
    /// # Errors
    /// When the flush times out.
    pub async fn flush(&self, timeout: Duration) -> Result<(), StoreError> {
        let producer = self.inner.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(backend)?
            .map_err(backend)
    }

    fn index(&self) -> MutexGuard<'_, HashMap<StreamId, Vec<i64>>> {
        // Updates replace or extend one entry: a panic cannot leave it torn.
        self.inner.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads a partition from where the index stopped, after a failed
    /// append left it unsure of what Kafka holds. The caller holds the
    /// partition's writer lock.
    async fn resync(&self, partition: i32) -> Result<(), StoreError> {
        let slot = partition as usize;
        let from = self.inner.ends[slot].load(Ordering::Acquire);
        let (records, reached) = read_tail(&self.inner.config, &[(partition, from)]).await?;
        tracing::info!(
            partition,
            from,
            records = records.len(),
            "re-read a partition after a failed append"
        );
        extend_index(&mut self.index(), records);
        for (_, end) in reached {
            self.inner.ends[slot].fetch_max(end, Ordering::AcqRel);
        }
        self.inner.dirty[slot].store(false, Ordering::Release);
        Ok(())
    }

    fn single_partition(&self, what: &str) -> Result<(), StoreError> {
        if self.inner.partitions == 1 {
            Ok(())
        } else {
            Err(backend_msg(format!(
                "{what} needs a topic of one partition; {:?} has {}",
                self.inner.config.topic, self.inner.partitions
            )))
        }
    }
}

/// Creates `topics` with `partitions` each; existing topics are kept.
pub(crate) async fn admin_create_topics(
    config: &KafkaConfig,
    topics: &[&str],
    partitions: i32,
) -> Result<(), StoreError> {
    let admin: AdminClient<_> = config.client.create().map_err(backend)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(config.timeout));
    let results = admin.create_topics(&new, &options).await.map_err(backend)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(backend_msg(format!("creating topic {topic:?} failed: {code}"))),
        }
    }
    Ok(())
}

/// How many partitions `topic` has; an error when it does not exist.
pub(crate) async fn partition_count(config: &KafkaConfig, topic: &str) -> Result<i32, StoreError> {
    let consumer = reader(config)?;
    let (topic, timeout) = (topic.to_owned(), config.timeout);
    let count = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        Ok::<_, KafkaError>(metadata.topics().first().map_or(0, |t| t.partitions().len() as i32))
    })
    .await
    .map_err(backend)?
    .map_err(backend)?;
    if count == 0 {
        return Err(backend_msg(format!("topic {:?} does not exist", config.topic)));
    }
    Ok(count)
}

/// The end (the next offset to be written) of every partition of `topics`,
/// keyed `topic/partition`: what a projection has to reach to be caught up.
///
/// # Errors
/// When Kafka cannot be reached or a topic does not exist.
pub async fn high_watermarks(
    config: &KafkaConfig,
    topics: &[&str],
) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
    let mut ends = std::collections::BTreeMap::new();
    for topic in topics {
        let partitions = partition_count(config, topic).await?;
        for (partition, end) in partition_ends(config, topic, partitions).await? {
            ends.insert(format!("{topic}/{partition}"), end.max(0) as u64);
        }
    }
    Ok(ends)
}

/// A record of the events topic as the index sees it.
struct Indexed {
    stream: StreamId,
    offset: i64,
    version: Option<u64>,
}

/// The context of readers that ask for end-of-partition events: librdkafka
/// also reports those as client errors, which would log every one of them at
/// `error`; other errors are logged as usual.
struct EndOfPartitionExpected;

impl rdkafka::ClientContext for EndOfPartitionExpected {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(%error, reason, "librdkafka");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndOfPartitionExpected {}

/// A reader that reports reaching the end of each partition.
fn eof_reader(config: &KafkaConfig) -> Result<StreamConsumer<EndOfPartitionExpected>, StoreError> {
    reader_client(config)
        .set("enable.partition.eof", "true")
        .create_with_context(EndOfPartitionExpected)
        .map_err(backend)
}

/// The offsets to read from, per partition: `from`, or the partition's start
/// if that is later, as the broker reports its watermarks.
async fn clamp_to_low(
    config: &KafkaConfig,
    topic: &str,
    from: &[(i32, i64)],
) -> Result<Vec<(i32, i64, i64)>, StoreError> {
    let consumer = Arc::new(reader(config)?);
    let mut out = Vec::new();
    for &(partition, next) in from {
        let (consumer, name, timeout) = (Arc::clone(&consumer), topic.to_owned(), config.timeout);
        let (low, high) = tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&name, partition, timeout))
            .await
            .map_err(backend)?
            .map_err(backend)?;
        out.push((partition, next.max(low), high));
    }
    Ok(out)
}

/// Reads the given partitions of `topic`, each from the offset given to the
/// partition's end, and calls `each` on every record. Returns the end (next
/// offset) of each partition.
///
/// The end is where the consumer hears "end of partition" from fetches, not
/// the broker's answer to a watermark query: tansu 0.6 answers that with the
/// first offset of the newest batch plus one, short of the end when that
/// batch holds several records.
async fn read_to_end(
    config: &KafkaConfig,
    topic: &str,
    from: &[(i32, i64)],
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<Vec<(i32, i64)>, StoreError> {
    let consumer = eof_reader(config)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for &(partition, start) in from {
        ends.insert(partition, start);
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(backend)?;
    }
    if from.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment).map_err(backend)?;
    let mut open: std::collections::HashSet<i32> = ends.keys().copied().collect();
    while !open.is_empty() {
        let next = tokio::time::timeout(config.timeout, consumer.recv())
            .await
            .map_err(|_| backend_msg(format!("reading topic {topic:?} to its end timed out")))?;
        match next {
            Ok(message) => {
                ends.insert(message.partition(), message.offset() + 1);
                each(&message);
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                open.remove(&partition);
            }
            Err(error) => return Err(backend(error)),
        }
    }
    let mut ends: Vec<(i32, i64)> = ends.into_iter().collect();
    ends.sort_unstable();
    Ok(ends)
}

/// Reads the given partitions, each from the offset given (or its start, if
/// later) to its end. Returns the records in partition order, and the end
/// (next offset) reached in each partition.
async fn read_tail(config: &KafkaConfig, from: &[(i32, i64)]) -> Result<(Vec<Indexed>, Vec<(i32, i64)>), StoreError> {
    let starts: Vec<(i32, i64)> = clamp_to_low(config, &config.topic, from)
        .await?
        .into_iter()
        .map(|(partition, start, _)| (partition, start))
        .collect();
    let mut records = Vec::new();
    let ends = read_to_end(config, &config.topic, &starts, |message| {
        match message.key().and_then(|k| std::str::from_utf8(k).ok()) {
            Some(key) => records.push(Indexed {
                stream: StreamId::new(key),
                offset: message.offset(),
                version: header_version(message),
            }),
            None => tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                "record without a UTF-8 stream key; not part of any stream"
            ),
        }
    })
    .await?;
    Ok((records, ends))
}

/// The end of each of `partitions` of `topic`: the watermark the broker
/// reports, corrected by reading from just before it to the end of the
/// partition (see [`read_to_end`]).
async fn partition_ends(config: &KafkaConfig, topic: &str, partitions: i32) -> Result<Vec<(i32, i64)>, StoreError> {
    let reported: Vec<(i32, i64)> = (0..partitions).map(|p| (p, 0)).collect();
    let starts: Vec<(i32, i64)> = clamp_to_low(config, topic, &reported)
        .await?
        .into_iter()
        .map(|(partition, low, high)| (partition, (high - 1).max(low)))
        .collect();
    read_to_end(config, topic, &starts, |_| {}).await
}

/// Adds records to the index, each only if it is its stream's next version.
fn extend_index(index: &mut HashMap<StreamId, Vec<i64>>, records: Vec<Indexed>) {
    for record in records {
        let offsets = index.entry(record.stream.clone()).or_default();
        if offsets.last().is_some_and(|&last| record.offset <= last) {
            continue; // already indexed
        }
        match record.version {
            Some(version) if version == offsets.len() as u64 + 1 => offsets.push(record.offset),
            found => tracing::warn!(
                offset = record.offset,
                stream = %record.stream,
                ?found,
                expected = offsets.len() + 1,
                "record out of its stream's version sequence; not counted"
            ),
        }
    }
}

#[async_trait]
impl EventStore for KafkaStore {
    type Subscription = KafkaSubscription;

    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend(stream.clone()));
        }
        let partition = self.partition_of(stream);
        let slot = partition as usize;
        let _writer = self.inner.writers[slot].lock().await;
        if self.inner.dirty[slot].load(Ordering::Acquire) {
            self.resync(partition).await?;
        }
        let actual = Version(self.index().get(stream).map_or(0, |o| o.len() as u64));
        if !expected.admits(actual) {
            return Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        let recorded_at = Utc::now();
        let mut deliveries = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let envelope = Envelope {
                event_id: event.event_id,
                stream_id: stream.clone(),
                version: Version(actual.0 + i as u64 + 1),
                // The offset, unknown until Kafka acknowledges; readers take
                // the record's offset instead.
                position: Position(0),
                recorded_at,
                event_type: event.event_type,
                schema_version: event.schema_version,
                metadata: event.metadata,
                payload: event.payload,
            };
            let body = envelope.to_json();
            let record = FutureRecord::to(&self.inner.config.topic)
                .key(stream.as_str())
                .payload(&body)
                .partition(partition)
                .headers(record_headers(&envelope));
            let delivery = self.inner.producer.send_result(record).map_err(|(e, _)| backend(e))?;
            deliveries.push(delivery);
        }
        let mut offsets = Vec::with_capacity(deliveries.len());
        let mut failure = None;
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(delivered)) => offsets.push(delivered.offset),
                Ok(Err((error, _))) => failure = failure.or(Some(backend(error))),
                Err(canceled) => failure = failure.or(Some(backend(canceled))),
            }
        }
        // What Kafka acknowledged is in the log: the index follows the log.
        if let Some(&last) = offsets.last() {
            self.index().entry(stream.clone()).or_default().extend(&offsets);
            self.inner.ends[slot].fetch_max(last + 1, Ordering::AcqRel);
        }
        if let Some(error) = failure {
            // Some of what failed may have been written all the same.
            self.inner.dirty[slot].store(true, Ordering::Release);
            return Err(error);
        }
        Ok(AppendOutcome {
            version: Version(actual.0 + offsets.len() as u64),
            first_position: Position(offsets[0] as u64),
            last_position: Position(offsets[offsets.len() - 1] as u64),
        })
    }

    async fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let wanted: Vec<i64> = {
            let index = self.index();
            let offsets = index.get(stream).map(Vec::as_slice).unwrap_or_default();
            offsets
                .get(from.0.saturating_sub(1) as usize..)
                .unwrap_or_default()
                .to_vec()
        };
        let Some(&first) = wanted.first() else {
            return Ok(Vec::new());
        };
        let config = &self.inner.config;
        let consumer = reader(config)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&config.topic, self.partition_of(stream), Offset::Offset(first))
            .map_err(backend)?;
        consumer.assign(&assignment).map_err(backend)?;
        let mut events = Vec::with_capacity(wanted.len());
        let mut next = wanted.iter().peekable();
        while let Some(&&offset) = next.peek() {
            let message = tokio::time::timeout(config.timeout, consumer.recv())
                .await
                .map_err(|_| backend_msg(format!("reading stream {stream} timed out")))?
                .map_err(backend)?;
            if message.offset() < offset {
                continue;
            }
            if message.offset() > offset {
                return Err(backend_msg(format!(
                    "event at offset {offset} of stream {stream} is gone from the topic (retention?)"
                )));
            }
            events.push(Arc::new(decode(&message).map_err(backend_msg)?));
            next.next();
        }
        Ok(events)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        Ok(Version(self.index().get(stream).map_or(0, |o| o.len() as u64)))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.single_partition("head")?;
        let ends = partition_ends(&self.inner.config, &self.inner.config.topic, 1).await?;
        Ok(Position(ends.first().map_or(0, |&(_, end)| end.max(0) as u64)))
    }

    async fn subscribe(&self, from: Position) -> Result<KafkaSubscription, StoreError> {
        self.single_partition("subscribe")?;
        let consumer = reader(&self.inner.config)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.inner.config.topic, 0, Offset::Offset(from.0 as i64))
            .map_err(backend)?;
        consumer.assign(&assignment).map_err(backend)?;
        Ok(KafkaSubscription {
            consumer,
            next: from,
            undecodable: 0,
        })
    }
}

/// A subscription to a one-partition topic, from an offset.
pub struct KafkaSubscription {
    consumer: StreamConsumer,
    next: Position,
    undecodable: u64,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription").field("next", &self.next).finish()
    }
}

impl KafkaSubscription {
    /// How many records were passed over because they are not event
    /// envelopes (each is logged at `error` with its topic, partition and
    /// offset).
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }
}

fn take(
    next: &mut Position,
    undecodable: &mut u64,
    message: &rdkafka::message::BorrowedMessage<'_>,
    batch: &mut Vec<Arc<RecordedEvent>>,
) {
    *next = Position(message.offset() as u64 + 1);
    match decode(message) {
        Ok(event) => batch.push(Arc::new(event)),
        Err(reason) => {
            *undecodable += 1;
            tracing::error!(%reason, "record passed over: not an event envelope");
        }
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next_batch(&mut self, batch: &mut Vec<Arc<RecordedEvent>>, max: usize) -> Result<(), StoreError> {
        batch.clear();
        while batch.is_empty() {
            let message = self.consumer.recv().await.map_err(backend)?;
            take(&mut self.next, &mut self.undecodable, &message, batch);
            // Then whatever has already arrived, without waiting.
            while batch.len() < max.max(1) {
                match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                    Ok(Ok(message)) => take(&mut self.next, &mut self.undecodable, &message, batch),
                    Ok(Err(error)) => return Err(backend(error)),
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    fn position(&self) -> Position {
        self.next
    }
}
