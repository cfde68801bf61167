//! The event store on a Kafka topic, shared by the instances of a service.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bookshelf_core::{
    AppendOutcome, Envelope, EventId, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, RetryPolicy,
    StoreError, StreamId, Subscription, Version, IDEMPOTENCY_KEY,
};
use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{oneshot, watch, Semaphore};

use crate::barrier::Ends;
use crate::cloudevents::envelope_of;
use crate::config::KafkaConfig;
use crate::local::{Kept, LocalState, Mark};
use crate::ownership::rendezvous_owner;
use crate::partition::partition_for;
use crate::reader::{backend, backend_msg, plain_consumer, read_to_end, Read, Reader};
use crate::rule::{self, locate, Claim, PartitionRule, Verdict};

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
    /// The W3C `traceparent`, when there is one.
    pub const TRACEPARENT: &str = "bookshelf.traceparent";
    /// Prefix of the free metadata key-values.
    pub const META_PREFIX: &str = "bookshelf.meta.";
    /// The epoch of the owner that wrote the event (see [`crate::rule`]).
    pub const EPOCH: &str = crate::rule::EPOCH;
}

fn record_headers(event: &RecordedEvent, epoch: u64, topic: &str) -> OwnedHeaders {
    let mut fields: Vec<(String, String)> = vec![
        (headers::EVENT_ID.into(), event.event_id.to_string()),
        (headers::EVENT_TYPE.into(), event.event_type.to_string()),
        (headers::SCHEMA_VERSION.into(), event.schema_version.to_string()),
        (headers::STREAM_ID.into(), event.stream_id.to_string()),
        (headers::VERSION.into(), event.version.to_string()),
        (headers::EPOCH.into(), epoch.to_string()),
    ];
    if let Some(id) = &event.metadata.correlation_id {
        fields.push((headers::CORRELATION_ID.into(), id.clone()));
    }
    if let Some(id) = &event.metadata.causation_id {
        fields.push((headers::CAUSATION_ID.into(), id.clone()));
    }
    if let Some(trace) = &event.metadata.traceparent {
        fields.push((headers::TRACEPARENT.into(), trace.clone()));
        // The CloudEvents distributed-tracing extension, as Kafka carries it.
        fields.push((crate::cloudevents::TRACEPARENT.into(), trace.clone()));
    }
    for (key, value) in &event.metadata.extra {
        fields.push((format!("{}{key}", headers::META_PREFIX), value.clone()));
    }
    fields.extend(
        crate::cloudevents::headers_of(event, topic)
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value)),
    );
    fields.iter().fold(OwnedHeaders::new(), |all, (key, value)| {
        all.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}

fn header_text<'a, M: Message>(message: &'a M, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    let value = headers.iter().find(|h| h.key == name)?.value?;
    std::str::from_utf8(value).ok()
}

/// The instance a store runs in: its id, and where it takes requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The instance id, as discovery lists it.
    pub id: String,
    /// Where the instance takes requests, written into its claims so that
    /// other instances can forward to it (empty: it does not say).
    pub address: String,
}

/// Who owns a partition now, as this instance has read the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOwner {
    /// The partition.
    pub partition: i32,
    /// The last valid claim read, if any.
    pub claim: Option<Claim>,
    /// Whether this instance writes the partition now.
    pub mine: bool,
}

/// What this instance does with a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Reads it; does not write.
    Follower,
    /// Wrote a claim with this epoch and waits to read it back.
    Claiming { epoch: u64, since: Instant },
    /// Writes under this epoch.
    Owner { epoch: u64 },
    /// Lost it to another claim; claims again only after `until` (never
    /// when the store is the one writer of its topic).
    Lost { until: Option<Instant> },
}

struct Part {
    /// The next offset the follower has not read.
    next: i64,
    /// Whether the follower has read to the partition's end since it started.
    at_end: bool,
    /// Where the rule stands.
    rule: PartitionRule,
    role: Role,
    /// A send failed: whatever else is in flight may or may not land, so the
    /// owner claims again before it writes more, and that claim decides.
    doubt: bool,
    /// While this instance owns the partition: every offset from its claim
    /// up to (not including) this one holds a record it wrote under its
    /// epoch, as Kafka acknowledged them, or one the follower has judged.
    frontier: i64,
    /// Acknowledged offsets of its own records beyond the frontier.
    acked: std::collections::BTreeSet<i64>,
}

impl Part {
    /// Takes note of an acknowledged record of this instance's, written under
    /// `epoch`, and moves the frontier over every run of its own records.
    fn acknowledged(&mut self, epoch: u64, offset: i64) {
        if self.role != (Role::Owner { epoch }) || offset < self.frontier {
            return;
        }
        self.acked.insert(offset);
        while self.acked.remove(&self.frontier) {
            self.frontier += 1;
        }
    }

    /// Whether this instance's reads reflect every record before `end`:
    /// the follower has read them, or, on the partition's owner, they are
    /// its own acknowledged records (which its reads know of before the
    /// follower keeps them) after records the follower has judged.
    fn knows_up_to(&self, end: i64) -> bool {
        self.next >= end || (matches!(self.role, Role::Owner { .. }) && self.frontier >= end)
    }

    /// Whether a record of this instance's at `offset`, written under
    /// `epoch`, is part of the log already: the partition is still its own
    /// under that epoch, and nothing but its own records lies between its
    /// claim and that offset, so no other claim can come before it.
    fn confirms(&self, epoch: u64, offset: i64) -> bool {
        self.role == (Role::Owner { epoch }) && offset < self.frontier
    }
}

/// How an append's record fared, as the follower read it.
type Settled = Result<i64, StoreError>;

struct Pending {
    stream: StreamId,
    partition: i32,
    epoch: u64,
    reply: oneshot::Sender<Settled>,
}

impl Pending {
    /// Answers that the record is not in the log, and why.
    fn fenced(self, reason: String) {
        let error = StoreError::Fenced {
            stream: self.stream,
            reason,
        };
        let _ = self.reply.send(Err(error));
    }
}

