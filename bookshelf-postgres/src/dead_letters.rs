//! Dead letters kept in the store's database (`bookshelf_dead_letters`),
//! beside the views whose runners set them aside.

use std::time::Duration;

use async_trait::async_trait;
use bookshelf_core::{DeadLetter, DeadLetters, KeptDeadLetter, RecordColumns, Redrive, Redriven, StoreError};

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
        self.read("WHERE $1::text IS NULL OR projection = $1 ORDER BY id", &[&projection])
            .await
    }

    /// The letters the clause `filter` (on the parameters `args`) selects.
    async fn read(
        &self,
        filter: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<KeptDeadLetter>, StoreError> {
        let server = self.store.server();
        let client = self.store.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, set_aside_at, ticket, projection, location, reason, event::text, raw_key, \
                     raw_body, raw_headers::text FROM bookshelf_dead_letters {filter}"
                ),
                args,
            )
            .await
            .map_err(|e| server.error("cannot read the dead letters", e))?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.get(0);
                let ticket: Option<i64> = row.get(2);
                let columns = RecordColumns {
                    event: row.get(6),
                    key: row.get(7),
                    body: row.get(8),
                    headers: row.get(9),
                };
                let (at, runner, location, reason) = (row.get(1), row.get(3), row.get(4), row.get(5));
                KeptDeadLetter::from_row(
                    id as u64,
                    at,
                    ticket.map(|t| t as u64),
                    runner,
                    location,
                    reason,
                    columns,
                )
                .map_err(|why| server.refused(format!("dead letter {id}: {why}")))
            })
            .collect()
    }

    /// Runs `sql` on `args` once the database answers (within
    /// [`PATIENCE`]), saying `what` it was for when it fails.
    async fn write(
        &self,
        what: &str,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let named = format!("{}: {what}", self.store.server());
        retrying(&named, PATIENCE, || async {
            let server = self.store.server();
            let client = server.connection(self.store.pool()).await?;
            client.execute(sql, args).await.map_err(|e| server.failed(what, e))
        })
        .await
    }
}

#[async_trait]
impl DeadLetters for PostgresDeadLetters {
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError> {
        let columns = RecordColumns::of(&letter.record);
        self.write(
            &format!("cannot set aside a dead letter of {}", letter.projection),
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
        .map(|_| ())
    }

    async fn kept_letters(&self, runner: Option<&str>) -> Result<Vec<KeptDeadLetter>, StoreError> {
        self.list(runner).await
    }

    fn redrives(&self) -> bool {
        true
    }

    async fn redrive(&self, runner: &str, which: Redrive) -> Result<usize, StoreError> {
        let letter = match which {
            Redrive::Letter(id) => Some(id as i64),
            Redrive::All => None,
        };
        let server = self.store.server();
        let mut client = self.store.client().await?;
        let failed = |e| server.error(&format!("cannot re-drive the dead letters of {runner}"), e);
        let tx = client.transaction().await.map_err(failed)?;
        // Tickets are taken and committed one request at a time, so that a
        // runner that has seen ticket N never sees a smaller one later.
        tx.execute(
            "SELECT pg_advisory_xact_lock(1114330984, 'bookshelf_redrive_tickets'::regclass::oid::int)",
            &[],
        )
        .await
        .map_err(failed)?;
        let chosen = tx
            .query(
                "SELECT id, ticket FROM bookshelf_dead_letters \
                 WHERE projection = $1 AND ($2::bigint IS NULL OR id = $2) ORDER BY id FOR UPDATE",
                &[&runner, &letter],
            )
            .await
            .map_err(failed)?;
        if let (Some(id), true) = (letter, chosen.is_empty()) {
            return Err(server.refused(format!("no dead letter {id} of {runner}")));
        }
        let mut queued = 0;
        for row in chosen.iter().filter(|row| row.get::<_, Option<i64>>(1).is_none()) {
            let id: i64 = row.get(0);
            tx.execute(
                "UPDATE bookshelf_dead_letters SET ticket = nextval('bookshelf_redrive_tickets') WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(failed)?;
            queued += 1;
        }
        tx.commit().await.map_err(failed)?;
        Ok(queued)
    }

    async fn queued(&self, runner: &str, after: u64) -> Result<Vec<Redriven>, StoreError> {
        let kept = self
            .read(
                "WHERE projection = $1 AND ticket > $2 ORDER BY ticket",
                &[&runner, &(after as i64)],
            )
            .await?;
        Ok(kept.into_iter().filter_map(|kept| kept.queued_after(after)).collect())
    }

    async fn put_back(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        self.write(
            &format!("cannot put dead letter {id} back"),
            "UPDATE bookshelf_dead_letters SET ticket = NULL, reason = $2, set_aside_at = now() WHERE id = $1",
            &[&(id as i64), &reason],
        )
        .await
        .map(|_| ())
    }

    async fn forget(&self, runner: &str, through: Option<u64>) -> Result<(), StoreError> {
        let through = through.map(|t| t as i64);
        self.write(
            &format!("cannot forget dead letters of {runner}"),
            "DELETE FROM bookshelf_dead_letters WHERE projection = $1 AND ($2::bigint IS NULL OR ticket <= $2)",
            &[&runner, &through],
        )
        .await
        .map(|_| ())
    }
}
