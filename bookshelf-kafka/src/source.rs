//! A Kafka topic of any number of partitions as an [`EventSource`]: what the
//! core's process runners and change feeds follow on Kafka.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bookshelf_core::{async_trait, Checkpoint, EventSource, Followed, Follower, Mark, RawRecord, Record, StoreError};
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::cloudevents::envelope_of;
use crate::config::KafkaConfig;
use crate::reader::{plain_consumer, Read, Reader};
use crate::rule::{locate, PartitionRule, Verdict};
use crate::store::{admin_create_topics, partition_count};

/// `topic/partition`: how partitions are named in checkpoints, progress and
/// [`crate::high_watermarks`].
pub(crate) fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The events of a topic, every partition, as the log's rule
/// ([`crate::rule`]) counts them: claims and events of a fenced writer are
/// reported and passed over ([`Record::Skip`]); records that break the
/// protocol or are not event envelopes come through as
/// [`Record::Unreadable`], which every runner dead-letters (see
/// [`KafkaDeadLetters`](crate::KafkaDeadLetters)). The token of each
/// partition's [`Mark`] is the epoch of its last valid claim.
///
/// Reads start through the crate's reader, so a checkpoint inside a record
/// batch is read from exactly (see the project README on tansu). Partitions
/// are named `topic/partition` in checkpoints and progress.
///
/// ```no_run
/// use bookshelf_core::process::{CommandBus, Dispatch, DispatchError, ProcessManager, ProcessRunner};
/// use bookshelf_kafka::{KafkaConfig, KafkaLog};
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] enum Ev { Ordered }
/// # impl bookshelf_core::DomainEvent for Ev {}
/// # #[derive(Default, Clone, serde::Serialize, serde::Deserialize)] struct Shipping;
/// # impl ProcessManager for Shipping { type Event = Ev; type Command = ();
/// #   fn react(&mut self, _: &bookshelf_core::Envelope<Ev>) -> Vec<Dispatch<()>> { Vec::new() } }
/// # struct Bus;
/// # #[bookshelf_core::async_trait] impl CommandBus<()> for Bus {
/// #   async fn dispatch(&self, _: &Dispatch<()>) -> Result<(), DispatchError> { Ok(()) } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let orders = KafkaLog::new(KafkaConfig::new("127.0.0.1:9092", "orders"));
/// let shipping = ProcessRunner::<Shipping, _, _>::new("shipping", orders, Bus).start();
/// println!("{:?}", shipping.progress()); // position and lag of orders/0, orders/1, ...
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct KafkaLog {
    config: KafkaConfig,
}

impl KafkaLog {
    /// The topic of `config`; created (with the configured number of
    /// partitions) when missing if `config` says
    /// [`create_topic`](KafkaConfig::create_topic).
    pub fn new(config: KafkaConfig) -> Self {
        KafkaLog { config }
    }
}

#[async_trait]
impl EventSource for KafkaLog {
    async fn follow(&self, from: &Checkpoint) -> Result<Box<dyn Follower>, StoreError> {
        let topic = self.config.topic.as_str();
        if self.config.create_topic {
            admin_create_topics(&self.config, &[topic], self.config.partitions).await?;
        }
        let partitions = partition_count(&self.config, topic).await?;
        let mut starts = Vec::new();
        let mut rules = BTreeMap::new();
        for partition in 0..partitions {
            let mark = from.get(&partition_key(topic, partition));
            starts.push((topic, partition, mark.next as i64));
            rules.insert(partition, PartitionRule::at_epoch(mark.token));
        }
        let reader = Reader::open(&self.config, &starts, &[]).await?;
        Ok(Box::new(KafkaFollower {
            reader,
            judge: Judge {
                config: self.config.clone(),
                partitions,
                names: (0..partitions).map(|p| Arc::from(partition_key(topic, p))).collect(),
                rules,
                ends: Ends::new(&self.config, &starts),
            },
        }))
    }
}

struct KafkaFollower {
    reader: Reader,
    judge: Judge,
}

/// What a follower knows besides its reader: the rule's state and the ends.
struct Judge {
    config: KafkaConfig,
    partitions: i32,
    names: Vec<Arc<str>>,
    rules: BTreeMap<i32, PartitionRule>,
    ends: Ends,
}

/// Each partition's end as last seen: from the records read, and from the
/// broker's watermarks, asked in the background at most once a second.
pub(crate) struct Ends {
    config: KafkaConfig,
    seen: Arc<Mutex<BTreeMap<(String, i32), u64>>>,
    asked: Option<Instant>,
}

