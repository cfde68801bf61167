//! The command runtime: load an aggregate, handle a command, append the
//! events with the version it was loaded at.

use std::sync::Arc;

use crate::aggregate::Aggregate;
use crate::codec::{self, DecodeError, EncodeError, EventCodec};
use crate::envelope::{Metadata, NewEvent, Position, StreamId, Version};
use crate::retry::RetryPolicy;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{EventStore, ExpectedVersion, StoreError};
use crate::EventId;

/// Why a command was not carried out. Nothing was appended in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// The stream moved on since it was loaded (or was not at the version the
    /// caller expected), and retries, if any, were used up.
    #[error("version conflict on {stream}: expected {expected}, found version {actual}")]
    Conflict {
        /// The aggregate's stream.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The version found.
        actual: Version,
    },
    /// A stored event of the aggregate could not be decoded.
    #[error("event {version} of {stream} could not be decoded: {source}")]
    Decode {
        /// The aggregate's stream.
        stream: StreamId,
        /// The event's version.
        version: Version,
        /// What was wrong.
        #[source]
        source: DecodeError,
    },
    /// A new event could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl<E: std::error::Error + 'static> From<StoreError> for CommandError<E> {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict {
                stream,
                expected,
                actual,
            } => CommandError::Conflict {
                stream,
                expected,
                actual,
            },
            other => CommandError::Store(other),
        }
    }
}

/// What a command decided on a state.
enum Decided<E, X> {
    /// Events to append.
    Events(Vec<E>),
    /// Nothing to do.
    Nothing,
    /// Refused.
    Rejected(X),
    /// The state is not at the version the caller expects.
    Mismatch(Version),
}

/// What became of an append of decided events.
enum Appended<A: Aggregate> {
    /// Stored, or failed for a reason other than the stream's version.
    Done(Result<Committed<A::Event>, CommandError<A::Error>>),
    /// The stream was not at the state's version: the state, and the conflict.
    Stale(Loaded<A>, CommandError<A::Error>),
}

/// An aggregate as loaded from its stream.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded into it ([`Version::INITIAL`] for
    /// a new aggregate).
    pub version: Version,
}

/// What a carried-out command recorded.
#[derive(Debug, Clone)]
pub struct Committed<E> {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The stream's version after the command (unchanged when it produced no
    /// event).
    pub version: Version,
    /// The new events, in order.
    pub events: Vec<E>,
    /// The global position of the last new event, if any.
    pub position: Option<Position>,
    /// Whether the command was not carried out because an earlier one with
    /// the same idempotency key was (see [`Repository::execute_once`]).
    pub duplicate: bool,
}

/// The key of [`Metadata::extra`] under which
/// [`Repository::execute_once`] records a command's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency_key";

type EncodeState<A> = fn(&A) -> Result<serde_json::Value, serde_json::Error>;
type DecodeState<A> = fn(serde_json::Value) -> Result<A, serde_json::Error>;

struct Snapshots<A> {
    store: Arc<dyn SnapshotStore>,
    every: u64,
    encode: EncodeState<A>,
    decode: DecodeState<A>,
}

/// Loads aggregates of type `A` from a store and carries out their commands.
///
/// Commands on one aggregate take turns within a repository: two requests
/// handled at once by the same process never race each other into a version
/// conflict. Conflicts come only from other writers (other processes, other
/// repositories on the same store), and [`RetryPolicy`] decides what to do
/// with those.
///
/// ```
/// # use bookshelf_core::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)] struct Counter { value: u64 }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] enum CounterEvent { Added { by: u64 } }
/// # impl DomainEvent for CounterEvent {}
/// # #[async_trait::async_trait]
/// # impl Aggregate for Counter {
/// #     const CATEGORY: &'static str = "counter";
/// #     type Command = u64; type Event = CounterEvent; type Error = std::convert::Infallible; type Services = ();
/// #     async fn handle(&self, by: &u64, _: &()) -> Result<Vec<CounterEvent>, Self::Error> { Ok(vec![CounterEvent::Added { by: *by }]) }
/// #     fn apply(&mut self, CounterEvent::Added { by }: &CounterEvent) { self.value += by; }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let counters = Repository::<Counter, _>::new(store, ())
///     .with_retry(RetryPolicy::attempts(3))
///     .with_snapshots(InMemorySnapshots::new(), 100);
///
/// let committed = counters.execute("c1", &5, Metadata::default()).await?;
/// assert_eq!(committed.version, Version(1));
/// assert_eq!(counters.load("c1").await?.state.value, 5);
/// # Ok(()) }
/// ```
pub struct Repository<A: Aggregate, S> {
    store: S,
    services: Arc<A::Services>,
    codec: EventCodec<A::Event>,
    retry: RetryPolicy,
    snapshots: Option<Snapshots<A>>,
    /// Commands on streams hashed to the same slot take turns.
    turns: Arc<[tokio::sync::Mutex<()>]>,
    cache: Option<StateCache<A>>,
}

