//! The in-memory event store: the embedded default and the store for tests.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::Notify;

use super::{AppendOutcome, EventStore, ExpectedVersion, StoreError, Subscription};
use crate::envelope::{Envelope, NewEvent, Position, RecordedEvent, StreamId, Version};
use crate::repository::IDEMPOTENCY_KEY;

/// An event store in the process's memory.
///
/// Besides the guarantees of every [`EventStore`], it keeps **one global
/// order**: every event gets the next position of one log, and subscriptions
/// read that log.
///
/// Subscriptions are cursors over the log, not queues: a subscriber reads the
/// events the store already holds at its own pace. So a subscription
/// * sees every event from its start position exactly once and in log order,
///   across the hand-over from catch-up to live events (there is no
///   hand-over: live events are simply the end of the log);
/// * costs no memory per event however far behind it is: a slow subscriber
///   slows only itself, and never makes appends wait or fail.
///
/// Nothing survives the process: it is meant for tests, examples and the
/// embedded default. Cloning gives another handle to the same store.
#[derive(Clone, Default)]
pub struct InMemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    log: RwLock<Log>,
    /// Told after every append; subscribers wait on it at the end of the log.
    /// (One `Notify`, not a `watch`: a watch's sender takes eight locks per
    /// send, and every append sends.)
    appended: Notify,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            log: RwLock::default(),
            appended: Notify::new(),
        }
    }
}

#[derive(Default)]
struct Log {
    events: Vec<Arc<RecordedEvent>>,
    /// The positions of each stream's events, in version order.
    streams: HashMap<StreamId, Vec<u64>, foldhash::fast::RandomState>,
    /// The version of each event recorded under an idempotency key, by
    /// stream and key.
    keys: HashMap<(StreamId, String), Version>,
}

impl Log {
    fn index_key(&mut self, event: &RecordedEvent) {
        if let Some(key) = event.metadata.extra.get(IDEMPOTENCY_KEY) {
            self.keys
                .entry((event.stream_id.clone(), key.clone()))
                .or_insert(event.version);
        }
    }
}

impl Shared {
    // A panic while holding the lock cannot leave the log half-written: an
    // append checks everything before it pushes. So a poisoned lock is safe
    // to keep using.
    fn read(&self) -> RwLockReadGuard<'_, Log> {
        self.log.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        crate::telemetry::appended("memory", 0);
        InMemoryStore::default()
    }

    /// How many events the store holds.
    pub fn len(&self) -> usize {
        self.shared.read().events.len()
    }

    /// Whether the store holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends already recorded events, keeping their ids, types, times and
    /// payloads but giving them this store's positions and versions; for
    /// loading a saved log or a test fixture. Events are appended in order,
    /// each to its own stream.
    pub fn import(&self, events: impl IntoIterator<Item = RecordedEvent>) {
        let mut log = self.shared.write();
        for mut event in events {
            let position = log.events.len() as u64;
            let positions = log.streams.entry(event.stream_id.clone()).or_default();
            event.version = Version(positions.len() as u64 + 1);
            event.position = Position(position);
            positions.push(position);
            log.index_key(&event);
            log.events.push(Arc::new(event));
        }
        drop(log);
        self.shared.appended.notify_waiters();
    }
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = self.shared.read();
        f.debug_struct("InMemoryStore")
            .field("events", &log.events.len())
            .field("streams", &log.streams.len())
            .finish()
    }
}

