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
//! has not reported its end, the reader seeks back (1, 2, 4, … records
//! before the wanted offset, never before the partition's start) until a
//! fetch starts at or before a batch boundary, and drops the records before
//! the wanted offset. On a broker that answers fetches as Kafka does, the
//! first record is the wanted one and nothing is read twice.
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

    /// Reads again from further back (twice as far as the last time).
    fn step_back(&mut self, consumer: &StreamConsumer<Quiet>, why: &str) -> Result<(), StoreError> {
        let back = (self.want - self.from).max(1) * 2;
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
}

/// How long a partition that has not started may stay silent before the
/// reader reads it from further back.
const PATIENCE: Duration = Duration::from_millis(250);

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
        Ok(Reader { consumer, starts, next })
    }

    /// The next record or end of partition. Waits for one; cancel-safe
    /// between records (a record is handed out once, when this returns).
    pub async fn next(&mut self) -> Result<Read<'_>, StoreError> {
        loop {
            let waiting = self.starts.values().any(Start::unproven);
            let received = if waiting {
                tokio::time::timeout(PATIENCE, self.consumer.recv()).await.ok()
            } else {
                Some(self.consumer.recv().await)
            };
            let Some(received) = received else {
                // Silence from partitions not yet started: perhaps a fetch
                // from inside the last batch, which returns nothing.
                for start in self.starts.values_mut().filter(|s| s.unproven()) {
                    start.step_back(&self.consumer, "no record yet")?;
                }
                continue;
            };
            match received {
                Ok(message) => {
                    let key = (message.topic().to_owned(), message.partition());
                    let offset = message.offset();
                    if let Some(start) = self.starts.get_mut(&key) {
                        if offset > start.want && start.unproven() {
                            start.step_back(&self.consumer, "a fetch skipped records")?;
                            continue;
                        }
                        start.whole = true;
                        if offset >= start.want {
                            self.starts.remove(&key);
                        }
                    }
                    let next = self.next.entry(key).or_insert(offset);
                    if offset < *next {
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
