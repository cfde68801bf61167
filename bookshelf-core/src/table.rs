//! Views kept as SQLite tables (feature `sqlite`), for views larger than
//! memory, queried with SQL.
//!
//! A [`TableView`] applies each event as rows. The [`TableProjection`]
//! follows a log ([`EventSource`]) and applies each batch of events in one
//! transaction that also moves the view's checkpoint, in a table of the
//! same database: after a crash the tables and the checkpoint agree, and
//! every event is reflected exactly once. Nothing of the view is held in
//! memory beyond a batch; SQLite keeps a bounded page cache.
//!
//! ```
//! use bookshelf_core::table::{rusqlite, TableProjection, TableView};
//! use bookshelf_core::{DomainEvent, Envelope, EventStore, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! enum BookEvent { BookAdded { title: String, author: String } }
//! impl DomainEvent for BookEvent {}
//!
//! /// Books by author, as a table.
//! struct ByAuthor;
//!
//! impl TableView for ByAuthor {
//!     type Event = BookEvent;
//!     fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
//!         db.execute_batch("CREATE TABLE IF NOT EXISTS books (id TEXT PRIMARY KEY, title TEXT, author TEXT)")
//!     }
//!     fn apply(&self, db: &rusqlite::Transaction<'_>, event: &Envelope<BookEvent>) -> rusqlite::Result<()> {
//!         let BookEvent::BookAdded { title, author } = &event.payload;
//!         db.execute(
//!             "INSERT OR REPLACE INTO books (id, title, author) VALUES (?1, ?2, ?3)",
//!             [event.stream_id.entity_id(), title, author],
//!         )?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = InMemoryStore::new();
//! let view = TableProjection::new("by-author", store.clone(), dir.path().join("views.sqlite"), ByAuthor).start()?;
//! let added = bookshelf_core::codec::encode(&BookEvent::BookAdded { title: "Emma".into(), author: "Jane Austen".into() })?;
//! let event = NewEvent {
//!     event_id: Default::default(),
//!     event_type: added.event_type,
//!     schema_version: added.schema_version,
//!     metadata: Default::default(),
//!     payload: added.payload,
//! };
//! let written = store.append(&StreamId::new("book-1"), ExpectedVersion::Any, vec![event]).await?;
//! assert!(view.handle().wait_for(written.last_position.next()).await);
//! let titles: Vec<String> = view.handle().query(|db| {
//!     let mut rows = db.prepare("SELECT title FROM books WHERE author = ?1")?;
//!     let titles = rows.query_map(["Jane Austen"], |r| r.get(0))?.collect();
//!     titles
//! })?;
//! assert_eq!(titles, ["Emma"]);
//! view.stop().await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::watch;

use crate::codec::{DecodeError, DomainEvent, EventCodec};
use crate::envelope::{Envelope, Position};
use crate::projection::{set_aside, DeadLetters, InMemoryDeadLetters, ProjectionError};
use crate::runner::{Progress, RunnerTask, RunnerWatch};
use crate::source::{Checkpoint, EventSource, PartitionProgress};
use crate::store::StoreError;

pub use rusqlite;

/// A view whose state is tables: each event is applied as rows.
pub trait TableView: Send + Sync + 'static {
    /// The events it applies; other types in the log are passed over.
    type Event: DomainEvent;

    /// Creates its tables (and indexes) when missing.
    ///
    /// # Errors
    /// What SQLite answers.
    fn create(&self, db: &Connection) -> rusqlite::Result<()>;

    /// Applies one event, inside the transaction of its batch.
    ///
    /// # Errors
    /// What SQLite answers: the batch is rolled back and the projection
    /// stops (a restart applies it again).
    fn apply(&self, db: &Transaction<'_>, event: &Envelope<Self::Event>) -> rusqlite::Result<()>;
}

const CHECKPOINTS: &str = "
CREATE TABLE IF NOT EXISTS bookshelf_checkpoints (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    offsets TEXT NOT NULL
);
";

/// Keeps a [`TableView`] up to date from a log, in a SQLite file.
pub struct TableProjection<T: TableView, S> {
    name: String,
    source: S,
    path: PathBuf,
    view: T,
    codec: EventCodec<T::Event>,
    batch_size: usize,
    dead_letters: Arc<dyn DeadLetters>,
}

fn failed(path: &Path, what: &str, error: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Store(StoreError::Backend(
        format!("{}: {what}: {error}", path.display()).into(),
    ))
}