#[async_trait]
impl EventStore for InMemoryStore {
    type Subscription = MemorySubscription;

    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend(stream.clone()));
        }
        let recorded_at = Utc::now();
        let mut log = self.shared.write();
        let Log {
            events: all, streams, ..
        } = &mut *log;
        let positions = streams.entry(stream.clone()).or_default();
        let actual = Version(positions.len() as u64);
        if !expected.admits(actual) {
            if positions.is_empty() {
                streams.remove(stream);
            }
            return Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        let first_position = Position(all.len() as u64);
        let mut version = actual;
        for event in events {
            version = version.next();
            let position = all.len() as u64;
            positions.push(position);
            all.push(Arc::new(Envelope {
                event_id: event.event_id,
                stream_id: stream.clone(),
                version,
                position: Position(position),
                recorded_at,
                event_type: event.event_type,
                schema_version: event.schema_version,
                metadata: event.metadata,
                payload: event.payload,
            }));
        }
        let last_position = Position(all.len() as u64 - 1);
        crate::telemetry::appended("memory", (last_position.0 + 1 - first_position.0) as usize);
        for position in first_position.0..=last_position.0 {
            let event = Arc::clone(&log.events[position as usize]);
            log.index_key(&event);
        }
        drop(log);
        self.shared.appended.notify_waiters();
        Ok(AppendOutcome {
            version,
            first_position,
            last_position,
        })
    }

    async fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let log = self.shared.read();
        let Some(positions) = log.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let skip = from.0.saturating_sub(1) as usize;
        Ok(positions
            .iter()
            .skip(skip)
            .map(|&position| Arc::clone(&log.events[position as usize]))
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        let log = self.shared.read();
        Ok(Version(log.streams.get(stream).map_or(0, |p| p.len() as u64)))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        Ok(Position(self.shared.read().events.len() as u64))
    }

    async fn streams(&self) -> Result<Vec<(StreamId, Version)>, StoreError> {
        let log = self.shared.read();
        let mut streams: Vec<_> = log
            .streams
            .iter()
            .map(|(stream, positions)| (stream.clone(), Version(positions.len() as u64)))
            .collect();
        streams.sort_unstable();
        Ok(streams)
    }

    async fn find_idempotency_key(&self, stream: &StreamId, key: &str) -> Result<Option<Version>, StoreError> {
        let log = self.shared.read();
        Ok(log.keys.get(&(stream.clone(), key.to_owned())).copied())
    }

    async fn subscribe(&self, from: Position) -> Result<MemorySubscription, StoreError> {
        Ok(MemorySubscription {
            shared: Arc::clone(&self.shared),
            next: from.0,
        })
    }
}

/// A subscription to an [`InMemoryStore`]: a cursor over its log.
pub struct MemorySubscription {
    shared: Arc<Shared>,
    next: u64,
}

impl std::fmt::Debug for MemorySubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySubscription").field("next", &self.next).finish()
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next_batch(&mut self, batch: &mut Vec<Arc<RecordedEvent>>, max: usize) -> Result<(), StoreError> {
        batch.clear();
        let max = max.max(1);
        // A reader far behind finds every batch ready; spending the task's
        // budget lets it yield now and then, so it shares its worker thread
        // and an abort takes effect.
        tokio::task::coop::consume_budget().await;
        loop {
            // Made *before* looking at the log: a `Notified` is woken by every
            // `notify_waiters` after it is made, polled yet or not, so an
            // append landing after the look wakes the wait below.
            let appended = self.shared.appended.notified();
            {
                let log = self.shared.read();
                let end = log.events.len() as u64;
                if self.next < end {
                    let stop = end.min(self.next + max as u64);
                    batch.extend(log.events[self.next as usize..stop as usize].iter().cloned());
                    self.next = stop;
                    return Ok(());
                }
            }
            appended.await;
        }
    }

    fn position(&self) -> Position {
        Position(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{EventId, Metadata};
    use serde_json::value::RawValue;

    fn event(n: u64) -> NewEvent {
        NewEvent {
            event_id: EventId::new(),
            event_type: "Counted".into(),
            schema_version: 1,
            metadata: Metadata::default(),
            payload: RawValue::from_string(n.to_string()).unwrap(),
        }
    }

    #[tokio::test]
    async fn import_renumbers_events_in_the_order_given() {
        let source = InMemoryStore::new();
        for (stream, n) in [("a-1", 1), ("b-1", 2), ("a-1", 3)] {
            source
                .append(&StreamId::new(stream), ExpectedVersion::Any, vec![event(n)])
                .await
                .unwrap();
        }
        let all = source.read_stream(&StreamId::new("a-1"), Version(1)).await.unwrap();
        let copy = InMemoryStore::new();
        copy.import(all.iter().map(|e| (**e).clone()));
        let read = copy.read_stream(&StreamId::new("a-1"), Version(1)).await.unwrap();
        assert_eq!(
            read.iter().map(|e| (e.version.0, e.position.0)).collect::<Vec<_>>(),
            vec![(1, 0), (2, 1)]
        );
        assert_eq!(read[1].event_id, all[1].event_id);
    }
}