/// Recently used aggregate states by stream, so that loading one reads only
/// the events after the cached version.
struct StateCache<A> {
    entries: std::sync::Mutex<CacheEntries<A>>,
    capacity: usize,
    clone: fn(&A) -> A,
}

struct CacheEntries<A> {
    /// By stream: the state (`None` while a command has it), its version,
    /// and when it was last used.
    map: std::collections::HashMap<StreamId, CacheEntry<A>, foldhash::fast::RandomState>,
    tick: u64,
}

/// A stream's entry; a command takes the state out and leaves the entry, so
/// that putting it back finds its slot and keeps its key.
type CacheEntry<A> = (Option<A>, Version, u64);

impl<A> StateCache<A> {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheEntries<A>> {
        // Every change is one insert, update or retain: a panic cannot leave it half-done.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, stream: &StreamId) -> Option<Loaded<A>> {
        let mut entries = self.lock();
        entries.tick += 1;
        let tick = entries.tick;
        let (state, version, used) = entries.map.get_mut(stream)?;
        *used = tick;
        Some(Loaded {
            state: (self.clone)(state.as_ref()?),
            version: *version,
        })
    }

    /// Takes the state out, for a command to change: the command puts back
    /// what it ends with. (Commands on one stream take turns; a command that
    /// fails or is dropped leaves the entry empty, and the next load reads
    /// the store.)
    fn take(&self, stream: &StreamId) -> Option<Loaded<A>> {
        let mut entries = self.lock();
        let (state, version, _) = entries.map.get_mut(stream)?;
        Some(Loaded {
            state: state.take()?,
            version: *version,
        })
    }

    /// Keeps `state` at `version`, unless a newer one is kept already; past
    /// the capacity, the least recently used eighth goes.
    fn put(&self, stream: &StreamId, state: A, version: Version) {
        let mut entries = self.lock();
        entries.tick += 1;
        let tick = entries.tick;
        match entries.map.get_mut(stream) {
            Some(entry) if entry.0.is_some() && entry.1 > version => entry.2 = tick,
            Some(entry) => *entry = (Some(state), version, tick),
            None => {
                entries.map.insert(stream.clone(), (Some(state), version, tick));
            }
        }
        if entries.map.len() > self.capacity {
            let evict = ((self.capacity / 8).max(1) + entries.map.len() - self.capacity).min(entries.map.len() - 1);
            let mut ticks: Vec<u64> = entries.map.values().map(|entry| entry.2).collect();
            let (_, &mut cutoff, _) = ticks.select_nth_unstable(evict);
            entries.map.retain(|_, entry| entry.2 >= cutoff);
        }
    }
}