/// How a store learns which instances share its topic.
enum Membership {
    /// It is the one writer of every partition.
    Alone,
    /// The partitions are shared out over these instances.
    Members(watch::Receiver<Vec<String>>),
}

/// Configures a [`KafkaStore`] shared by the instances of a service.
pub struct KafkaStoreBuilder {
    config: KafkaConfig,
    member: Member,
    membership: Membership,
    state: Option<PathBuf>,
    max_in_flight: usize,
    claim_backoff: Duration,
    one_owner: bool,
}

impl KafkaStoreBuilder {
    /// This instance's id and the address it takes requests on (written into
    /// its claims). The default id is `PROCESS-ID@HOST`-like and unique per
    /// process.
    pub fn member(mut self, id: impl Into<String>, address: impl Into<String>) -> Self {
        self.member = Member {
            id: id.into(),
            address: address.into(),
        };
        self
    }

    /// Shares the partitions out over the instance ids this receiver lists
    /// (see [`crate::members_from_discovery`]), by rendezvous hashing; without
    /// it, the store claims every partition, as the one writer of its topic.
    pub fn members(mut self, members: watch::Receiver<Vec<String>>) -> Self {
        self.membership = Membership::Members(members);
        self
    }

    /// Gives every partition to one member: the one that rendezvous hashing
    /// picks for partition 0 among the members listed. The others follow
    /// and take over, one of them, when it leaves: one writer at a time,
    /// handed over, for services whose work spans partitions (a process
    /// manager, say).
    pub fn one_owner(mut self) -> Self {
        self.one_owner = true;
        self
    }

    /// Keeps the local state (the events read, by stream, and where each
    /// partition stands) in this SQLite file, so that a restart reads only
    /// what was written since. Without it, a temporary file is used and
    /// removed when the store is dropped.
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state = Some(path.into());
        self
    }

    /// How many appends may wait for Kafka at once on one partition (default
    /// 1024); 1 gives the old one-at-a-time path, for comparison.
    pub fn max_in_flight(mut self, appends: usize) -> Self {
        self.max_in_flight = appends.max(1);
        self
    }

    /// How long an instance that lost a claim to another waits before it
    /// claims again, while discovery still names it the owner (default 0.5 s).
    pub fn claim_backoff(mut self, backoff: Duration) -> Self {
        self.claim_backoff = backoff;
        self
    }

    /// Opens the store: creates the topic if configured to, opens the local
    /// state, starts following every partition, and (as the one writer, or
    /// as discovery says) claims partitions. The one writer returns once it
    /// owns every partition.
    ///
    /// # Errors
    /// When the brokers cannot be reached, the topic is missing, the local
    /// state cannot be opened (it names the file), or (as the one writer)
    /// the partitions are not claimed within the configured timeout.
    pub async fn open(self) -> Result<KafkaStore, StoreError> {
        let config = self.config;
        if config.create_topic {
            admin_create_topics(&config, &[config.topic.as_str()], config.partitions).await?;
        }
        let partitions = partition_count(&config, &config.topic).await?;
        let (state_path, temp) = match self.state {
            Some(path) => (path, None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("bookshelf-kafka-")
                    .tempdir()
                    .map_err(|e| {
                        backend_msg(format!("cannot create a temporary directory for the local state: {e}"))
                    })?;
                (dir.path().join("state.sqlite"), Some(dir))
            }
        };
        let local = LocalState::open(&state_path, &config.topic, partitions)?;
        let saved = local.saved(partitions)?;
        bookshelf_core::telemetry::appended("kafka", 0);
        let mut producer_config = config.client.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.client.get("linger.ms").unwrap_or("1"));
        let producer: FutureProducer = producer_config.create().map_err(backend)?;
        let alone = matches!(self.membership, Membership::Alone);
        let parts = saved
            .iter()
            .map(|s| {
                Mutex::new(Part {
                    next: s.next_offset,
                    at_end: false,
                    rule: PartitionRule::resume(s.claim.clone()),
                    role: Role::Follower,
                    doubt: false,
                    frontier: 0,
                    acked: std::collections::BTreeSet::new(),
                })
            })
            .collect();
        let (changed, _) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            topic: config.topic.clone(),
            partitions,
            producer,
            member: self.member,
            alone,
            local,
            state_path,
            _temp: temp,
            parts,
            changed,
            pending: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            turns: (0..TURN_SLOTS).map(|_| tokio::sync::Mutex::new(())).collect(),
            in_flight: (0..partitions).map(|_| Semaphore::new(self.max_in_flight)).collect(),
            claim_backoff: self.claim_backoff,
            one_owner: self.one_owner,
            ends: Ends::new(plain_consumer(&config)?, &config.topic, partitions),
            config,
        });
        let from: Vec<(i32, i64)> = saved
            .iter()
            .enumerate()
            .map(|(p, s)| (p as i32, s.next_offset))
            .collect();
        tracing::info!(topic = %inner.topic, partitions, member = %inner.member.id, state = %inner.state_path.display(), ?from, "Kafka event store opening");
        // One follower per partition: each has its own connection, so one
        // partition's fetches do not wait behind another's.
        let mut tasks: Vec<_> = from
            .iter()
            .map(|&(partition, next)| tokio::spawn(follow(Arc::downgrade(&inner), partition, next)))
            .collect();
        let members = match self.membership {
            Membership::Alone => None,
            Membership::Members(members) => Some(members),
        };
        tasks.push(tokio::spawn(steer(Arc::downgrade(&inner), members)));
        tasks.push(tokio::spawn(probe(Arc::downgrade(&inner))));
        let store = KafkaStore {
            inner,
            _tasks: Arc::new(Tasks(tasks)),
        };
        if alone {
            store.wait_until_owner_of_all().await?;
        }
        Ok(store)
    }
}

