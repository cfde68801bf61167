//! Event stores: append events to streams with optimistic concurrency, read a
//! stream back, and subscribe to everything from a position.
//!
//! # Guarantees every store gives
//!
//! * **Atomic appends.** The events of one [`EventStore::append`] call are
//!   stored all together or not at all, consecutively in their stream.
//! * **Optimistic concurrency.** An append carries an [`ExpectedVersion`]; when
//!   the stream is not at that version the append stores nothing and fails with
//!   [`StoreError::Conflict`]. Of two writers racing on one stream with the same
//!   expected version, exactly one wins.
//! * **Per-stream order.** A stream's events are read back in the order they
//!   were appended, with versions 1, 2, 3, … and no holes.
//!
//! What a store's subscription guarantees, and what it does not (a global
//! order across streams, for instance), is written on each store: see
//! [`InMemoryStore`] for the in-memory one.

mod memory;

use std::sync::Arc;

use async_trait::async_trait;

use crate::envelope::{NewEvent, Position, RecordedEvent, StreamId, Version};

pub use memory::{InMemoryStore, MemorySubscription};

/// What an append expects of the stream it writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet (hold no events).
    NoStream,
    /// The stream must be exactly at this version.
    Exact(Version),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn admits(self, actual: Version) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == Version::INITIAL,
            ExpectedVersion::Exact(expected) => actual == expected,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
        }
    }
}

/// Where an append put its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream's version after the append: the version of its last event.
    pub version: Version,
    /// The global position of the first appended event.
    pub first_position: Position,
    /// The global position of the last appended event.
    pub last_position: Position,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was appended.
    #[error("version conflict on {stream}: expected {expected}, found version {actual}")]
    Conflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was tried.
        actual: Version,
    },
    /// An append with no events.
    #[error("an append needs at least one event (stream {0})")]
    EmptyAppend(StreamId),
    /// A store whose partitions each have one writer at a time was asked to
    /// append to a stream whose partition another writer owns (or nobody
    /// has taken yet). Nothing was stored: send the append to the owner, or
    /// try again later.
    #[error("this writer does not own partition {partition} (stream {stream}); {}", match owner { Some(o) => format!("{o} does"), None => "no writer has taken it yet".to_owned() })]
    NotOwner {
        /// The stream appended to.
        stream: StreamId,
        /// Its partition, as the store names it (`topic/partition` on Kafka).
        partition: String,
        /// The writer that owns it, as far as this one knows.
        owner: Option<String>,
    },
    /// The append's events were passed over by the log: another writer took
    /// the stream's partition over before they landed, or the writer closed
    /// its turn after a failed send. Nothing of the append is in the log:
    /// it may be sent again, to the owner.
    #[error("append to {stream} was fenced off: {reason}")]
    Fenced {
        /// The stream appended to.
        stream: StreamId,
        /// What happened.
        reason: String,
    },
    /// The store can no longer serve (it was shut down, or its backend went away).
    #[error("the event store is closed: {0}")]
    Closed(String),
    /// The store's backend failed.
    #[error("event store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether the failure says for sure that nothing was stored, and the
    /// same append may succeed if sent again (to the owner, or later):
    /// [`NotOwner`](Self::NotOwner) and [`Fenced`](Self::Fenced). A
    /// [`Conflict`](Self::Conflict) stored nothing either, but needs the
    /// command decided again on the new state.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::NotOwner { .. } | StoreError::Fenced { .. })
    }
}

