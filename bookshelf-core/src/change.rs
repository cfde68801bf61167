//! Change events: for each event of an aggregate, a self-contained record of
//! the aggregate's state before and after it, for services that replicate
//! or react to state without the aggregate's code.
//!
//! A [`ChangeFeed`] reads an aggregate's events from a store, folds each
//! aggregate's state, and appends one [`ChangeEvent::Changed`] per event to
//! an output store, in the stream `CATEGORY.changes-ID`, at the same version
//! as the event. The version check of that append makes publishing
//! idempotent: after a restart, or with two feeds running, a change already
//! published is not published again. Changes of one aggregate are in order
//! in their stream, and in the output log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aggregate::Aggregate;
use crate::codec::DomainEvent;
use crate::envelope::{EventId, EventType, Metadata, NewEvent, RecordedEvent, StreamId, Version};
use crate::projection::{ProjectionError, StoredView, ViewStore};
use crate::retry::RetryPolicy;
use crate::runner::{Batch, Fold, Runner};
use crate::source::{Checkpoint, EventSource};
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// One change of one aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The aggregate's category, such as `"book"`.
    pub aggregate: String,
    /// The aggregate's id.
    pub id: String,
    /// The aggregate's version after the change: one change per version.
    pub version: Version,
    /// The id of the event that made the change.
    pub event_id: EventId,
    /// The event's type name.
    pub event_type: EventType,
    /// The event's payload.
    pub event: Value,
    /// The state before, as JSON.
    pub before: Value,
    /// The state after, as JSON.
    pub after: Value,
    /// When the event was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The event's metadata (correlation id and the rest).
    pub metadata: Metadata,
}

/// What a change stream holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChangeEvent {
    /// The aggregate changed.
    Changed(Change),
}

impl DomainEvent for ChangeEvent {}

/// The stream of the changes of aggregate `id` of `category`.
pub fn change_stream(category: &str, id: &str) -> StreamId {
    StreamId::for_aggregate(&format!("{category}.changes"), id)
}

/// Publishes the changes of aggregates `A`, read from `source`, to `output`.
///
/// It keeps one state per aggregate (not the events), and, with
/// [`persist_to`](Self::persist_to), saves those states with its checkpoint
/// (the next offset of every partition of `source`) after every
/// `save_every` events, whenever it has caught up, and when stopped: a
/// restart resumes there instead of reading `source` from its start. An
/// event that does not decode is set aside in the runner's dead letters
/// (see [`crate::runner`]): its change is missing, the next one follows. A
/// publish that fails is tried again as the [`RetryPolicy`] says, then the
/// feed stops (a restart resumes).
///
/// The feed is the one [`Runner`], named `CATEGORY.changes`, folding a
/// [`ChangeFold`].
///
/// ```
/// # use bookshelf_core::change::{ChangeEvent, ChangeFeed, change_stream};
/// # use bookshelf_core::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Clone, Serialize, Deserialize)] struct Counter { value: u64 }
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
/// let (writes, changes) = (InMemoryStore::new(), InMemoryStore::new());
/// let feed = ChangeFeed::<Counter, _, _>::new(writes.clone(), changes.clone()).start();
/// let counters = Repository::<Counter, _>::new(writes, ());
/// let done = counters.execute("c1", &5, Metadata::default()).await?;
/// feed.wait_for(done.position.unwrap().next()).await?;
///
/// let published = changes.read_stream(&change_stream("counter", "c1"), Version(1)).await?;
/// let ChangeEvent::Changed(change) = EventCodec::<ChangeEvent>::new().decode_envelope(&published[0])?.payload;
/// assert_eq!((change.before["value"].as_u64(), change.after["value"].as_u64()), (Some(0), Some(5)));
/// feed.stop().await?;
/// # Ok(()) }
/// ```
pub type ChangeFeed<A, S, O> = Runner<ChangeFold<A, O>, S>;

/// The fold of a [`ChangeFeed`]: each aggregate's state, and the changes
/// published to the output store.
pub struct ChangeFold<A: Aggregate, O> {
    name: String,
    output: O,
    states: States<A>,
    save_every: u64,
    unsaved: u64,
    saved: Option<SavedStates<A>>,
    retry: RetryPolicy,
}

/// Where a feed's states are kept, and how they are read back.
struct SavedStates<A> {
    store: Arc<dyn ViewStore>,
    decode: fn(&str) -> Result<States<A>, serde_json::Error>,
}

/// Each aggregate's state and version, by stream.
type States<A> = HashMap<StreamId, (A, Version)>;

impl<A, S, O> Runner<ChangeFold<A, O>, S>
where
    A: Aggregate + Serialize,
    S: EventSource,
    O: EventStore,
{
    /// The changes of `A`'s aggregates in `source` (any [`EventSource`]: the
    /// in-memory store, a Kafka topic of any number of partitions), published
    /// to `output`.
    pub fn new(source: S, output: O) -> Self {
        let name = format!("{}.changes", A::CATEGORY);
        let fold = ChangeFold {
            name: name.clone(),
            output,
            states: HashMap::new(),
            save_every: 1_000,
            unsaved: 0,
            saved: None,
            retry: RetryPolicy::attempts(10).with_backoff(Duration::from_millis(10)),
        };
        Runner::folding(name, source, fold)
            .batch_size(256)
            .only_category(A::CATEGORY)
    }

    /// Keeps every aggregate's state with the checkpoint in `store`, so that
    /// a restart resumes where the feed was.
    #[must_use]
    pub fn persist_to(mut self, store: impl ViewStore) -> Self
    where
        A: DeserializeOwned,
    {
        self.fold.saved = Some(SavedStates {
            store: Arc::new(store),
            decode: |json| {
                let saved: Vec<SavedState<A>> = serde_json::from_str(json)?;
                Ok(saved
                    .into_iter()
                    .map(|s| (StreamId::new(s.stream), (s.state, s.version)))
                    .collect())
            },
        });
        self
    }

    /// Saves after this many events (default 1,000), besides when caught up
    /// and when stopped.
    #[must_use]
    pub fn save_every(mut self, events: u64) -> Self {
        self.fold.save_every = events.max(1);
        self
    }

    /// How often, and after what pauses, a failed publish is tried again
    /// before the feed stops (default: 10 times from 10 ms on).
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.fold.retry = retry;
        self
    }
}