/// Asks the broker where partition 0 ends every [`PROBE`](crate::barrier::PROBE),
/// so that [`KafkaStore::broker_silence`] knows whether it still answers.
async fn probe(inner: Weak<Inner>) {
    let mut ticks = tokio::time::interval(crate::barrier::PROBE);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // Unanswered, it shows in the silence; nothing else to do.
        let _ = inner.ends.since(0, Instant::now(), crate::barrier::PROBE * 2).await;
    }
}

/// Aborts the store's background tasks when the last handle goes.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Commands on streams hashed to the same slot take turns in the store.
const TURN_SLOTS: usize = 1024;

/// An event store on one Kafka topic, which several instances of a service
/// can share.
///
/// # How it keeps its guarantees
///
/// * **Per-stream order.** Every event of a stream is a record keyed by the
///   stream id, on the partition Kafka's default partitioner gives that key
///   (murmur2), so a stream is ordered and Java clients agree on where it is.
/// * **One writer per partition, fenced by the log.** Each partition has
///   one owner at a time: the one writer (opened with [`KafkaStore::open`])
///   owns them all; instances sharing a topic
///   ([`KafkaStore::builder`]`.members(…)`) share the partitions out by
///   rendezvous hashing over the instances discovery lists. An owner writes
///   a claim with a higher epoch before its events, and its events carry
///   that epoch; every reader applies the rule of [`crate::rule`], so the
///   records of an owner that lost its partition are not part of the log.
/// * **An append succeeds only once it is in the log.** The store follows
///   every partition of its topic with one long-lived consumer and applies
///   the rule. An append is answered when that reader has read its records
///   as events of the log, or has read the claim or the stale records that
///   prove they are not: a caller is never told "done" for an event that
///   readers pass over. Expected versions are checked by the owner against
///   what it has read, and commands on one stream take turns, so of
///   writers racing on a stream, exactly one wins; appends to different
///   streams are pipelined.
/// * **A failed send closes the epoch.** When Kafka reports a send as
///   failed, the record may still land later. The owner then claims its
///   partition again before writing more; whatever lands after that claim
///   is stale, and the appends in flight are answered by what the reader
///   finds before it.
/// * **Atomic appends: one event at a time.** An append of one event is one
///   record, written or not. An append of several is several records;
///   without transactions a failure in the middle can leave the first ones
///   in the log although the append reports an error.
/// * **Reads are local.** The events read are kept in a SQLite file (see
///   [`KafkaStoreBuilder::state_file`]), so loading a stream reads a file,
///   not Kafka, and memory does not grow with the log. A restart resumes
///   from the file and reads only what was written since. On its own
///   partitions an instance reads its own writes; on others, it reads what
///   its follower has reached (see [`KafkaStore::caught_up`]).
/// * **Positions are offsets.** An event's position is its offset in its
///   partition. A topic of one partition is one global log, and
///   [`subscribe`](EventStore::subscribe) and [`head`](EventStore::head)
///   work on it; on a topic of several partitions they return an error.
/// * **Metadata in headers.** The body is the event's JSON envelope; the
///   envelope's fields travel in headers too (see [`headers`]).
#[derive(Clone)]
pub struct KafkaStore {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

struct Inner {
    config: KafkaConfig,
    topic: String,
    partitions: i32,
    producer: FutureProducer,
    member: Member,
    alone: bool,
    local: LocalState,
    state_path: PathBuf,
    _temp: Option<tempfile::TempDir>,
    parts: Vec<Mutex<Part>>,
    /// Bumped whenever a partition's state changes.
    changed: watch::Sender<u64>,
    pending: Mutex<HashMap<EventId, Pending>>,
    /// Appends answered on their acknowledgement that the follower has not
    /// yet kept: the stream's version and its last event's offset. A stream
    /// stays here for the few milliseconds until the follower reads it.
    recent: Mutex<HashMap<String, (Version, i64)>>,
    turns: Vec<tokio::sync::Mutex<()>>,
    in_flight: Vec<Semaphore>,
    claim_backoff: Duration,
    /// Whether every partition goes to partition 0's owner.
    one_owner: bool,
    /// Where the partitions end, for read barriers.
    ends: Ends,
}

impl Inner {
    fn part(&self, partition: i32) -> MutexGuard<'_, Part> {
        // Each change sets fields from values computed before: a panic cannot tear it.
        self.parts[partition as usize].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<EventId, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recent(&self) -> MutexGuard<'_, HashMap<String, (Version, i64)>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream's version: what the follower kept, or a newer append
    /// answered since.
    fn version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        // Read under the lock: the follower keeps an event before it takes
        // the stream out of `recent`, so one of the two has it.
        let recent = self.recent();
        let kept = self.local.version(stream.as_str())?;
        Ok(recent.get(stream.as_str()).map_or(kept, |&(v, _)| v.max(kept)))
    }

    /// Waits until the follower has kept every answered append of `stream`
    /// from version `from` on, so that a read sees this instance's own
    /// writes. Returns `false` when there is nothing to read: `from` is past
    /// the last answered append.
    async fn kept(&self, stream: &StreamId, from: Version) -> bool {
        let Some((version, offset)) = self.recent().get(stream.as_str()).copied() else {
            return true;
        };
        if from > version {
            return false;
        }
        let partition = partition_for(stream.as_str(), self.partitions);
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        while self.part(partition).next <= offset {
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                break;
            }
        }
        true
    }

    /// Waits until `holds` says so of this store's state, looking again
    /// at each change.
    async fn until(&self, holds: impl Fn(&Inner) -> bool) {
        let mut changed = self.changed.subscribe();
        while !holds(self) {
            // The sender lives in `self`.
            let _ = changed.changed().await;
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn not_owner(&self, stream: &StreamId, partition: i32) -> StoreError {
        let owner = self.part(partition).rule.claim().map(|c| c.owner.clone());
        StoreError::NotOwner {
            stream: stream.clone(),
            partition: crate::source::partition_key(&self.topic, partition),
            owner,
        }
    }
}

impl std::fmt::Debug for KafkaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStore")
            .field("topic", &self.inner.topic)
            .field("partitions", &self.inner.partitions)
            .field("member", &self.inner.member.id)
            .finish()
    }
}

