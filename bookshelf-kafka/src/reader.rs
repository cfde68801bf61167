//! Reading partitions from any offset without skipping a record: the one
//! place where every Bookshelf reader of Kafka starts its reads.
//!
//! A Kafka fetch names an offset, and the broker answers with the record
//! batches from the one holding that offset; the client drops the records
//! before it. tansu 0.6.0 answers a fetch that starts inside a batch with
//! the batches *after* it, so a plain reader that starts inside a batch
//! (at a checkpoint, say) silently loses the rest of that batch; when that
//! batch is the partition's last, the fetch returns nothing at all.
//!
//! [`Reader`] therefore checks the first record of every partition it
//! starts: it must be at or before the offset asked for. When the first
//! record comes later, or nothing comes for a while although the partition
//! has not reported its end, the reader seeks back (2, 4, 8, … records
//! before the wanted offset after a record too late, 4, 16, 64, … after
//! silence; never before the partition's start) until a fetch starts at or
//! before a batch boundary, and drops the records before the wanted offset.
//! Each silence it waits for is twice the one before (250 ms, 500 ms, up to
//! 2 s): a seek discards the fetch in flight, so a broker slower to answer
//! than the reader's patience (a loaded one, or a new consumer's first
//! fetch) would otherwise be asked again and again, and the reader would
//! step back to the partition's start and read it whole, as the fault
//! suite saw a restarted instance do. On a broker that answers fetches as
//! Kafka does, the first record is the wanted one and nothing is read
//! twice.
//!
//! Whatever the broker does, each partition hands out its records in offset
//! order and each once: a record before the next offset due (read again
//! after a step back) is dropped, and an end-of-partition that may come
//! from the fetch before a step back is not reported. A broker that cannot
//! be reached for a while (restarted, or cut off) is waited for: the read
//! goes on from where it was once the broker answers again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bookshelf_core::StoreError;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;

pub(crate) fn backend(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(error))
}

pub(crate) fn backend_msg(message: String) -> StoreError {
    StoreError::Backend(message.into())
}

static READERS: AtomicU64 = AtomicU64::new(0);

/// The settings of a consumer that reads by assignment: no group
/// membership, no commits.
pub(crate) fn reader_client(config: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut client = config.client.clone();
    let n = READERS.fetch_add(1, Ordering::Relaxed);
    client
        .set("group.id", format!("bookshelf-reader-{}-{n}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    client
}

/// A plain consumer that reads by assignment (for metadata and watermarks).
pub(crate) fn plain_consumer(config: &KafkaConfig) -> Result<StreamConsumer, StoreError> {
    reader_client(config).create().map_err(backend)
}

/// The context of readers: librdkafka also reports end-of-partition events
/// as client errors, which would log every one of them at `error`; other
/// errors are logged as usual.
pub(crate) struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(%error, reason, "librdkafka");
        }
    }
}

impl ConsumerContext for Quiet {}

/// Whether a consumer error only says that the broker cannot be reached
/// for now (down, restarting, or cut off): the consumer keeps its position
/// and carries on once the broker answers again.
fn passing(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
        )
    )
}

/// A partition whose first record has not yet shown that the read started
/// at or before the offset wanted.
struct Start {
    topic: String,
    partition: i32,
    /// The first offset wanted.
    want: i64,
    /// Where the current fetch started (at or before `want`).
    from: i64,
    /// The partition's first offset: never read from before it.
    low: i64,
    /// Whether a record at or before `want` has shown the read is whole;
    /// records before `want` are then dropped until `want` is reached.
    whole: bool,
}

impl Start {
    /// Whether the read has not yet shown it starts at or before `want`,
    /// and could still start further back.
    fn unproven(&self) -> bool {
        !self.whole && self.from > self.low
    }

    /// Reads again from further back: `factor` times as far as the last
    /// time.
    fn step_back(&mut self, consumer: &StreamConsumer<Quiet>, factor: i64, why: &str) -> Result<(), StoreError> {
        let back = (self.want - self.from).max(1) * factor;
        self.from = (self.want - back).max(self.low);
        tracing::debug!(topic = %self.topic, partition = self.partition, want = self.want, from = self.from, why, "reading from further back");
        consumer
            .seek(
                &self.topic,
                self.partition,
                Offset::Offset(self.from),
                Duration::from_secs(10),
            )
            .map_err(backend)
    }
}

/// What [`Reader::next`] gives.
pub(crate) enum Read<'a> {
    /// The next record of a partition, in offset order, none skipped.
    Record(BorrowedMessage<'a>),
    /// The partition has no more records for now.
    End {
        /// The partition.
        partition: i32,
    },
}