impl Ends {
    /// The ends of `partitions` (topic, partition, first offset read).
    pub(crate) fn new(config: &KafkaConfig, partitions: &[(&str, i32, i64)]) -> Self {
        let seen = partitions
            .iter()
            .map(|&(topic, partition, from)| ((topic.to_owned(), partition), from.max(0) as u64))
            .collect();
        Ends {
            config: config.clone(),
            seen: Arc::new(Mutex::new(seen)),
            asked: None,
        }
    }

    /// Asks the broker for the watermarks in the background, at most once a
    /// second. (tansu answers with the first offset of a partition's newest
    /// batch plus one: short of the end by what that batch holds more.)
    pub(crate) fn refresh(&mut self) {
        if self.asked.is_some_and(|at| at.elapsed() < WATERMARKS_EVERY) {
            return;
        }
        self.asked = Some(Instant::now());
        let (config, seen) = (self.config.clone(), Arc::clone(&self.seen));
        let partitions: Vec<(String, i32)> = lock(&seen).keys().cloned().collect();
        tokio::task::spawn_blocking(move || {
            let Ok(consumer) = plain_consumer(&config) else {
                return;
            };
            for (topic, partition) in partitions {
                if let Ok((_, high)) = consumer.fetch_watermarks(&topic, partition, config.timeout) {
                    let mut seen = lock(&seen);
                    let end = seen.entry((topic, partition)).or_default();
                    *end = (*end).max(high.max(0) as u64);
                }
            }
        });
    }

    /// A record before `next` exists in the partition.
    pub(crate) fn saw(&self, topic: &str, partition: i32, next: u64) {
        let mut seen = lock(&self.seen);
        match seen.get_mut(&(topic.to_owned(), partition)) {
            Some(end) => *end = (*end).max(next),
            None => {
                seen.insert((topic.to_owned(), partition), next);
            }
        }
    }

    /// The ends, keyed `topic/partition`.
    pub(crate) fn get(&self) -> BTreeMap<String, u64> {
        lock(&self.seen)
            .iter()
            .map(|((topic, partition), &end)| (partition_key(topic, *partition), end))
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often a follower asks the broker for the partitions' ends.
const WATERMARKS_EVERY: Duration = Duration::from_secs(1);

impl Judge {
    /// Judges one record by the rule and turns it into what readers get.
    fn judge(&mut self, message: &BorrowedMessage<'_>) -> Followed {
        let partition = message.partition();
        let rule = self.rules.entry(partition).or_default();
        let verdict = rule.judge(message, self.partitions);
        let mark = Mark {
            next: message.offset() as u64 + 1,
            token: rule.epoch(),
        };
        let record = match verdict {
            Verdict::Event { .. } | Verdict::Foreign => match envelope_of(message) {
                Ok(event) => Record::Event(Arc::new(event)),
                Err(reason) => unreadable(message, format!("not an event envelope: {reason}")),
            },
            Verdict::Claimed(_) | Verdict::StaleClaim(_) => Record::Skip,
            Verdict::Stale { stream, epoch, current } => {
                tracing::warn!(record = %locate(message), %stream, epoch, current,
                    "event passed over: written under an epoch the partition had left");
                Record::Skip
            }
            Verdict::Broken(reason) => unreadable(message, format!("it breaks the log's protocol: {reason}")),
        };
        let name = self
            .names
            .get(partition as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(partition_key(&self.config.topic, partition)));
        Followed {
            partition: name,
            mark,
            record,
        }
    }

    /// Judges a record read and records how far its partition is known to go.
    fn take(&mut self, message: &BorrowedMessage<'_>) -> Followed {
        let followed = self.judge(message);
        self.ends.saw(message.topic(), message.partition(), followed.mark.next);
        followed
    }
}

/// A record that is not an event, as it was read, for the dead letters.
fn unreadable(message: &BorrowedMessage<'_>, reason: String) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    Record::Unreadable {
        raw: Box::new(RawRecord {
            location: locate(message),
            key: message.key().map(<[u8]>::to_vec),
            body: message.payload().map(<[u8]>::to_vec),
            headers,
        }),
        reason,
    }
}

#[async_trait]
impl Follower for KafkaFollower {
    async fn next_batch(&mut self, batch: &mut Vec<Followed>, max: usize) -> Result<(), StoreError> {
        self.judge.ends.refresh();
        let max = max.max(1);
        while batch.is_empty() {
            if let Read::Record(message) = self.reader.next().await? {
                batch.push(self.judge.take(&message));
            }
        }
        while batch.len() < max {
            match self.reader.next_within(Duration::ZERO).await? {
                Some(Read::Record(message)) => batch.push(self.judge.take(&message)),
                Some(Read::End { .. }) => {}
                None => break,
            }
        }
        Ok(())
    }

    fn ends(&self) -> BTreeMap<String, u64> {
        self.judge.ends.get()
    }
}
