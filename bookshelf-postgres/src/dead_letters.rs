//! Dead letters kept in the store's database (`bookshelf_dead_letters`),
//! beside the views whose runners set them aside.

use std::time::Duration;

use async_trait::async_trait;
use bookshelf_core::{DeadLetter, DeadLetters, KeptDeadLetter, RecordColumns, StoreError};

use crate::server::retrying;
use crate::store::PostgresStore;

/// How long putting a letter waits for a database that is away: the runner
/// stops rather than lose the letter after that (and reads it again when it
/// is started again).
const PATIENCE: Duration = Duration::from_secs(60);

/// The dead letters of a [`PostgresStore`]'s database: each letter a row,
/// numbered in the order set aside, the event as its envelope's JSON (or a
/// record that was no event as its log held it), with the runner's name,
/// where it was and why.
///
/// ```no_run
/// # use bookshelf_core::{ProjectionRunner, View, Envelope, DomainEvent};
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] enum Ev { Read }
/// # impl DomainEvent for Ev {}
/// # #[derive(Default)] struct Reads(u64);
/// # impl View for Reads { type Event = Ev; fn apply(&mut self, _: Envelope<Ev>) { self.0 += 1 } }
/// # async fn run(store: bookshelf_postgres::PostgresStore) -> Result<(), bookshelf_core::StoreError> {
/// let reads = ProjectionRunner::<Reads, _>::new("reads", store.clone())
///     .dead_letters(store.dead_letters())
///     .start();
/// for kept in store.dead_letters().list(Some("reads")).await? {
///     println!("{} at {}: {}", kept.id, kept.letter.location, kept.letter.reason);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresDeadLetters {
    store: PostgresStore,
}

impl PostgresDeadLetters {
    pub(crate) fn new(store: PostgresStore) -> Self {
        PostgresDeadLetters { store }
    }

    /// The letters kept, in the order they were set aside: every runner's,
    /// or `projection`'s only.
    ///
    /// # Errors
    /// Failures of the server, and a kept event that no longer reads as one.
    pub async fn list(&self, projection: Option<&str>) -> Result<Vec<KeptDeadLetter>, StoreError> {
        let server = self.store.server();
        let client = self.store.client().await?;
        let rows = client
            .query(
                "SELECT id, set_aside_at, projection, location, reason, event::text, raw_key, raw_body, \
                 raw_headers::text FROM bookshelf_dead_letters \
                 WHERE $1::text IS NULL OR projection = $1 ORDER BY id",
                &[&projection],
            )
            .await
            .map_err(|e| server.error("cannot read the dead letters", e))?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.get(0);
                let columns = RecordColumns {
                    event: row.get(5),
                    key: row.get(6),
                    body: row.get(7),
                    headers: row.get(8),
                };
                KeptDeadLetter::from_row(id as u64, row.get(1), row.get(2), row.get(3), row.get(4), columns)
                    .map_err(|why| server.refused(format!("dead letter {id}: {why}")))
            })
            .collect()
    }
}

#[async_trait]
impl DeadLetters for PostgresDeadLetters {
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError> {
        let columns = RecordColumns::of(&letter.record);
        let what = format!(
            "{}: setting aside a dead letter of {}",
            self.store.server(),
            letter.projection
        );
        retrying(&what, PATIENCE, || async {
            let server = self.store.server();
            let client = server.connection(self.store.pool()).await?;
            client
                .execute(
                    "INSERT INTO bookshelf_dead_letters \
                     (projection, location, reason, event, raw_key, raw_body, raw_headers) \
                     VALUES ($1, $2, $3, $4::text::json, $5, $6, $7::text::json)",
                    &[
                        &letter.projection,
                        &letter.location,
                        &letter.reason,
                        &columns.event,
                        &columns.key,
                        &columns.body,
                        &columns.headers,
                    ],
                )
                .await
                .map_err(|e| server.failed("cannot set a dead letter aside", e))
                .map(|_| ())
        })
        .await
    }
}