#[async_trait]
impl<A, O> Fold for ChangeFold<A, O>
where
    A: Aggregate + Serialize,
    O: EventStore,
{
    type Event = A::Event;
    type Reads = ();

    fn reads(&self) {}

    async fn restore(&mut self) -> Result<Checkpoint, ProjectionError> {
        let Some(saved) = &self.saved else {
            return Ok(Checkpoint::new());
        };
        match saved.store.load().await? {
            Some(stored) => {
                self.states = (saved.decode)(stored.state.get()).map_err(|source| ProjectionError::SavedState {
                    projection: self.name.clone(),
                    source,
                })?;
                Ok(stored.reflects())
            }
            None => Ok(Checkpoint::new()),
        }
    }

    async fn apply(&mut self, batch: Batch<'_, A::Event>) -> Result<(), ProjectionError> {
        for decoded in batch.events.drain(..) {
            let record = &decoded.record;
            let span = crate::trace::event_span(&self.name, &record.event_type, &record.metadata);
            tracing::Instrument::instrument(self.change(record, &decoded.event.payload), span).await?;
            self.unsaved += 1;
        }
        if batch.save || self.unsaved >= self.save_every || (batch.caught_up && self.unsaved > 0) {
            self.save(batch.to).await?;
            self.unsaved = 0;
        }
        Ok(())
    }

    async fn stop(&mut self, at: &Checkpoint) -> Result<(), ProjectionError> {
        if self.unsaved > 0 {
            self.save(at).await?;
        }
        Ok(())
    }
}

impl<A, O> ChangeFold<A, O>
where
    A: Aggregate + Serialize,
    O: EventStore,
{
    async fn save(&self, checkpoint: &Checkpoint) -> Result<(), ProjectionError> {
        let Some(saved) = &self.saved else {
            return Ok(());
        };
        let list: Vec<SavedStateRef<'_, A>> = self
            .states
            .iter()
            .map(|(stream, (state, version))| SavedStateRef {
                stream: stream.as_str(),
                version: *version,
                state,
            })
            .collect();
        let state = serde_json::value::to_raw_value(&list).map_err(|e| self.serialize_error(e))?;
        saved.store.save(&StoredView::new(checkpoint, state)).await?;
        Ok(())
    }

    /// Folds `record` (decoded as `event`) into its aggregate's state and
    /// publishes the change.
    async fn change(&mut self, record: &RecordedEvent, event: &A::Event) -> Result<(), ProjectionError> {
        let (state, version) = self.states.entry(record.stream_id.clone()).or_default();
        if record.version <= *version {
            return Ok(()); // folded before the checkpoint saved with this state
        }
        let before = serde_json::to_value(&*state).map_err(|e| serialize_error(&self.name, e))?;
        state.apply(event);
        *version = record.version;
        let after = serde_json::to_value(&*state).map_err(|e| serialize_error(&self.name, e))?;
        let change = Change {
            aggregate: A::CATEGORY.to_owned(),
            id: record.stream_id.entity_id().to_owned(),
            version: record.version,
            event_id: record.event_id,
            event_type: record.event_type.clone(),
            event: serde_json::from_str(record.payload.get()).unwrap_or(Value::Null),
            before,
            after,
            recorded_at: record.recorded_at,
            metadata: record.metadata.clone(),
        };
        let mut delays = self.retry.delays();
        let mut attempt = 1;
        loop {
            match self.publish(&change).await {
                Ok(()) => return Ok(()),
                Err(error) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(stream = %record.stream_id, version = %record.version, %error, attempt,
                            "could not publish a change; retrying");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(error),
                },
            }
        }
    }

    /// Appends `change` at its version, unless it is there already.
    async fn publish(&self, change: &Change) -> Result<(), ProjectionError> {
        let stream = change_stream(&change.aggregate, &change.id);
        let published = self.output.stream_version(&stream).await?;
        if published >= change.version {
            return Ok(());
        }
        let version = change.version;
        let expected = if published == Version::INITIAL {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(published)
        };
        let event = NewEvent::encode(&ChangeEvent::Changed(change.clone()), change.metadata.clone())
            .map_err(|e| ProjectionError::Task(e.to_string()))?;
        match self.output.append(&stream, expected, vec![event]).await {
            Ok(_) => Ok(()),
            // Another feed published it first.
            Err(StoreError::Conflict { actual, .. }) if actual >= version => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn serialize_error(&self, source: serde_json::Error) -> ProjectionError {
        serialize_error(&self.name, source)
    }
}

fn serialize_error(name: &str, source: serde_json::Error) -> ProjectionError {
    ProjectionError::Serialize {
        projection: name.to_owned(),
        source,
    }
}

/// One aggregate's state as a feed saves it.
#[derive(Deserialize)]
struct SavedState<A> {
    stream: String,
    version: Version,
    state: A,
}

#[derive(Serialize)]
struct SavedStateRef<'a, A> {
    stream: &'a str,
    version: Version,
    state: &'a A,
}