/// A consumer over assigned partitions, each from a given offset, that reads
/// around fetches starting inside a record batch (see the module docs).
pub(crate) struct Reader {
    consumer: StreamConsumer<Quiet>,
    starts: HashMap<(String, i32), Start>,
    /// The next offset each partition hands out: a record before it (read
    /// again after a step back) is never handed out twice.
    next: HashMap<(String, i32), i64>,
    /// How long a partition that has not started may stay silent before
    /// the reader reads it from further back: [`PATIENCE`] at first, twice
    /// as long after each such silence, up to [`MOST_PATIENCE`].
    patience: Duration,
    /// When the silence of the partitions that have not started runs out:
    /// set when the reader first waits for them and after each step back.
    /// What other partitions hand out meanwhile does not move it.
    quiet_until: Option<tokio::time::Instant>,
    /// Records received again and dropped: those before a start, read
    /// because of a step back, and any handed out before.
    again: u64,
}

/// The first silence a partition that has not started may keep before the
/// reader reads it from further back.
const PATIENCE: Duration = Duration::from_millis(250);

/// The longest silence waited for before reading from further back.
const MOST_PATIENCE: Duration = Duration::from_secs(2);

impl Reader {
    /// Assigns `from` (topic, partition, first offset wanted); an offset
    /// before a partition's start reads from its start. `settings` are extra
    /// librdkafka properties for this consumer.
    pub async fn open(
        config: &KafkaConfig,
        from: &[(&str, i32, i64)],
        settings: &[(&str, &str)],
    ) -> Result<Self, StoreError> {
        let mut client = reader_client(config);
        client.set("enable.partition.eof", "true");
        for (key, value) in settings {
            client.set(*key, *value);
        }
        let consumer: StreamConsumer<Quiet> = client.create_with_context(Quiet).map_err(backend)?;
        let mut assignment = TopicPartitionList::new();
        let mut starts = HashMap::new();
        let mut next = HashMap::new();
        let watermarks = std::sync::Arc::new(plain_consumer(config)?);
        for &(topic, partition, want) in from {
            let low = low_watermark(&watermarks, config, topic, partition).await?;
            let want = want.max(low);
            next.insert((topic.to_owned(), partition), want);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(want))
                .map_err(backend)?;
            if want > low {
                starts.insert(
                    (topic.to_owned(), partition),
                    Start {
                        topic: topic.to_owned(),
                        partition,
                        want,
                        from: want,
                        low,
                        whole: false,
                    },
                );
            }
        }
        consumer.assign(&assignment).map_err(backend)?;
        Ok(Reader {
            consumer,
            starts,
            next,
            patience: PATIENCE,
            quiet_until: None,
            again: 0,
        })
    }

    /// The next record or end of partition. Waits for one; cancel-safe
    /// between records (a record is handed out once, when this returns).
    pub async fn next(&mut self) -> Result<Read<'_>, StoreError> {
        loop {
            let received = if self.starting() {
                let until = *self
                    .quiet_until
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.patience);
                tokio::time::timeout_at(until, self.consumer.recv()).await.ok()
            } else {
                self.quiet_until = None;
                Some(self.consumer.recv().await)
            };
            let Some(received) = received else {
                // Silence from partitions not yet started: perhaps a fetch
                // from inside the last batch, which returns nothing.
                for start in self.starts.values_mut().filter(|s| s.unproven()) {
                    start.step_back(&self.consumer, 4, "no record yet")?;
                }
                self.patience = (self.patience * 2).min(MOST_PATIENCE);
                self.quiet_until = Some(tokio::time::Instant::now() + self.patience);
                continue;
            };
            match received {
                Ok(message) => {
                    let key = (message.topic().to_owned(), message.partition());
                    let offset = message.offset();
                    if let Some(start) = self.starts.get_mut(&key) {
                        if offset > start.want && start.unproven() {
                            start.step_back(&self.consumer, 2, "a fetch skipped records")?;
                            continue;
                        }
                        start.whole = true;
                        if offset >= start.want {
                            self.starts.remove(&key);
                        }
                    }
                    let next = self.next.entry(key).or_insert(offset);
                    if offset < *next {
                        self.again += 1;
                        continue; // handed out before, or before the offset wanted
                    }
                    *next = offset + 1;
                    return Ok(Read::Record(message));
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    // After a step back, an end may come from the fetch
                    // before it: the partition's end is known only once the
                    // read from further back has shown a record.
                    if self
                        .starts
                        .values()
                        .any(|s| s.partition == partition && s.unproven() && s.from < s.want)
                    {
                        continue;
                    }
                    self.starts.retain(|_, s| s.partition != partition);
                    return Ok(Read::End { partition });
                }
                // librdkafka reconnects by itself and goes on fetching from
                // where it was: an outage is waited out, not an end.
                Err(error) if passing(&error) => {
                    tracing::debug!(%error, "the broker is away; the read waits for it");
                }
                Err(error) => return Err(backend(error)),
            }
        }
    }

    /// Whether a partition has yet to show that its read starts at or
    /// before the offset wanted: silence from it may be the reader's own
    /// search for where to start.
    fn starting(&self) -> bool {
        self.starts.values().any(Start::unproven)
    }

    /// Like [`next`](Self::next), but gives up after `timeout` with `None`.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Option<Read<'_>>, StoreError> {
        // Written out so that the borrow of `self` ends with the timeout.
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(read) => read.map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// The first offset still stored in a partition, asked through `consumer`.
async fn low_watermark(
    consumer: &std::sync::Arc<StreamConsumer>,
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
) -> Result<i64, StoreError> {
    let (consumer, topic, timeout) = (std::sync::Arc::clone(consumer), topic.to_owned(), config.timeout);
    let (low, _) = tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, partition, timeout))
        .await
        .map_err(backend)?
        .map_err(backend)?;
    Ok(low.max(0))
}