impl KafkaStore {
    /// Opens the store as the one writer of its topic: it claims every
    /// partition (fencing any writer before it) and returns once it owns
    /// them. See [`KafkaStore::builder`] for instances sharing a topic.
    ///
    /// # Errors
    /// As [`KafkaStoreBuilder::open`].
    pub async fn open(config: KafkaConfig) -> Result<Self, StoreError> {
        Self::builder(config).open().await
    }

    /// A store to configure: membership, local state file, pipelining.
    pub fn builder(config: KafkaConfig) -> KafkaStoreBuilder {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        KafkaStoreBuilder {
            config,
            member: Member {
                id: format!("{}@{host}-{}", std::process::id(), uuid_suffix()),
                address: String::new(),
            },
            membership: Membership::Alone,
            state: None,
            max_in_flight: 1024,
            claim_backoff: Duration::from_millis(500),
            one_owner: false,
        }
    }

    /// The number of partitions of the topic.
    pub fn partitions(&self) -> i32 {
        self.inner.partitions
    }

    /// The partition a stream's events are on.
    pub fn partition_of(&self, stream: &StreamId) -> i32 {
        partition_for(stream.as_str(), self.inner.partitions)
    }

    /// This instance, as it names itself in its claims.
    pub fn member(&self) -> &Member {
        &self.inner.member
    }

    /// Whether this instance writes `stream`'s partition now.
    pub fn owns(&self, stream: &StreamId) -> bool {
        matches!(self.inner.part(self.partition_of(stream)).role, Role::Owner { .. })
    }

    /// Every partition's owner as this instance has read the log.
    pub fn owners(&self) -> Vec<PartitionOwner> {
        (0..self.inner.partitions)
            .map(|partition| {
                let part = self.inner.part(partition);
                PartitionOwner {
                    partition,
                    claim: part.rule.claim().cloned(),
                    mine: matches!(part.role, Role::Owner { .. }),
                }
            })
            .collect()
    }

    /// The owner of `stream`'s partition as this instance has read the log:
    /// its last valid claim, which names the owner's id and address.
    pub fn owner_of(&self, stream: &StreamId) -> Option<Claim> {
        self.inner.part(self.partition_of(stream)).rule.claim().cloned()
    }

    /// Whether the follower has read every partition to its end at least
    /// once since the store opened, and the next offset of each.
    pub fn caught_up(&self) -> (bool, Vec<i64>) {
        let mut all = true;
        let next = (0..self.inner.partitions)
            .map(|p| {
                let part = self.inner.part(p);
                all &= part.at_end;
                part.next
            })
            .collect();
        (all, next)
    }

    /// Waits until this store has read `stream`'s partition as far as it
    /// reached when the call began (on the partition's owner, its own
    /// acknowledged appends count as read), for at most `within`: then its reads
    /// ([`load`](bookshelf_core::EventStore::read_stream), versions,
    /// [`owner_of`](Self::owner_of)) reflect every event and every claim
    /// written before the call, whatever this store had read before (its
    /// local state after a restart, the partition before another instance
    /// took it over). Concurrent barriers on a partition share one question
    /// to the broker.
    ///
    /// # Errors
    /// When the broker cannot tell where the partition ends, or the store
    /// has not read that far, within `within`: the read would not be known
    /// to be fresh.
    pub async fn read_barrier(&self, stream: &StreamId, within: Duration) -> Result<(), StoreError> {
        let began = Instant::now();
        let partition = self.partition_of(stream);
        let inner = &self.inner;
        let reached = async {
            let end = inner.ends.since(partition, began, within).await?;
            inner.until(|inner| inner.part(partition).knows_up_to(end)).await;
            Ok::<_, StoreError>(())
        };
        match tokio::time::timeout(within, reached).await {
            Ok(reached) => reached.map_err(|e| {
                // The cause's own words, not its "backend failed" prefix again.
                let cause = match &e {
                    StoreError::Backend(cause) => cause.to_string(),
                    other => other.to_string(),
                };
                backend_msg(format!(
                    "cannot tell where partition {}/{partition} ends: {cause}",
                    inner.topic
                ))
            }),
            Err(_) => Err(backend_msg(format!(
                "partition {}/{partition} was not read to its end within {within:?} (next offset read: {})",
                inner.topic,
                inner.part(partition).next
            ))),
        }
    }

    /// How long ago the broker last answered this store's questions (it
    /// asks every half second). A service that has not heard from its
    /// broker for a while cannot serve its partitions: it should stop
    /// passing its health check, so that the others take them over (see
    /// `bookshelf_consul::ConsulDiscovery::with_health`).
    pub fn broker_silence(&self) -> Duration {
        self.inner.ends.silence()
    }

    /// Whether this instance writes every partition now: with
    /// [`KafkaStoreBuilder::one_owner`], whether it is the one writer.
    pub fn owns_every_partition(&self) -> bool {
        (0..self.inner.partitions).all(|p| matches!(self.inner.part(p).role, Role::Owner { .. }))
    }

    /// Waits until [`owns_every_partition`](Self::owns_every_partition) is
    /// `owner`.
    pub async fn until_owner_of_all(&self, owner: bool) {
        self.inner.until(|_| self.owns_every_partition() == owner).await;
    }

    /// Waits until this instance owns every partition (the one writer).
    async fn wait_until_owner_of_all(&self) -> Result<(), StoreError> {
        let mut changed = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
        loop {
            let owned = (0..self.inner.partitions).all(|p| matches!(self.inner.part(p).role, Role::Owner { .. }));
            if owned {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return Err(backend_msg(format!(
                    "could not claim every partition of {:?} within {:?}",
                    self.inner.topic, self.inner.config.timeout
                )));
            }
        }
    }

