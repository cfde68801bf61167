//! Views kept as PostgreSQL tables, queried with SQL: read models larger
//! than memory, or a replica of the events' state in a database of its own.
//!
//! A [`TableView`] applies each event as rows. Its [`TableFold`] is what
//! the core's one [`Runner`] folds: each batch of events is applied in one
//! transaction that also moves the view's checkpoint (in
//! `bookshelf_checkpoints`, in the view's database), so after a crash the
//! rows and the checkpoint agree and every event is reflected exactly once.
//! The view's database may be the events' own or another one: the runner
//! follows any [`EventSource`].
//!
//! ```
//! use bookshelf_core::{DomainEvent, Envelope, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
//! use bookshelf_postgres::table::{TableFold, TableView};
//! use bookshelf_postgres::{deadpool_postgres::Transaction, tokio_postgres, PostgresStore};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! enum BookEvent { BookAdded { title: String, author: String } }
//! impl DomainEvent for BookEvent {}
//!
//! /// Books by author, as a table.
//! struct ByAuthor;
//!
//! #[bookshelf_core::async_trait]
//! impl TableView for ByAuthor {
//!     type Event = BookEvent;
//!     async fn create(&self, db: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
//!         db.batch_execute("CREATE TABLE IF NOT EXISTS doc_books (id text PRIMARY KEY, title text, author text)").await
//!     }
//!     async fn apply(&self, db: &Transaction<'_>, event: &Envelope<BookEvent>) -> Result<(), tokio_postgres::Error> {
//!         let BookEvent::BookAdded { title, author } = &event.payload;
//!         db.execute(
//!             "INSERT INTO doc_books (id, title, author) VALUES ($1, $2, $3) \
//!              ON CONFLICT (id) DO UPDATE SET title = excluded.title, author = excluded.author",
//!             &[&event.stream_id.entity_id(), title, author],
//!         ).await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL names no PostgreSQL database: run scripts/postgres.sh start")?;
//! let store = PostgresStore::connect(&url).await?;
//! let view = TableFold::open("doc-by-author", &store, ByAuthor).await?
//!     .follow(store.clone())
//!     .start();
//! let added = BookEvent::BookAdded { title: "Emma".into(), author: "Jane Austen".into() };
//! let event = NewEvent::encode(&added, Metadata::default())?;
//! let written = store.append(&StreamId::new("book-doc-1"), ExpectedVersion::Any, vec![event]).await?;
//! view.wait_for(written.last_position.next()).await?;
//! let db = view.client().await?;
//! let row = db.query_one("SELECT title FROM doc_books WHERE id = $1", &[&"doc-1"]).await?;
//! assert_eq!(row.get::<_, &str>(0), "Emma");
//! view.stop().await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use bookshelf_core::runner::{Batch, Decoded, Fold, Runner};
use bookshelf_core::{Checkpoint, DomainEvent, Envelope, EventSource, ProjectionError, StoreError};
use deadpool_postgres::{Object, Transaction};

use crate::server::{retrying, Failed, Server};
use crate::store::PostgresStore;

/// A view whose state is tables: each event is applied as rows.
#[bookshelf_core::async_trait]
pub trait TableView: Send + Sync + 'static {
    /// The events it applies; other types in the log are passed over.
    type Event: DomainEvent;

    /// Creates its tables (and indexes) when missing, in a transaction.
    ///
    /// # Errors
    /// What the server answers.
    async fn create(&self, db: &Transaction<'_>) -> Result<(), tokio_postgres::Error>;

    /// Applies one event, inside the transaction of its batch.
    ///
    /// # Errors
    /// What the server answers: the batch is rolled back and the runner
    /// stops (a restart applies it again).
    async fn apply(&self, db: &Transaction<'_>, event: &Envelope<Self::Event>) -> Result<(), tokio_postgres::Error>;
}

/// The runner of a [`TableView`]: the core's [`Runner`] folding a
/// [`TableFold`]. Made by [`TableFold::follow`].
pub type TableProjection<T, S> = Runner<TableFold<T>, S>;

/// A [`TableView`] in a PostgreSQL database, with its checkpoint in the
/// same database.
pub struct TableFold<T> {
    name: String,
    db: PostgresStore,
    view: T,
    /// The checkpoint as saved by the last batch (or found at start).
    last: Option<Saved>,
}

/// A checkpoint as its row holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Saved {
    position: i64,
    offsets: String,
}

fn failed(server: &Server, what: &str, error: tokio_postgres::Error) -> ProjectionError {
    ProjectionError::Store(server.error(what, error))
}

