//! What is saved beside the events: aggregates' snapshots and views' state
//! with their checkpoints.

use async_trait::async_trait;
use bookshelf_core::{
    Position, Snapshot, SnapshotStore, StoreError, StoredView, StreamId, Version, ViewStore, ViewStoreError,
};
use chrono::{DateTime, Utc};

use std::time::Duration;

use crate::server::{retrying, Failed};
use crate::store::PostgresStore;

/// The snapshots in a [`PostgresStore`]'s database: the newest of each
/// stream, one row each.
#[derive(Clone, Debug)]
pub struct PostgresSnapshots {
    store: PostgresStore,
}

impl PostgresSnapshots {
    pub(crate) fn new(store: PostgresStore) -> Self {
        PostgresSnapshots { store }
    }
}

#[async_trait]
impl SnapshotStore for PostgresSnapshots {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let server = self.store.server();
        let client = self.store.client().await?;
        let row = client
            .query_opt(
                "SELECT version, taken_at, state FROM bookshelf_snapshots WHERE stream = $1",
                &[&stream.as_str()],
            )
            .await
            .map_err(|e| server.error("cannot read snapshots", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (version, taken_at, state): (i64, &str, &str) = (row.get(0), row.get(1), row.get(2));
        let state = serde_json::from_str(state)
            .map_err(|e| server.refused(format!("the snapshot of {stream} does not parse: {e}")))?;
        let taken_at: DateTime<Utc> = bookshelf_core::timestamp::parse(taken_at).ok_or_else(|| {
            server.refused(format!(
                "the snapshot of {stream} has a time that does not parse: {taken_at}"
            ))
        })?;
        Ok(Some(Snapshot {
            stream_id: stream.clone(),
            version: Version(version as u64),
            state,
            taken_at,
        }))
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let server = self.store.server();
        let client = self.store.client().await?;
        client
            .execute(
                "INSERT INTO bookshelf_snapshots (stream, version, taken_at, state) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (stream) DO UPDATE SET version = excluded.version, taken_at = excluded.taken_at, \
                 state = excluded.state WHERE excluded.version >= bookshelf_snapshots.version",
                &[
                    &snapshot.stream_id.as_str(),
                    &(snapshot.version.0 as i64),
                    &snapshot.taken_at.to_rfc3339(),
                    &snapshot.state.to_string(),
                ],
            )
            .await
            .map_err(|e| server.error("cannot save a snapshot", e))?;
        Ok(())
    }
}

/// One view's state and checkpoint in a [`PostgresStore`]'s database,
/// saved together in one row.
#[derive(Clone, Debug)]
pub struct PostgresViewStore {
    store: PostgresStore,
    name: String,
}

impl PostgresViewStore {
    pub(crate) fn new(store: PostgresStore, name: String) -> Self {
        PostgresViewStore { store, name }
    }
}

fn view_error(error: StoreError) -> ViewStoreError {
    ViewStoreError(Box::new(error))
}

impl PostgresViewStore {
    async fn try_load(&self) -> Result<Option<(i64, String, String)>, Failed> {
        let server = self.store.server();
        let client = server.connection(self.store.pool()).await?;
        let row = client
            .query_opt(
                "SELECT checkpoint, offsets, state FROM bookshelf_views WHERE name = $1",
                &[&self.name],
            )
            .await
            .map_err(|e| server.failed("cannot read a view", e))?;
        Ok(row.map(|row| (row.get(0), row.get(1), row.get(2))))
    }

    async fn try_save(&self, checkpoint: i64, offsets: &str, state: &str) -> Result<(), Failed> {
        let server = self.store.server();
        let client = server.connection(self.store.pool()).await?;
        client
            .execute(
                "INSERT INTO bookshelf_views (name, checkpoint, offsets, state) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET checkpoint = excluded.checkpoint, offsets = excluded.offsets, \
                 state = excluded.state",
                &[&self.name, &checkpoint, &offsets, &state],
            )
            .await
            .map_err(|e| server.failed("cannot save a view", e))?;
        Ok(())
    }

    async fn try_remove(&self) -> Result<(), Failed> {
        let server = self.store.server();
        let client = server.connection(self.store.pool()).await?;
        client
            .execute("DELETE FROM bookshelf_views WHERE name = $1", &[&self.name])
            .await
            .map_err(|e| server.failed("cannot remove a view", e))?;
        Ok(())
    }
}

/// How long a view's load or save waits for a database that is away
/// before it fails (and stops its runner).
const VIEW_PATIENCE: Duration = Duration::from_secs(60);

#[async_trait]
impl ViewStore for PostgresViewStore {
    async fn load(&self) -> Result<Option<StoredView>, ViewStoreError> {
        let server = self.store.server();
        let what = format!("view {:?}", self.name);
        let Some((checkpoint, offsets, state)) = retrying(&what, VIEW_PATIENCE, || self.try_load())
            .await
            .map_err(view_error)?
        else {
            return Ok(None);
        };
        let broken = |e: serde_json::Error| {
            view_error(server.refused(format!("the saved view {:?} does not parse: {e}", self.name)))
        };
        Ok(Some(StoredView {
            checkpoint: Position(checkpoint as u64),
            offsets: serde_json::from_str(&offsets).map_err(broken)?,
            state: serde_json::value::RawValue::from_string(state).map_err(broken)?,
        }))
    }

    /// Saves the view; while the database is away, waits for it (up to a
    /// minute) and tries again.
    async fn save(&self, view: &StoredView) -> Result<(), ViewStoreError> {
        let server = self.store.server();
        let offsets = serde_json::to_string(&view.offsets)
            .map_err(|e| view_error(server.refused(format!("cannot write a checkpoint: {e}"))))?;
        let what = format!("view {:?}", self.name);
        let checkpoint = view.checkpoint.0 as i64;
        retrying(&what, VIEW_PATIENCE, || {
            self.try_save(checkpoint, &offsets, view.state.get())
        })
        .await
        .map_err(view_error)
    }

    /// Removes the view; while the database is away, waits for it (up to a
    /// minute) and tries again.
    async fn remove(&self) -> Result<(), ViewStoreError> {
        let what = format!("view {:?}", self.name);
        retrying(&what, VIEW_PATIENCE, || self.try_remove())
            .await
            .map_err(view_error)
    }
}