    /// The epoch to write `partition` under: at once when this instance owns
    /// it; after a wait while its claim is on the way; an error otherwise.
    async fn epoch_for(&self, stream: &StreamId, partition: i32) -> Result<u64, StoreError> {
        let mut changed = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
        loop {
            let role = self.inner.part(partition).role;
            match role {
                Role::Owner { epoch } => return Ok(epoch),
                Role::Claiming { .. } => {}
                Role::Follower | Role::Lost { .. } => return Err(self.inner.not_owner(stream, partition)),
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return Err(self.inner.not_owner(stream, partition));
            }
        }
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

    fn single_partition(&self, what: &str) -> Result<(), StoreError> {
        if self.inner.partitions == 1 {
            Ok(())
        } else {
            Err(backend_msg(format!(
                "{what} needs a topic of one partition; {:?} has {}",
                self.inner.topic, self.inner.partitions
            )))
        }
    }
}

fn uuid_suffix() -> String {
    EventId::new().to_string().chars().take(8).collect()
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
    let consumer = plain_consumer(config)?;
    let (name, timeout) = (topic.to_owned(), config.timeout);
    let count = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&name), timeout)?;
        Ok::<_, KafkaError>(metadata.topics().first().map_or(0, |t| t.partitions().len() as i32))
    })
    .await
    .map_err(backend)?
    .map_err(backend)?;
    if count == 0 {
        return Err(backend_msg(format!("topic {topic:?} does not exist")));
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

/// The end of each of `partitions` of `topic`: read from just before the
/// watermark the broker reports to the end of the partition (see
/// [`read_to_end`]).
async fn partition_ends(config: &KafkaConfig, topic: &str, partitions: i32) -> Result<Vec<(i32, i64)>, StoreError> {
    let consumer = Arc::new(plain_consumer(config)?);
    let mut starts = Vec::new();
    for partition in 0..partitions {
        let (consumer, name, timeout) = (Arc::clone(&consumer), topic.to_owned(), config.timeout);
        let (_, high) = tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&name, partition, timeout))
            .await
            .map_err(backend)?
            .map_err(backend)?;
        starts.push((partition, (high - 1).max(0)));
    }
    read_to_end(config, topic, &starts).await
}

/// What a partition's follower learned from one batch, to publish once it
/// is saved.
#[derive(Default)]
struct Learned {
    kept: Vec<Kept>,
    accepted: Vec<(EventId, i64)>,
    fenced: Vec<(EventId, String)>,
    /// Valid claims read, with their offsets.
    claims: Vec<(i32, i64, Claim)>,
    /// Whether the partition's end was reached.
    ended: bool,
    /// The next offset after the last record read, if any was.
    next: Option<i64>,
    versions: HashMap<String, u64>,
}

/// How long a follower's fetch may wait for records. Kafka answers a fetch as
/// soon as a record arrives, so on Kafka this costs nothing; tansu 0.6 holds
/// every fetch for the whole wait, so it is the follower's latency there.
/// Appends rarely wait for the follower (see [`Part::confirms`]), and a
/// shorter wait had the followers' empty fetches take the broker's time
/// from the producers (on tansu, 1 ms gave a quarter of 50 ms's commands/s).
const FOLLOWER_FETCH_WAIT_MS: &str = "50";

/// Reads one partition of the topic from where the local state stopped,
/// applies the rule, keeps the events, and settles the appends in flight.
async fn follow(inner: Weak<Inner>, partition: i32, from: i64) {
    let retry = RetryPolicy::forever(Duration::from_millis(250), Duration::from_secs(5));
    let mut delays = retry.delays();
    let mut from = from;
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let result = follow_once(&strong, partition, from).await;
        let next = strong.part(partition).next;
        drop(strong);
        if next > from {
            delays = retry.delays(); // it read on before failing: start short again
        }
        match result {
            Ok(()) => return,
            Err(error) => {
                let pause = delays.next().unwrap_or(retry.max_backoff);
                tracing::error!(partition, %error, retry_in = ?pause, "the store's follower failed; reading again");
                tokio::time::sleep(pause).await;
            }
        }
        from = next;
    }
}

async fn follow_once(inner: &Arc<Inner>, partition: i32, from: i64) -> Result<(), StoreError> {
    // librdkafka prefetches up to this much per consumer: the follower's
    // memory while it catches up, whatever the log's size.
    let settings = [
        ("fetch.wait.max.ms", FOLLOWER_FETCH_WAIT_MS),
        ("queued.max.messages.kbytes", "8192"),
    ];
    let mut reader = Reader::open(&inner.config, &[(inner.topic.as_str(), partition, from)], &settings).await?;
    let mut rule = inner.part(partition).rule.clone();
    loop {
        let mut learned = Learned::default();
        let first = reader.next().await?;
        take(inner, &mut rule, &mut learned, first)?;
        for _ in 0..2000 {
            match reader.next_within(Duration::ZERO).await? {
                Some(read) => take(inner, &mut rule, &mut learned, read)?,
                None => break,
            }
        }
        publish(inner, partition, &rule, learned)?;
    }
}

