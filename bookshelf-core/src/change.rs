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

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::aggregate::Aggregate;
use crate::codec::{self, DomainEvent, EventCodec};
use crate::envelope::{EventId, Metadata, NewEvent, Position, StreamId, Version};
use crate::projection::ProjectionError;
use crate::runner::RunnerTask;
use crate::store::{EventStore, ExpectedVersion, StoreError, Subscription};

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
    pub event_type: String,
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
/// On start it reads `source` from the beginning to rebuild each
/// aggregate's state (it keeps one state per aggregate, not the events), and
/// publishes what `output` does not have yet. An event that does not decode
/// is reported and left out: its change is missing, the next one follows.
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
/// assert!(feed.wait_for(done.position.unwrap().next()).await);
///
/// let published = changes.read_stream(&change_stream("counter", "c1"), Version(1)).await?;
/// let ChangeEvent::Changed(change) = EventCodec::<ChangeEvent>::new().decode_envelope(&published[0])?.payload;
/// assert_eq!((change.before["value"].as_u64(), change.after["value"].as_u64()), (Some(0), Some(5)));
/// feed.stop().await?;
/// # Ok(()) }
/// ```
pub struct ChangeFeed<A: Aggregate, S, O> {
    source: S,
    output: O,
    codec: EventCodec<A::Event>,
    batch_size: usize,
}

impl<A, S, O> ChangeFeed<A, S, O>
where
    A: Aggregate + Serialize,
    S: EventStore,
    O: EventStore,
{
    /// The changes of `A`'s aggregates in `source`, published to `output`
    /// (which may be `source` itself).
    pub fn new(source: S, output: O) -> Self {
        ChangeFeed {
            source,
            output,
            codec: EventCodec::new(),
            batch_size: 256,
        }
    }

    /// Starts publishing as a task.
    pub fn start(self) -> RunningFeed {
        RunningFeed {
            task: RunnerTask::spawn(|progress, stopped| self.run(progress, stopped)),
        }
    }

    async fn run(
        self,
        progress: watch::Sender<Option<Position>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let mut states: HashMap<StreamId, (A, Version)> = HashMap::new();
        let mut subscription = self.source.subscribe(Position(0)).await?;
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                next = subscription.next_batch(&mut batch, self.batch_size) => next?,
            }
            for record in &batch {
                if record.stream_id.category() != A::CATEGORY {
                    continue;
                }
                let event = match self
                    .codec
                    .decode(&record.event_type, record.schema_version, &record.payload)
                {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::error!(stream = %record.stream_id, version = %record.version, %error,
                            "an event that does not decode is left out of the changes");
                        continue;
                    }
                };
                let (state, version) = states.entry(record.stream_id.clone()).or_default();
                let before = serde_json::to_value(&*state).map_err(|e| self.serialize_error(e))?;
                state.apply(&event);
                *version = record.version;
                let after = serde_json::to_value(&*state).map_err(|e| self.serialize_error(e))?;
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
                self.publish(change).await?;
            }
            if let Some(last) = batch.last() {
                progress.send_replace(Some(last.position.next()));
            }
        }
    }

    /// Appends `change` at its version, unless it is there already.
    async fn publish(&self, change: Change) -> Result<(), ProjectionError> {
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
        let metadata = change.metadata.clone();
        let encoded = codec::encode(&ChangeEvent::Changed(change)).map_err(|e| ProjectionError::Task(e.to_string()))?;
        let event = NewEvent {
            event_id: EventId::new(),
            event_type: encoded.event_type,
            schema_version: encoded.schema_version,
            metadata,
            payload: encoded.payload,
        };
        match self.output.append(&stream, expected, vec![event]).await {
            Ok(_) => Ok(()),
            // Another feed published it first.
            Err(StoreError::Conflict { actual, .. }) if actual >= version => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn serialize_error(&self, source: serde_json::Error) -> ProjectionError {
        ProjectionError::Serialize {
            projection: format!("{}.changes", A::CATEGORY),
            source,
        }
    }
}

/// A running [`ChangeFeed`].
pub struct RunningFeed {
    task: RunnerTask,
}

impl RunningFeed {
    /// Waits until the changes of every event before `position` were
    /// published, or the feed ended; returns whether the position was reached.
    pub async fn wait_for(&self, position: Position) -> bool {
        self.task.wait_for(position).await
    }

    /// Stops the feed.
    ///
    /// # Errors
    /// What stopped the feed before.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        self.task.stop().await
    }
}