/// How many slots commands take turns in: commands on different aggregates
/// wait for each other only when their streams share a slot.
const TURN_SLOTS: usize = 256;

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository over `store`, giving `services` to the aggregate's handler.
    pub fn new(store: S, services: A::Services) -> Self {
        crate::telemetry::commands_known::<A>();
        Repository {
            store,
            services: Arc::new(services),
            codec: EventCodec::new(),
            retry: RetryPolicy::NONE,
            snapshots: None,
            turns: (0..TURN_SLOTS).map(|_| tokio::sync::Mutex::new(())).collect(),
            cache: None,
        }
    }

    /// Retries commands that lose a race with another writer (see
    /// [`RetryPolicy`]).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Takes a snapshot of an aggregate each time its stream passes a
    /// multiple of `every` events, and loads from the newest snapshot.
    ///
    /// A snapshot that no longer decodes (the state's type changed) is
    /// ignored and the stream is read from the start; failing to save one is
    /// logged and does not fail the command.
    pub fn with_snapshots(mut self, store: impl SnapshotStore, every: u64) -> Self
    where
        A: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.snapshots = Some(Snapshots {
            store: Arc::new(store),
            every: every.max(1),
            encode: |state| serde_json::to_value(state),
            decode: serde_json::from_value,
        });
        self
    }

    /// Keeps the states of up to `capacity` recently used aggregates in
    /// memory, so that a load reads only the events after the kept version
    /// (none, usually) instead of the whole stream. Events written by others
    /// are still read: a kept state is a starting point, never an answer.
    ///
    /// A command decides on a kept state without reading first: its events
    /// are appended at the kept version, which succeeds only if nobody
    /// wrote since, so nothing is stored on a stale state and the common
    /// case costs one append. When the append meets another writer's
    /// events, or the command is refused, changes nothing, or misses its
    /// expected version, the stream is read and the command decided again
    /// before it is answered.
    pub fn with_cache(mut self, capacity: usize) -> Self
    where
        A: Clone,
    {
        self.cache = Some(StateCache {
            entries: std::sync::Mutex::new(CacheEntries {
                map: std::collections::HashMap::default(),
                tick: 0,
            }),
            capacity: capacity.max(1),
            clone: A::clone,
        });
        self
    }

    /// The store this repository writes to.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The services handed to the aggregate.
    pub fn services(&self) -> &A::Services {
        &self.services
    }

    /// The stream of the aggregate with this id.
    pub fn stream_of(&self, id: &str) -> StreamId {
        StreamId::for_aggregate(A::CATEGORY, id)
    }

    /// Loads the aggregate with this id: its newest snapshot, if snapshots
    /// are on, and then every later event.
    ///
    /// # Errors
    /// [`CommandError::Decode`] when a stored event does not decode, and
    /// store failures.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_stream(&self.stream_of(id)).await
    }

    async fn load_stream(&self, stream: &StreamId) -> Result<Loaded<A>, CommandError<A::Error>> {
        if let Some(mut loaded) = self.cache.as_ref().and_then(|cache| cache.get(stream)) {
            let kept = loaded.version;
            self.fold_from_store(stream, &mut loaded).await?;
            if let Some(cache) = self.cache.as_ref().filter(|_| loaded.version > kept) {
                cache.put(stream, (cache.clone)(&loaded.state), loaded.version);
            }
            return Ok(loaded);
        }
        let loaded = self.load_uncached(stream).await?;
        if let Some(cache) = &self.cache {
            cache.put(stream, (cache.clone)(&loaded.state), loaded.version);
        }
        Ok(loaded)
    }

    /// Keeps a state a command did not change, or changed and stored.
    fn keep(&self, stream: &StreamId, state: A, version: Version) {
        if let Some(cache) = &self.cache {
            cache.put(stream, state, version);
        }
    }

    /// The newest snapshot, if snapshots are on, and every later event.
    async fn load_uncached(&self, stream: &StreamId) -> Result<Loaded<A>, CommandError<A::Error>> {
        let mut loaded = Loaded {
            state: A::default(),
            version: Version::INITIAL,
        };
        if let Some(snapshots) = &self.snapshots {
            match snapshots.store.load(stream).await {
                Ok(Some(snapshot)) => match (snapshots.decode)(snapshot.state) {
                    Ok(state) => {
                        loaded = Loaded {
                            state,
                            version: snapshot.version,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%stream, %error, "ignoring a snapshot that no longer decodes")
                    }
                },
                Ok(None) => {}
                Err(error) => tracing::warn!(%stream, %error, "snapshot store failed; reading the whole stream"),
            }
        }
        self.fold_from_store(stream, &mut loaded).await?;
        Ok(loaded)
    }

    /// Folds the events after `loaded.version` into it.
    async fn fold_from_store(&self, stream: &StreamId, loaded: &mut Loaded<A>) -> Result<(), CommandError<A::Error>> {
        for record in self.store.read_stream(stream, loaded.version.next()).await? {
            let event = self
                .codec
                .decode(&record.event_type, record.schema_version, &record.payload)
                .map_err(|source| CommandError::Decode {
                    stream: stream.clone(),
                    version: record.version,
                    source,
                })?;
            loaded.state.apply(&event);
            loaded.version = record.version;
        }
        Ok(())
    }

    /// Handles `command` on the aggregate with this id and appends its events,
    /// retrying on conflict as the [`RetryPolicy`] says.
    ///
    /// # Errors
    /// [`CommandError::Rejected`] when the aggregate refuses,
    /// [`CommandError::Conflict`] when retries are used up, and the others.
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Metadata,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        self.run(id, command, metadata, None).await
    }

    /// Like [`execute`](Self::execute), but only if the aggregate is at
    /// `expected` (an HTTP `If-Match`, for example). A mismatch is a
    /// [`CommandError::Conflict`] at once, never retried: the caller decided on
    /// a state that is gone.
    ///
    /// # Errors
    /// As for [`execute`](Self::execute).
    pub async fn execute_at(
        &self,
        id: &str,
        expected: Version,
        command: &A::Command,
        metadata: Metadata,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        self.run(id, command, metadata, Some(expected)).await
    }

    /// Like [`execute`](Self::execute), but at most once per `key`: when an
    /// event of this aggregate already carries `key` (in its metadata, under
    /// [`IDEMPOTENCY_KEY`]), nothing is done and the answer has no events
    /// and `duplicate` set. For commands that may be sent again, such as a
    /// process manager's after a crash.
    ///
    /// The check reads the aggregate's whole stream (its metadata), and holds
    /// for one writer per aggregate; two processes sending the same key at
    /// the same moment are told apart by the version check, and the loser's
    /// retry sees the key.
    ///
    /// # Errors
    /// As for [`execute`](Self::execute).
    pub async fn execute_once(
        &self,
        id: &str,
        key: &str,
        command: &A::Command,
        mut metadata: Metadata,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        metadata.extra.insert(IDEMPOTENCY_KEY.to_owned(), key.to_owned());
        self.run(id, command, metadata, None).await
    }

    async fn run(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Metadata,
        precondition: Option<Version>,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        let stream = self.stream_of(id);
        let slot = {
            use std::hash::BuildHasher;
            foldhash::fast::FixedState::default().hash_one(stream.as_str()) as usize % TURN_SLOTS
        };
        let _turn = self.turns[slot].lock().await;
        let started = std::time::Instant::now();
        let outcome = self.attempts(&stream, command, &metadata, precondition).await;
        use crate::telemetry::Outcome;
        let label = match &outcome {
            Ok(committed) if committed.duplicate => Outcome::Duplicate,
            Ok(_) => Outcome::Ok,
            Err(CommandError::Rejected(_)) => Outcome::Rejected,
            Err(CommandError::Conflict { .. }) => Outcome::Conflict,
            Err(_) => Outcome::Failed,
        };
        crate::telemetry::command::<A>(label, started.elapsed());
        outcome
    }

    /// Tries `command`, again after a conflict as the retry policy says.
    async fn attempts(
        &self,
        stream: &StreamId,
        command: &A::Command,
        metadata: &Metadata,
        precondition: Option<Version>,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        // A conflict is retried (the aggregate loaded again, the command
        // handled against the new state) only without a precondition.
        let mut delays = self.retry.delays();
        let mut attempt = 1;
        loop {
            let outcome = self.try_once(stream, command, metadata, precondition).await;
            if matches!(outcome, Err(CommandError::Conflict { .. })) && precondition.is_none() {
                if let Some(delay) = delays.next() {
                    tracing::debug!(%stream, attempt, "version conflict; retrying");
                    attempt += 1;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    continue;
                }
            }
            return outcome;
        }
    }

    async fn try_once(
        &self,
        stream: &StreamId,
        command: &A::Command,
        metadata: &Metadata,
        precondition: Option<Version>,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        if let Some(key) = metadata.extra.get(IDEMPOTENCY_KEY) {
            if self.store.find_idempotency_key(stream, key).await?.is_some() {
                return Ok(Committed {
                    stream_id: stream.clone(),
                    version: self.store.stream_version(stream).await?,
                    events: Vec::new(),
                    position: None,
                    duplicate: true,
                });
            }
        }
        // A cached state is used as it is, unverified: an append at its
        // version succeeds only if no other writer moved the stream since,
        // so nothing is ever stored on a stale state. What the append does
        // not check (a refusal, a command that changes nothing, a version
        // that does not meet the precondition) is decided again on the
        // stream as stored before it is answered, as is an append that
        // meets another writer's events.
        let (mut loaded, mut verified) = match self.cache.as_ref().and_then(|cache| cache.take(stream)) {
            Some(cached) => (cached, false),
            None => (self.load_uncached(stream).await?, true),
        };
        loop {
            let Loaded { state, version } = &loaded;
            let version = *version;
            let decided = match precondition {
                Some(expected) if expected != version => Decided::Mismatch(expected),
                _ => match state.handle(command, &self.services).await {
                    Ok(events) if events.is_empty() => Decided::Nothing,
                    Ok(events) => Decided::Events(events),
                    Err(rejected) => Decided::Rejected(rejected),
                },
            };
            let events = match decided {
                Decided::Events(events) => events,
                _ if !verified => {
                    self.fold_from_store(stream, &mut loaded).await?;
                    verified = true;
                    continue;
                }
                Decided::Mismatch(expected) => {
                    self.keep(stream, loaded.state, version);
                    return Err(CommandError::Conflict {
                        stream: stream.clone(),
                        expected: ExpectedVersion::Exact(expected),
                        actual: version,
                    });
                }
                Decided::Rejected(rejected) => {
                    self.keep(stream, loaded.state, version);
                    return Err(CommandError::Rejected(rejected));
                }
                Decided::Nothing => {
                    self.keep(stream, loaded.state, version);
                    return Ok(Committed {
                        stream_id: stream.clone(),
                        version,
                        events: Vec::new(),
                        position: None,
                        duplicate: false,
                    });
                }
            };
            match self.append_decided(stream, loaded, events, metadata).await {
                Appended::Done(committed) => return committed,
                Appended::Stale(again, _) if !verified => {
                    loaded = again;
                    self.fold_from_store(stream, &mut loaded).await?;
                    verified = true;
                }
                // Another writer, after the stream was read: the caller's
                // retry policy decides.
                Appended::Stale(_, conflict) => return Err(conflict),
            }
        }
    }

    /// Appends the events a command decided on `loaded`, at its version;
    /// gives the state back when the stream had moved on.
    async fn append_decided(
        &self,
        stream: &StreamId,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        metadata: &Metadata,
    ) -> Appended<A> {
        let Loaded { mut state, version } = loaded;
        let new_events = events
            .iter()
            .map(|event| {
                let encoded = codec::encode(event)?;
                Ok(NewEvent {
                    event_id: EventId::new(),
                    event_type: encoded.event_type,
                    schema_version: encoded.schema_version,
                    metadata: metadata.clone(),
                    payload: encoded.payload,
                })
            })
            .collect::<Result<Vec<_>, EncodeError>>();
        let new_events = match new_events {
            Ok(new_events) => new_events,
            Err(error) => return Appended::Done(Err(error.into())),
        };
        let expected = if version == Version::INITIAL {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        let outcome = match self.store.append(stream, expected, new_events).await {
            Ok(outcome) => outcome,
            Err(conflict @ StoreError::Conflict { .. }) => {
                return Appended::Stale(Loaded { state, version }, conflict.into())
            }
            Err(other) => return Appended::Done(Err(other.into())),
        };
        let snapshot_due = self
            .snapshots
            .as_ref()
            .filter(|snapshots| outcome.version.0 / snapshots.every > version.0 / snapshots.every);
        if snapshot_due.is_some() || self.cache.is_some() {
            for event in &events {
                state.apply(event);
            }
        }
        if let Some(snapshots) = snapshot_due {
            self.save_snapshot(snapshots, stream, &state, outcome.version).await;
        }
        self.keep(stream, state, outcome.version);
        Appended::Done(Ok(Committed {
            stream_id: stream.clone(),
            version: outcome.version,
            events,
            position: Some(outcome.last_position),
            duplicate: false,
        }))
    }

    async fn save_snapshot(&self, snapshots: &Snapshots<A>, stream: &StreamId, state: &A, version: Version) {
        let saved = match (snapshots.encode)(state) {
            Ok(state) => {
                snapshots
                    .store
                    .save(Snapshot {
                        stream_id: stream.clone(),
                        version,
                        state,
                        taken_at: chrono::Utc::now(),
                    })
                    .await
            }
            Err(error) => Err(StoreError::Backend(Box::new(error))),
        };
        if let Err(error) = saved {
            tracing::warn!(%stream, %version, %error, "could not save a snapshot");
        }
    }
}