fn take(inner: &Inner, rule: &mut PartitionRule, learned: &mut Learned, read: Read<'_>) -> Result<(), StoreError> {
    let message: BorrowedMessage<'_> = match read {
        Read::Record(message) => message,
        Read::End { .. } => {
            learned.ended = true;
            return Ok(());
        }
    };
    let partition = message.partition();
    let offset = message.offset();
    learned.next = Some(offset + 1);
    let event_id = || header_text(&message, headers::EVENT_ID).and_then(|id| id.parse::<EventId>().ok());
    match rule.judge(&message, inner.partitions) {
        Verdict::Event { stream } => {
            let event = match envelope_of(&message) {
                Ok(event) => event,
                Err(reason) => {
                    tracing::error!(record = %locate(&message), %reason, "record passed over: not an event");
                    return Ok(());
                }
            };
            let current = match learned.versions.get(&stream) {
                Some(&version) => version,
                None => inner.local.version_for_writer(&stream)?.0,
            };
            if event.stream_id.as_str() != stream || event.version.0 != current + 1 {
                tracing::error!(
                    record = %locate(&message),
                    %stream,
                    envelope_stream = %event.stream_id,
                    version = %event.version,
                    expected = current + 1,
                    "record passed over: out of its stream's version sequence"
                );
                if let Some(id) = event_id() {
                    learned
                        .fenced
                        .push((id, "it was out of its stream's version sequence".into()));
                }
                return Ok(());
            }
            learned.versions.insert(stream.clone(), event.version.0);
            learned.accepted.push((event.event_id, offset));
            let body = message
                .payload()
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default()
                .to_owned();
            learned.kept.push(Kept {
                key: event.metadata.extra.get(IDEMPOTENCY_KEY).cloned(),
                stream,
                version: event.version.0,
                partition,
                offset,
                body,
            });
        }
        Verdict::Claimed(claim) => {
            tracing::info!(record = %locate(&message), owner = %claim.owner, epoch = claim.epoch, "partition claimed");
            learned.claims.push((partition, offset, claim));
        }
        Verdict::StaleClaim(claim) => {
            tracing::info!(record = %locate(&message), owner = %claim.owner, epoch = claim.epoch, current = rule.epoch(), "stale claim passed over");
        }
        Verdict::Stale { stream, epoch, current } => {
            tracing::warn!(record = %locate(&message), %stream, epoch, current, "event passed over: written under an epoch the partition had left");
            if let Some(id) = event_id() {
                learned.fenced.push((
                    id,
                    format!("its owner's epoch {epoch} had been replaced by epoch {current}"),
                ));
            }
        }
        Verdict::Broken(reason) => {
            tracing::error!(record = %locate(&message), %reason, "record passed over: it breaks the protocol");
        }
        // Another producer's CloudEvent: in no aggregate's stream.
        Verdict::Foreign => {}
    }
    Ok(())
}

/// Saves a batch, then moves the partitions' state and settles the appends
/// it decided, in that order: an append is answered only once its event can
/// be read back here.
fn publish(inner: &Inner, partition: i32, rule: &PartitionRule, learned: Learned) -> Result<(), StoreError> {
    let marks: Vec<Mark> = learned
        .next
        .map(|next_offset| Mark {
            partition,
            next_offset,
            claim: rule.claim().cloned(),
        })
        .into_iter()
        .collect();
    inner.local.keep(&learned.kept, &marks, &learned.claims)?;
    let closed = {
        let mut part = inner.part(partition);
        if let Some(next) = learned.next {
            part.next = next;
        }
        part.at_end |= learned.ended;
        move_on(inner, partition, &mut part, rule)
    };
    // After the partitions' next offsets moved: an append that checks them
    // under this lock either sees them moved or has its entry removed here.
    if !learned.kept.is_empty() {
        let mut recent = inner.recent();
        for kept in &learned.kept {
            if recent
                .get(kept.stream.as_str())
                .is_some_and(|&(_, offset)| offset <= kept.offset)
            {
                recent.remove(kept.stream.as_str());
            }
        }
    }
    {
        let mut pending = inner.pending();
        for (id, offset) in learned.accepted {
            if let Some(p) = pending.remove(&id) {
                let _ = p.reply.send(Ok(offset));
            }
        }
        for (id, reason) in learned.fenced {
            if let Some(p) = pending.remove(&id) {
                p.fenced(reason);
            }
        }
        if let Some(epoch) = closed {
            let gone: Vec<EventId> = pending
                .iter()
                .filter(|(_, p)| p.partition == partition && p.epoch < epoch)
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                if let Some(p) = pending.remove(&id) {
                    p.fenced(format!(
                        "partition {partition} was claimed under epoch {epoch} before the record landed"
                    ));
                }
            }
        }
    }
    inner.bump();
    Ok(())
}

/// Moves a partition's state over what its follower has just read under
/// `rule`: the frontier of the owner's own records, and, when a claim
/// changed the epoch, the role. Returns the new epoch in that case: the
/// appends still waiting under an older one did not make it.
fn move_on(inner: &Inner, partition: i32, part: &mut Part, rule: &PartitionRule) -> Option<u64> {
    if part.rule.epoch() == rule.epoch() {
        // Still the same epoch: whatever the follower has read, it has
        // judged, so the frontier may move up to it.
        if part.next > part.frontier {
            part.frontier = part.next;
            let frontier = part.frontier;
            part.acked.retain(|&o| o >= frontier);
        }
        return None;
    }
    part.rule = rule.clone();
    let claim = rule.claim()?;
    let mine = claim.owner == inner.member.id;
    part.acked.clear();
    part.role = match part.role {
        Role::Claiming { epoch, .. } | Role::Owner { epoch } if mine && epoch == claim.epoch => {
            tracing::info!(partition, epoch, "this instance owns the partition");
            part.doubt = false;
            // The claim was the last record read: its own records follow.
            part.frontier = part.next;
            Role::Owner { epoch }
        }
        Role::Claiming { .. } | Role::Owner { .. } => {
            tracing::warn!(partition, owner = %claim.owner, epoch = claim.epoch, "partition claimed by another instance; this one stops writing it");
            Role::Lost {
                until: (!inner.alone).then(|| Instant::now() + inner.claim_backoff),
            }
        }
        other => other,
    };
    Some(claim.epoch)
}