/// Reads the given partitions of `topic`, each from the offset given to its
/// end. Returns the end (next offset) of each partition.
///
/// The end is where the reader hears "end of partition" from fetches, not
/// the broker's answer to a watermark query: tansu 0.6 answers that with the
/// first offset of the newest batch plus one, short of the end when that
/// batch holds several records.
pub(crate) async fn read_to_end(
    config: &KafkaConfig,
    topic: &str,
    from: &[(i32, i64)],
) -> Result<Vec<(i32, i64)>, StoreError> {
    if from.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: Vec<(&str, i32, i64)> = from.iter().map(|&(p, o)| (topic, p, o)).collect();
    let mut reader = Reader::open(config, &wanted, &[]).await?;
    let mut ends: HashMap<i32, i64> = from.iter().copied().collect();
    let mut open: std::collections::HashSet<i32> = ends.keys().copied().collect();
    while !open.is_empty() {
        match reader.next_within(config.timeout).await? {
            Some(Read::Record(message)) => {
                ends.insert(message.partition(), message.offset() + 1);
            }
            Some(Read::End { partition, .. }) => {
                open.remove(&partition);
            }
            None => return Err(backend_msg(format!("reading topic {topic:?} to its end timed out"))),
        }
    }
    let mut ends: Vec<(i32, i64)> = ends.into_iter().collect();
    ends.sort_unstable();
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bookshelf_testkit::tansu::OwnBroker;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::sync::Arc;

    /// `records` records in partition 0 of `config`'s topic, made with one
    /// partition, each sent alone (a batch of its own).
    async fn one_by_one(config: &KafkaConfig, records: i64) {
        crate::store::admin_create_topics(config, &[&config.topic], 1)
            .await
            .unwrap();
        let producer: FutureProducer = config.client.clone().set("linger.ms", "0").create().unwrap();
        for n in 0..records {
            let body = n.to_string();
            let record = FutureRecord::<str, str>::to(&config.topic).payload(&body).partition(0);
            producer.send(record, Duration::from_secs(10)).await.unwrap();
        }
    }

    /// A broker that answers nothing for a while (paused here; loaded, or a
    /// new consumer's first fetch, in the fault suite) is waited for: the
    /// reader's silences grow, so it does not step back to the partition's
    /// start meanwhile and read it all again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_waits_for_a_slow_broker_rather_than_reading_the_partition_again() {
        let broker = Arc::new(OwnBroker::start_in_memory());
        let (records, want) = (1000, 900);
        let config = KafkaConfig::new(broker.address(), "slow");
        one_by_one(&config, records).await;
        let mut reader = Reader::open(&config, &[("slow", 0, want)], &[]).await.unwrap();
        broker.pause();
        let resumed = {
            let broker = Arc::clone(&broker);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                broker.resume();
            })
        };
        let mut offsets = Vec::new();
        while offsets.last() != Some(&(records - 1)) {
            match tokio::time::timeout(Duration::from_secs(30), reader.next()).await {
                Ok(Ok(Read::Record(message))) => offsets.push(message.offset()),
                Ok(Ok(Read::End { .. })) => {}
                Ok(Err(error)) => panic!("the read failed: {error}"),
                Err(_) => panic!("nothing within 30 s after {offsets:?}"),
            }
        }
        resumed.await.unwrap();
        assert_eq!(
            offsets,
            (want..records).collect::<Vec<_>>(),
            "every record from {want}, once"
        );
        // Asking again every 250 ms, it stepped back 2, 4, … 1024 records in
        // the 2.5 s: it read all 900 records before the one wanted again.
        assert!(
            reader.again <= 256,
            "{} records read again for a start at {want}",
            reader.again
        );
    }
}