impl<T: TableView> TableFold<T> {
    /// View `view`, named `name`, in the database of `db` (the events' own
    /// store, or a store on another database): creates the view's tables.
    ///
    /// # Errors
    /// When the server fails or refuses the view's tables: an error naming
    /// the server.
    pub async fn open(name: impl Into<String>, db: &PostgresStore, view: T) -> Result<Self, ProjectionError> {
        let server = db.server();
        let mut client = db.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| failed(server, "cannot begin", e))?;
        view.create(&tx)
            .await
            .map_err(|e| failed(server, "cannot create the view's tables", e))?;
        tx.commit()
            .await
            .map_err(|e| failed(server, "cannot create the view's tables", e))?;
        Ok(TableFold {
            name: name.into(),
            db: db.clone(),
            view,
            last: None,
        })
    }

    /// One attempt at a batch: its events and its checkpoint `to`, in one
    /// transaction, unless the checkpoint shows it done already.
    async fn commit(&self, events: &[Decoded<T::Event>], to: &Saved) -> Result<(), Failed> {
        let server = self.db.server();
        let what = format!("view {:?} cannot apply a batch", self.name);
        let mut client = server.connection(self.db.pool()).await?;
        let tx = client.transaction().await.map_err(|e| server.failed(&what, e))?;
        // Locked: one runner of the view at a time moves it.
        let saved = tx
            .query_opt(
                "SELECT position, offsets FROM bookshelf_checkpoints WHERE name = $1 FOR UPDATE",
                &[&self.name],
            )
            .await
            .map_err(|e| server.failed(&what, e))?
            .map(|row| Saved {
                position: row.get(0),
                offsets: row.get(1),
            });
        if saved.as_ref() == Some(to) {
            return Ok(()); // committed by an attempt whose answer was lost
        }
        if saved != self.last {
            return Err(Failed {
                error: server.refused(format!(
                    "{what}: its checkpoint moved under it (another runner of the same view?): \
                     found {saved:?}, expected {:?}",
                    self.last
                )),
                transient: false,
            });
        }
        for decoded in events {
            let event = &decoded.event;
            let span = bookshelf_core::trace::event_span(&self.name, &event.event_type, &event.metadata);
            let applied = tracing::Instrument::instrument(self.view.apply(&tx, event), span).await;
            applied.map_err(|e| server.failed(&what, e))?;
        }
        tx.execute(
            "INSERT INTO bookshelf_checkpoints (name, position, offsets) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, offsets = excluded.offsets",
            &[&self.name, &to.position, &to.offsets],
        )
        .await
        .map_err(|e| server.failed(&what, e))?;
        tx.commit().await.map_err(|e| server.failed(&what, e))
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
        Tables { db: self.db.clone() }
    }

    async fn restore(&mut self) -> Result<Checkpoint, ProjectionError> {
        let server = self.db.server();
        let client = self.db.client().await?;
        let saved = client
            .query_opt(
                "SELECT position, offsets FROM bookshelf_checkpoints WHERE name = $1",
                &[&self.name],
            )
            .await
            .map_err(|e| failed(server, "cannot read the checkpoint", e))?;
        match saved {
            Some(row) => {
                let (position, text): (i64, String) = (row.get(0), row.get(1));
                let checkpoint = Checkpoint::from_saved_columns(position, &text).map_err(|e| {
                    ProjectionError::Store(
                        server.refused(format!("the checkpoint of {:?} does not parse: {e}", self.name)),
                    )
                })?;
                self.last = Some(Saved {
                    position,
                    offsets: text,
                });
                Ok(checkpoint)
            }
            None => {
                self.last = None;
                Ok(Checkpoint::new())
            }
        }
    }

    /// Applies the batch's events and moves the checkpoint to the batch's
    /// end, in one transaction. While the database is away it waits for it
    /// and tries again; a batch whose commit went through unanswered is
    /// found done by its checkpoint, and not applied twice.
    async fn apply(&mut self, batch: Batch<'_, T::Event>) -> Result<(), ProjectionError> {
        let (position, offsets) = batch.to.to_saved();
        let offsets = serde_json::to_string(&offsets).map_err(|source| ProjectionError::Serialize {
            projection: self.name.clone(),
            source,
        })?;
        let to = Saved {
            position: position.0 as i64,
            offsets,
        };
        let what = format!("view {:?}", self.name);
        let this = &*self;
        let events = &*batch.events;
        retrying(&what, Duration::MAX, || this.commit(events, &to)).await?;
        batch.events.clear();
        self.last = Some(to);
        Ok(())
    }

    /// Nothing to save: every batch was committed with its checkpoint.
    async fn stop(&mut self, _at: &Checkpoint) -> Result<(), ProjectionError> {
        Ok(())
    }
}

/// A [`TableFold`]'s database, to query: what its runner's handle derefs to.
#[derive(Clone, Debug)]
pub struct Tables {
    db: PostgresStore,
}

impl Tables {
    /// A connection to the view's database, to query its tables as of the
    /// last committed batch.
    ///
    /// # Errors
    /// When no connection can be had: an error naming the server.
    pub async fn client(&self) -> Result<Object, StoreError> {
        self.db.client().await
    }
}