/// Claims the partitions this instance should own, and steps down from
/// those it should not, as membership and the log change.
async fn steer(inner: Weak<Inner>, mut members: Option<watch::Receiver<Vec<String>>>) {
    let mut changed = match inner.upgrade() {
        Some(inner) => inner.changed.subscribe(),
        None => return,
    };
    loop {
        {
            let Some(inner) = inner.upgrade() else { return };
            let list = members.as_ref().map(|m| m.borrow().clone());
            for partition in 0..inner.partitions {
                let should = match &list {
                    None => true,
                    Some(list) => {
                        let chosen_by = if inner.one_owner { 0 } else { partition };
                        rendezvous_owner(list, chosen_by) == Some(inner.member.id.as_str())
                    }
                };
                if let Some(epoch) = decide(&inner, partition, should) {
                    send_claim(&inner, partition, epoch);
                }
            }
        }
        let membership = async {
            match members.as_mut() {
                Some(m) => {
                    if m.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = membership => {}
            _ = changed.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// The next step for one partition; `Some(epoch)` when a claim is to be sent.
fn decide(inner: &Inner, partition: i32, should: bool) -> Option<u64> {
    let mut part = inner.part(partition);
    let now = Instant::now();
    match part.role {
        Role::Follower if should && part.at_end => {
            let epoch = part.rule.epoch() + 1;
            part.role = Role::Claiming { epoch, since: now };
            Some(epoch)
        }
        Role::Claiming { since, .. } if now.duration_since(since) > inner.config.timeout => {
            tracing::warn!(partition, "a claim was not read back in time; trying again");
            part.role = Role::Follower;
            None
        }
        Role::Owner { .. } if !should => {
            tracing::info!(partition, "discovery names another owner; stepping down");
            part.role = Role::Follower;
            None
        }
        Role::Owner { epoch } if part.doubt => {
            tracing::warn!(partition, epoch, "a send failed; claiming again to close epoch {epoch}");
            let epoch = part.rule.epoch().max(epoch) + 1;
            part.role = Role::Claiming { epoch, since: now };
            part.doubt = false;
            Some(epoch)
        }
        Role::Lost { until: Some(until) } if now >= until => {
            part.role = Role::Follower;
            None
        }
        _ => None,
    }
}

fn send_claim(inner: &Arc<Inner>, partition: i32, epoch: u64) {
    let claim = Claim {
        epoch,
        owner: inner.member.id.clone(),
        address: inner.member.address.clone(),
    };
    let body = match serde_json::to_string(&claim) {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "cannot encode a claim");
            return;
        }
    };
    let epoch_text = epoch.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: rule::KIND,
            value: Some(rule::CLAIM.as_bytes()),
        })
        .insert(Header {
            key: rule::EPOCH,
            value: Some(epoch_text.as_bytes()),
        });
    let record = FutureRecord::to(&inner.topic)
        .key(rule::CLAIM_KEY)
        .payload(&body)
        .partition(partition)
        .headers(headers);
    tracing::info!(partition, epoch, member = %inner.member.id, "claiming partition");
    match inner.producer.send_result(record) {
        Ok(delivery) => {
            tokio::spawn(async move {
                if !matches!(delivery.await, Ok(Ok(_))) {
                    tracing::warn!(partition, epoch, "a claim was not delivered");
                }
            });
        }
        Err((error, _)) => tracing::warn!(partition, epoch, %error, "cannot send a claim"),
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
        // On a task of its own: a caller that goes away (an HTTP client that
        // hung up) must not cut an append short between sending its records
        // and learning where they landed, or the stream's next append would
        // be checked against a version that misses them.
        let (store, stream) = (self.clone(), stream.clone());
        tokio::spawn(async move { store.append_whole(&stream, expected, events).await })
            .await
            .map_err(|e| StoreError::Closed(format!("an append's task ended: {e}")))?
    }

    async fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        if !self.inner.kept(stream, from).await {
            return Ok(Vec::new());
        }
        self.inner.local.read_stream(stream, from)
    }

    async fn find_idempotency_key(&self, stream: &StreamId, key: &str) -> Result<Option<Version>, StoreError> {
        self.inner.local.find_key(stream.as_str(), key)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.inner.version(stream)
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.single_partition("head")?;
        let ends = partition_ends(&self.inner.config, &self.inner.topic, 1).await?;
        Ok(Position(ends.first().map_or(0, |&(_, end)| end.max(0) as u64)))
    }

    async fn subscribe(&self, from: Position) -> Result<KafkaSubscription, StoreError> {
        self.single_partition("subscribe")?;
        let rule = PartitionRule::resume(self.inner.local.claim_before(0, from.0 as i64)?);
        let reader = Reader::open(
            &self.inner.config,
            &[(self.inner.topic.as_str(), 0, from.0 as i64)],
            &[],
        )
        .await?;
        Ok(KafkaSubscription {
            reader,
            rule,
            next: from,
            passed_over: 0,
        })
    }
}