/// A store of event streams. See the [module docs](self) for the guarantees.
///
/// Stores are handles: cloning one (or an `Arc` of one) gives another handle
/// to the same events.
///
/// ```
/// use bookshelf_core::{EventStore, ExpectedVersion, InMemoryStore, NewEvent, Metadata, EventId, StreamId, Version, Position};
/// use serde_json::value::RawValue;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let stream = StreamId::new("book-1");
/// let event = NewEvent {
///     event_id: EventId::new(),
///     event_type: "BookAdded".into(),
///     schema_version: 1,
///     metadata: Metadata::default(),
///     payload: RawValue::from_string(r#"{"title":"Dune"}"#.into())?,
/// };
/// let outcome = store.append(&stream, ExpectedVersion::NoStream, vec![event.clone()]).await?;
/// assert_eq!(outcome.version, Version(1));
///
/// // A second writer that still believes the stream is new loses.
/// let err = store.append(&stream, ExpectedVersion::NoStream, vec![event]).await.unwrap_err();
/// assert!(matches!(err, bookshelf_core::StoreError::Conflict { .. }));
///
/// let events = store.read_stream(&stream, Version(1)).await?;
/// assert_eq!(events.len(), 1);
/// assert_eq!(events[0].position, Position(0));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The subscription type this store hands out.
    type Subscription: Subscription;

    /// Appends `events` to `stream` atomically, if the stream is at `expected`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the stream is not at `expected` (nothing
    /// is appended), [`StoreError::EmptyAppend`] for no events, and backend
    /// failures.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError>;

    /// The stream's events from version `from` on (1 for all), in order. A
    /// missing stream reads as empty.
    ///
    /// # Errors
    /// Backend failures.
    async fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError>;

    /// The stream's current version ([`Version::INITIAL`] when missing).
    ///
    /// # Errors
    /// Backend failures.
    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError>;

    /// The end of the log: one past the last event's position, so that a
    /// reader whose checkpoint is the head has read everything. On a store
    /// whose positions can have holes (PostgreSQL's, where a rolled-back
    /// append leaves its positions unused) the next event may land past it.
    ///
    /// # Errors
    /// Backend failures.
    async fn head(&self) -> Result<Position, StoreError>;

    /// The version of the first event of `stream` recorded under
    /// idempotency key `key` (the [`IDEMPOTENCY_KEY`](crate::IDEMPOTENCY_KEY)
    /// of its metadata), if there is one. This default reads the whole
    /// stream; stores that index the keys answer without reading it.
    ///
    /// # Errors
    /// Backend failures.
    async fn find_idempotency_key(&self, stream: &StreamId, key: &str) -> Result<Option<Version>, StoreError> {
        let recorded = self.read_stream(stream, Version(1)).await?;
        Ok(recorded
            .iter()
            .find(|r| r.metadata.extra.get(crate::IDEMPOTENCY_KEY).map(String::as_str) == Some(key))
            .map(|r| r.version))
    }

    /// Every event from position `from` on: first those already stored, then
    /// live ones as they are appended.
    ///
    /// # Errors
    /// Backend failures.
    async fn subscribe(&self, from: Position) -> Result<Self::Subscription, StoreError>;

    /// Every stream the store holds with its current version, in the order
    /// of their ids, for tools that browse a store. This default reads the
    /// log up to its [`head`](Self::head); stores that index their streams
    /// answer without reading it.
    ///
    /// # Errors
    /// Backend failures.
    async fn streams(&self) -> Result<Vec<(StreamId, Version)>, StoreError> {
        let head = self.head().await?;
        let mut streams = std::collections::BTreeMap::new();
        let mut subscription = self.subscribe(Position(0)).await?;
        let mut batch = Vec::new();
        while subscription.position() < head {
            subscription.next_batch(&mut batch, 1024).await?;
            for event in &batch {
                streams.insert(event.stream_id.clone(), event.version);
            }
        }
        Ok(streams.into_iter().collect())
    }
}

/// A cursor over a store's log that waits for new events at its end.
#[async_trait]
pub trait Subscription: Send + 'static {
    /// Waits until at least one event is there, then moves up to `max` of them,
    /// in log order, into `batch` (which it clears first).
    ///
    /// Cancel-safe: when the future is dropped before it completes, no event
    /// is lost; the next call returns it.
    ///
    /// # Errors
    /// Backend failures and [`StoreError::Closed`].
    async fn next_batch(&mut self, batch: &mut Vec<Arc<RecordedEvent>>, max: usize) -> Result<(), StoreError>;

    /// The position of the next event this subscription will return.
    fn position(&self) -> Position;
}

#[async_trait]
impl<S: EventStore> EventStore for Arc<S> {
    type Subscription = S::Subscription;

    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        (**self).append(stream, expected, events).await
    }

    async fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        (**self).read_stream(stream, from).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        (**self).stream_version(stream).await
    }

    async fn head(&self) -> Result<Position, StoreError> {
        (**self).head().await
    }

    async fn find_idempotency_key(&self, stream: &StreamId, key: &str) -> Result<Option<Version>, StoreError> {
        (**self).find_idempotency_key(stream, key).await
    }

    async fn subscribe(&self, from: Position) -> Result<Self::Subscription, StoreError> {
        (**self).subscribe(from).await
    }

    async fn streams(&self) -> Result<Vec<(StreamId, Version)>, StoreError> {
        (**self).streams().await
    }
}