fn lock(connection: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    connection.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: TableView, S: EventSource> TableProjection<T, S> {
    /// View `view`, named `name`, of the log of `source`, in the SQLite
    /// file `path` (which may be the event store's own file).
    pub fn new(name: impl Into<String>, source: S, path: impl Into<PathBuf>, view: T) -> Self {
        TableProjection {
            name: name.into(),
            source,
            path: path.into(),
            view,
            codec: EventCodec::new(),
            batch_size: 512,
            dead_letters: Arc::new(InMemoryDeadLetters::new()),
        }
    }

    /// Takes up to this many events per transaction (default 512).
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events.max(1);
        self
    }

    /// Sets aside the events that do not decode here (default: in memory).
    pub fn dead_letters(mut self, sink: impl DeadLetters) -> Self {
        self.dead_letters = Arc::new(sink);
        self
    }

    /// Opens the file, creates the view's tables, and starts following the
    /// log from the saved checkpoint.
    ///
    /// # Errors
    /// When the file cannot be opened or the tables created: an error
    /// naming the file.
    pub fn start(self) -> Result<RunningTable, ProjectionError> {
        let path = self.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| failed(&path, "cannot create its directory", e))?;
        }
        let connect = || -> Result<Connection, ProjectionError> {
            let db = Connection::open(&path).map_err(|e| failed(&path, "cannot open", e))?;
            db.busy_timeout(Duration::from_secs(10))
                .and_then(|()| db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"))
                .map_err(|e| failed(&path, "not a usable SQLite database", e))?;
            Ok(db)
        };
        let writer = connect()?;
        writer
            .execute_batch(CHECKPOINTS)
            .and_then(|()| self.view.create(&writer))
            .map_err(|e| failed(&path, "cannot create the view's tables", e))?;
        let saved: Option<(i64, String)> = writer
            .query_row(
                "SELECT position, offsets FROM bookshelf_checkpoints WHERE name = ?1",
                [&self.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| failed(&path, "cannot read the checkpoint", e))?;
        let checkpoint = match saved {
            Some((position, offsets)) => {
                let offsets: BTreeMap<String, u64> =
                    serde_json::from_str(&offsets).map_err(|e| failed(&path, "the checkpoint does not parse", e))?;
                Checkpoint::from_saved(Position(position as u64), &offsets)
            }
            None => Checkpoint::new(),
        };
        let reader = Arc::new(Mutex::new(connect()?));
        let task = RunnerTask::spawn(|progress, stopped| self.run(writer, checkpoint, progress, stopped));
        Ok(RunningTable {
            handle: TableHandle {
                reader,
                watch: task.watch(),
            },
            task,
        })
    }

    async fn run(
        self,
        mut db: Connection,
        mut checkpoint: Checkpoint,
        progress: watch::Sender<Progress>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let mut follower = self.source.follow(&checkpoint).await?;
        Progress {
            checkpoint: checkpoint.clone(),
            ends: follower.ends(),
        }
        .report(&self.name, &progress);
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut decoded = Vec::with_capacity(self.batch_size);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                next = follower.next_batch(&mut batch, self.batch_size) => next?,
            }
            let mut next = checkpoint.clone();
            for record in batch.drain(..) {
                if let Some(event) = &record.event {
                    match self.codec.decode_envelope(event) {
                        Ok(event) => decoded.push(event),
                        Err(DecodeError::UnknownEventType { .. }) => {}
                        Err(error) => set_aside(&*self.dead_letters, &self.name, event, &error).await?,
                    }
                }
                next.set(&record.partition, record.mark);
            }
            self.commit(&mut db, decoded.drain(..), &next)?;
            checkpoint = next;
            Progress {
                checkpoint: checkpoint.clone(),
                ends: follower.ends(),
            }
            .report(&self.name, &progress);
        }
    }

    /// Applies `events` and moves the checkpoint to `to`, in one transaction.
    fn commit(
        &self,
        db: &mut Connection,
        events: impl Iterator<Item = Envelope<T::Event>>,
        to: &Checkpoint,
    ) -> Result<(), ProjectionError> {
        let (position, offsets) = to.to_saved();
        let offsets = serde_json::to_string(&offsets).map_err(|source| ProjectionError::Serialize {
            projection: self.name.clone(),
            source,
        })?;
        let write = |e: rusqlite::Error| failed(&self.path, &format!("view {:?} cannot apply a batch", self.name), e);
        let tx = db.transaction().map_err(write)?;
        for event in events {
            let _span = crate::trace::event_span(&self.name, &event.event_type, &event.metadata).entered();
            self.view.apply(&tx, &event).map_err(write)?;
        }
        tx.execute(
            "INSERT INTO bookshelf_checkpoints (name, position, offsets) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET position = ?2, offsets = ?3",
            params![self.name, position.0 as i64, offsets],
        )
        .map_err(write)?;
        tx.commit().map_err(write)
    }
}

/// A running [`TableProjection`].
pub struct RunningTable {
    handle: TableHandle,
    task: RunnerTask,
}

impl RunningTable {
    /// A handle to query the view; clone it freely.
    pub fn handle(&self) -> TableHandle {
        self.handle.clone()
    }

    /// Stops after the batch in hand (its transaction is whole or absent).
    ///
    /// # Errors
    /// What stopped the projection before.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        self.task.stop().await
    }

    /// Stops at once: what a crash would do (the batch in hand is committed
    /// whole or not at all).
    ///
    /// Returns once the task is gone: nothing it does lands afterwards.
    pub async fn abort(self) {
        self.task.abort().await;
    }
}

/// A cheap, cloneable handle to a [`TableProjection`]'s tables.
#[derive(Clone)]
pub struct TableHandle {
    reader: Arc<Mutex<Connection>>,
    watch: RunnerWatch,
}

impl TableHandle {
    /// Answers a query on the view's tables, as of the last committed batch.
    ///
    /// # Errors
    /// What SQLite answers.
    pub fn query<R>(&self, query: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> rusqlite::Result<R> {
        query(&lock(&self.reader))
    }

    /// Waits until every event before `position` of a log with one global
    /// order is in the tables, or the projection ended; returns whether the
    /// position was reached.
    pub async fn wait_for(&self, position: Position) -> bool {
        self.watch.wait_for(position).await
    }

    /// Waits until every record before `ends` (the next offset of each
    /// partition) is in the tables, or the projection ended.
    pub async fn wait_for_ends(&self, ends: &BTreeMap<String, u64>) -> bool {
        self.watch.wait_for_ends(ends).await
    }

    /// Each partition's position (as committed with the tables) and end as
    /// last seen, and so the lag.
    pub fn progress(&self) -> BTreeMap<String, PartitionProgress> {
        self.watch.progress()
    }
}
