//! Snapshots: an aggregate's state saved at a version, so that loading a long
//! stream reads only the events after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::{StreamId, Version};
use crate::store::StoreError;

/// An aggregate's state as of one version of its stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The version of the last event folded into `state`.
    pub version: Version,
    /// The state, serialized by serde.
    pub state: serde_json::Value,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

/// Where snapshots are kept. Only the newest snapshot of each stream matters.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The newest snapshot of `stream`, if any.
    ///
    /// # Errors
    /// Backend failures.
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError>;

    /// Keeps `snapshot`, replacing older ones of its stream.
    ///
    /// # Errors
    /// Backend failures.
    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError>;
}

/// Snapshots in the process's memory. Cloning gives another handle to the
/// same snapshots.
#[derive(Clone, Debug, Default)]
pub struct InMemorySnapshots {
    snapshots: Arc<Mutex<HashMap<StreamId, Snapshot>>>,
}

impl InMemorySnapshots {
    /// No snapshots.
    pub fn new() -> Self {
        InMemorySnapshots::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Snapshot>> {
        // Inserting a value cannot leave the map half-changed.
        self.snapshots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl SnapshotStore for InMemorySnapshots {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.map().get(stream).cloned())
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut map = self.map();
        let newer = map
            .get(&snapshot.stream_id)
            .is_none_or(|old| old.version < snapshot.version);
        if newer {
            map.insert(snapshot.stream_id.clone(), snapshot);
        }
        Ok(())
    }
}