impl KafkaStore {
    /// An append, start to end: take the stream's turn, check the version,
    /// send, and wait until the records are known to be in the log.
    async fn append_whole(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let inner = &self.inner;
        let partition = self.partition_of(stream);
        let slot = murmur_slot(stream);
        let _turn = inner.turns[slot].lock().await;
        let epoch = self.epoch_for(stream, partition).await?;
        let actual = inner.version(stream)?;
        if !expected.admits(actual) {
            return Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        let _permit = inner.in_flight[partition as usize]
            .acquire()
            .await
            .map_err(|e| StoreError::Closed(e.to_string()))?;
        let recorded_at = Utc::now();
        let mut waits = Vec::with_capacity(events.len());
        let mut deliveries = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let envelope = Envelope {
                event_id: event.event_id,
                stream_id: stream.clone(),
                version: Version(actual.0 + i as u64 + 1),
                // The offset, unknown until the record is read back.
                position: Position(0),
                recorded_at,
                event_type: event.event_type,
                schema_version: event.schema_version,
                metadata: event.metadata,
                payload: event.payload,
            };
            let (reply, wait) = oneshot::channel();
            inner.pending().insert(
                envelope.event_id,
                Pending {
                    stream: stream.clone(),
                    partition,
                    epoch,
                    reply,
                },
            );
            waits.push((envelope.event_id, wait));
            let body = envelope.to_json();
            let record = FutureRecord::to(&inner.topic)
                .key(stream.as_str())
                .payload(&body)
                .partition(partition)
                .headers(record_headers(&envelope, epoch, &inner.topic));
            match inner.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => {
                    // Not handed to the producer: nothing of this one is sent.
                    inner.pending().remove(&envelope.event_id);
                    waits.pop();
                    if waits.is_empty() {
                        return Err(backend(error));
                    }
                    inner.part(partition).doubt = true;
                    inner.bump();
                    break;
                }
            }
        }
        let mut acked = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(delivered)) => {
                    let offset = delivered.offset;
                    inner.part(partition).acknowledged(epoch, offset);
                    acked.push(offset);
                }
                _ => {
                    // It may land all the same: close the epoch, and let the log decide.
                    inner.part(partition).doubt = true;
                }
            }
        }
        inner.bump();
        // Answered as soon as the records are known to be in the log: by the
        // frontier of this owner's own records, or by the follower.
        let mut changed = inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + inner.config.timeout * 2;
        let last = acked.iter().copied().max();
        let sent = waits.len();
        let mut offsets = Vec::with_capacity(sent);
        let mut failure = None;
        let mut waits = waits.into_iter().peekable();
        while let Some((id, wait)) = waits.peek_mut() {
            let confirmed = acked.len() == sent && last.is_some_and(|last| inner.part(partition).confirms(epoch, last));
            if confirmed {
                let mut pending = inner.pending();
                for (id, _) in waits.by_ref() {
                    pending.remove(&id);
                }
                offsets = acked.clone();
                break;
            }
            tokio::select! {
                settled = &mut *wait => {
                    match settled {
                        Ok(Ok(offset)) => offsets.push(offset),
                        Ok(Err(error)) => failure = failure.or(Some(error)),
                        Err(_) => failure = failure.or(Some(StoreError::Closed("the store's follower stopped".into()))),
                    }
                    waits.next();
                }
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    inner.pending().remove(id);
                    failure = failure.or(Some(backend_msg(format!(
                        "append to {stream}: not read back from partition {partition} within {:?}; \
                         the outcome is unknown",
                        inner.config.timeout * 2
                    ))));
                    waits.next();
                }
            }
        }
        offsets.sort_unstable();
        if failure.is_none() {
            if let Some(&last) = offsets.last() {
                let mut recent = inner.recent();
                let version = Version(actual.0 + offsets.len() as u64);
                if inner.part(partition).next <= last {
                    recent.insert(stream.as_str().to_owned(), (version, last));
                }
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        bookshelf_core::telemetry::appended("kafka", offsets.len());
        Ok(AppendOutcome {
            version: Version(actual.0 + offsets.len() as u64),
            first_position: Position(offsets[0] as u64),
            last_position: Position(offsets[offsets.len() - 1] as u64),
        })
    }
}

fn murmur_slot(stream: &StreamId) -> usize {
    (crate::partition::murmur2(stream.as_str().as_bytes()) as u32 as usize) % TURN_SLOTS
}

/// A subscription to a one-partition topic, from an offset, that applies
/// the log's rule (claims and stale records are not events).
pub struct KafkaSubscription {
    reader: Reader,
    rule: PartitionRule,
    next: Position,
    passed_over: u64,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription").field("next", &self.next).finish()
    }
}

impl KafkaSubscription {
    /// How many records were passed over because they are not events of
    /// the log: stale, broken, or not event envelopes (each is logged with
    /// its topic, partition and offset). Claims are not counted.
    pub fn passed_over(&self) -> u64 {
        self.passed_over
    }
}

fn take_event(
    rule: &mut PartitionRule,
    passed_over: &mut u64,
    message: &BorrowedMessage<'_>,
    batch: &mut Vec<Arc<RecordedEvent>>,
) {
    match rule.judge(message, 1) {
        Verdict::Event { .. } | Verdict::Foreign => match envelope_of(message) {
            Ok(event) => batch.push(Arc::new(event)),
            Err(reason) => {
                *passed_over += 1;
                tracing::error!(record = %locate(message), %reason, "record passed over");
            }
        },
        Verdict::Claimed(_) | Verdict::StaleClaim(_) => {}
        Verdict::Stale { stream, epoch, current } => {
            *passed_over += 1;
            tracing::warn!(record = %locate(message), %stream, epoch, current, "stale event passed over");
        }
        Verdict::Broken(reason) => {
            *passed_over += 1;
            tracing::error!(record = %locate(message), %reason, "record passed over");
        }
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next_batch(&mut self, batch: &mut Vec<Arc<RecordedEvent>>, max: usize) -> Result<(), StoreError> {
        batch.clear();
        while batch.is_empty() {
            if let Read::Record(message) = self.reader.next().await? {
                self.next = Position(message.offset() as u64 + 1);
                take_event(&mut self.rule, &mut self.passed_over, &message, batch);
            }
            // Then whatever has already arrived, without waiting.
            while batch.len() < max.max(1) {
                match self.reader.next_within(Duration::ZERO).await? {
                    Some(Read::Record(message)) => {
                        self.next = Position(message.offset() as u64 + 1);
                        take_event(&mut self.rule, &mut self.passed_over, &message, batch);
                    }
                    Some(Read::End { .. }) => {}
                    None => break,
                }
            }
        }
        Ok(())
    }

    fn position(&self) -> Position {
        self.next
    }
}

/// The store's topic, every partition, read from Kafka as [`crate::KafkaLog`]
/// reads it: what process runners and change feeds follow.
#[bookshelf_core::async_trait]
impl bookshelf_core::EventSource for KafkaStore {
    async fn follow(&self, from: &bookshelf_core::Checkpoint) -> Result<Box<dyn bookshelf_core::Follower>, StoreError> {
        crate::KafkaLog::new(self.inner.config.clone()).follow(from).await
    }
}
