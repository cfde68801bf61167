//! Views kept as SQLite tables, for views larger than memory, queried with
//! SQL.
//!
//! A [`TableView`] applies each event as rows. Its [`TableFold`] is what the
//! core's one [`Runner`] folds: each batch of events is applied in one
//! transaction that also moves the view's checkpoint, in a table of the
//! same database, so after a crash the tables and the checkpoint agree, and
//! every event is reflected exactly once. Nothing of the view is held in
//! memory beyond a batch; SQLite keeps a bounded page cache.
//!
//! ```
//! use bookshelf_sqlite::table::{rusqlite, TableFold, TableView};
//! use bookshelf_core::{DomainEvent, Envelope, EventStore, ExpectedVersion, InMemoryStore, Metadata, NewEvent, StreamId};
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
//! let view = TableFold::open("by-author", dir.path().join("views.sqlite"), ByAuthor)?
//!     .follow(store.clone())
//!     .start();
//! let added = BookEvent::BookAdded { title: "Emma".into(), author: "Jane Austen".into() };
//! let event = NewEvent::encode(&added, Metadata::default())?;
//! let written = store.append(&StreamId::new("book-1"), ExpectedVersion::Any, vec![event]).await?;
//! view.wait_for(written.last_position.next()).await?;
//! let titles: Vec<String> = view.query(|db| {
//!     let mut rows = db.prepare("SELECT title FROM books WHERE author = ?1")?;
//!     let titles = rows.query_map(["Jane Austen"], |r| r.get(0))?.collect();
//!     titles
//! })?;
//! assert_eq!(titles, ["Emma"]);
//! view.stop().await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bookshelf_core::runner::{Batch, Fold, Runner};
use bookshelf_core::{Checkpoint, DomainEvent, Envelope, EventSource, ProjectionError, StoreError};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

pub use rusqlite;

/// A view whose state is tables: each event is applied as rows.
pub trait TableView: Send + 'static {
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
    /// What SQLite answers: the batch is rolled back and the runner stops
    /// (a restart applies it again).
    fn apply(&self, db: &Transaction<'_>, event: &Envelope<Self::Event>) -> rusqlite::Result<()>;
}

const CHECKPOINTS: &str = "
CREATE TABLE IF NOT EXISTS bookshelf_checkpoints (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    offsets TEXT NOT NULL
);
";

/// The runner of a [`TableView`]: the core's [`Runner`] folding a
/// [`TableFold`]. Made by [`TableFold::follow`].
pub type TableProjection<T, S> = Runner<TableFold<T>, S>;

/// A [`TableView`] in a SQLite file, with its checkpoint in the same file.
pub struct TableFold<T> {
    name: String,
    path: PathBuf,
    view: T,
    db: Connection,
    reader: Tables,
}

fn failed(path: &Path, what: &str, error: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Store(StoreError::Backend(
        format!("{}: {what}: {error}", path.display()).into(),
    ))
}

fn lock(connection: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    connection.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: TableView> TableFold<T> {
    /// View `view`, named `name`, in the SQLite file `path` (which may be
    /// the event store's own file): opens the file and creates the view's
    /// tables.
    ///
    /// # Errors
    /// When the file cannot be opened or the tables created: an error
    /// naming the file.
    pub fn open(name: impl Into<String>, path: impl Into<PathBuf>, view: T) -> Result<Self, ProjectionError> {
        let path = path.into();
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
        let db = connect()?;
        db.execute_batch(CHECKPOINTS)
            .and_then(|()| view.create(&db))
            .map_err(|e| failed(&path, "cannot create the view's tables", e))?;
        let reader = Tables(Arc::new(Mutex::new(connect()?)));
        Ok(TableFold {
            name: name.into(),
            path,
            view,
            db,
            reader,
        })
    }

    /// The runner of this view over `source`, named as the view.
    pub fn follow<S: EventSource>(self, source: S) -> TableProjection<T, S> {
        Runner::folding(self.name.clone(), source, self)
    }
}

#[bookshelf_core::async_trait]
impl<T: TableView> Fold for TableFold<T> {
    type Event = T::Event;
    type Reads = Tables;

    fn reads(&self) -> Tables {
        self.reader.clone()
    }

    async fn restore(&mut self) -> Result<Checkpoint, ProjectionError> {
        let saved: Option<(i64, String)> = self
            .db
            .query_row(
                "SELECT position, offsets FROM bookshelf_checkpoints WHERE name = ?1",
                [&self.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| failed(&self.path, "cannot read the checkpoint", e))?;
        match saved {
            Some((position, offsets)) => Checkpoint::from_saved_columns(position, &offsets)
                .map_err(|e| failed(&self.path, "the checkpoint does not parse", e)),
            None => Ok(Checkpoint::new()),
        }
    }

    /// Applies the batch's events and moves the checkpoint to the batch's
    /// end, in one transaction.
    async fn apply(&mut self, batch: Batch<'_, T::Event>) -> Result<(), ProjectionError> {
        let (position, offsets) = batch.to.to_saved();
        let offsets = serde_json::to_string(&offsets).map_err(|source| ProjectionError::Serialize {
            projection: self.name.clone(),
            source,
        })?;
        let write_error = |e| failed(&self.path, &format!("view {:?} cannot apply a batch", self.name), e);
        let tx = self.db.transaction().map_err(write_error)?;
        let mut applied = Ok(());
        for decoded in batch.events.drain(..) {
            let event = decoded.event;
            let _span = bookshelf_core::trace::event_span(&self.name, &event.event_type, &event.metadata).entered();
            applied = self.view.apply(&tx, &event);
            if applied.is_err() {
                break;
            }
        }
        let committed = applied
            .and_then(|()| {
                tx.execute(
                    "INSERT INTO bookshelf_checkpoints (name, position, offsets) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET position = ?2, offsets = ?3",
                    params![self.name, position.0 as i64, offsets],
                )
            })
            .and_then(|_| tx.commit());
        committed.map_err(write_error)
    }

    /// Nothing to save: every batch was committed with its checkpoint.
    async fn stop(&mut self, _at: &Checkpoint) -> Result<(), ProjectionError> {
        Ok(())
    }
}

/// A [`TableFold`]'s tables, to query: what its runner's handle derefs to.
#[derive(Clone)]
pub struct Tables(Arc<Mutex<Connection>>);

impl Tables {
    /// Answers a query on the view's tables, as of the last committed batch.
    ///
    /// # Errors
    /// What SQLite answers.
    pub fn query<R>(&self, query: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> rusqlite::Result<R> {
        query(&lock(&self.0))
    }
}
