//! The PostgreSQL event store, and its subscriptions.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bookshelf_core::store::{AppendOutcome, EventStore, ExpectedVersion, StoreError, Subscription};
use bookshelf_core::{EventId, EventType, NewEvent, Position, RecordedEvent, RetryPolicy, StreamId, Version};
use deadpool_postgres::{Pool, Transaction};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::append::{self, Append, Writer};
use crate::saved::{PostgresSnapshots, PostgresViewStore};
use crate::schema::{self, SCHEMA_VERSION};
use crate::server::{retrying, Failed, Server};

/// A query of whole events: the columns [`event_of`] reads, in its order,
/// then `$rest`.
macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, \
             metadata::text, payload::text FROM bookshelf_events ",
            $rest
        )
    };
}

/// How often a subscription at the end of the log looks for new events when
/// no notification came: the bound on how late a live event is delivered
/// when notifications are lost (the listening connection dropped, say).
pub const POLL: Duration = Duration::from_millis(250);

/// How a [`PostgresStore`] connects.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// The most connections its pool opens (default 16). The store also
    /// keeps one connection that listens for new events.
    pub pool_size: usize,
    /// Whether [`PostgresStore::connect_with`] brings the schema up to date
    /// (the default) or only checks that it is.
    pub migrate: bool,
    /// The PostgreSQL schema (namespace) the store's tables are in, made
    /// when missing; `None` for the connection's `search_path` (usually
    /// `public`). Stores in different schemas of one database are apart:
    /// each has its own log, views and notifications.
    pub schema: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pool_size: 16,
            migrate: true,
            schema: None,
        }
    }
}

impl Options {
    /// The default options.
    pub fn new() -> Self {
        Options::default()
    }

    /// At most `size` pooled connections.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The store's tables in schema `name` (lower-case letters, digits and
    /// `_`), made when missing.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = Some(name.into());
        self
    }

    /// Only check the schema, never change it: a database that is not
    /// migrated is an error (see [`migrate`](crate::migrate)).
    pub fn without_migrating(mut self) -> Self {
        self.migrate = false;
        self
    }
}

/// An event store in a PostgreSQL database. See the [crate docs](crate) for
/// its guarantees and how it keeps them.
///
/// Cloning gives another handle to the same store (the same pool).
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
    server: Server,
    pool: Pool,
    writer: Writer,
    /// Told of each commit by the listener, once one listens.
    tell: watch::Sender<()>,
    /// The task listening for commits: started by the first subscription,
    /// so that a store that only writes keeps no listening connection and
    /// the server signals nobody as it commits.
    listener: OnceLock<AbortOnDrop>,
}

/// Ends a background task with the store.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.shared.server.to_string())
            .finish()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL or a
    /// key=value connection string) and brings its schema up to date.
    ///
    /// # Errors
    /// A [`StoreError::Backend`] naming the server and database when it
    /// cannot be reached, refuses the credentials, has no such database,
    /// or holds a schema written by a newer Bookshelf (nothing is changed
    /// then).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        PostgresStore::connect_with(url, Options::default()).await
    }

    /// Connects with `options`.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); with
    /// [`without_migrating`](Options::without_migrating), also a schema
    /// older than this build.
    pub async fn connect_with(url: &str, options: Options) -> Result<Self, StoreError> {
        let server = Server::parse(url, options.schema.as_deref())?;
        let pool = server.pool(options.pool_size)?;
        {
            let mut client = server.get(&pool).await?;
            if options.migrate {
                schema::migrate(&mut client, &server).await?;
            } else {
                let found = schema::version(&client, &server).await?;
                if found != SCHEMA_VERSION {
                    return Err(server.refused(format!(
                        "its schema is at version {found} and this build needs {SCHEMA_VERSION}: migrate it first"
                    )));
                }
            }
        }
        let writer = Writer::start(server.clone(), pool.clone());
        bookshelf_core::telemetry::appended("postgres", 0);
        let (tell, _) = watch::channel(());
        Ok(PostgresStore {
            shared: Arc::new(Shared {
                server,
                pool,
                writer,
                tell,
                listener: OnceLock::new(),
            }),
        })
    }

    /// The pool of connections to the database, for your own queries and
    /// transactions (see [`append_in`](Self::append_in)).
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// The snapshots kept in this database.
    pub fn snapshots(&self) -> PostgresSnapshots {
        PostgresSnapshots::new(self.clone())
    }

    /// The dead letters kept in this database: a runner's sink, and their
    /// list.
    pub fn dead_letters(&self) -> crate::PostgresDeadLetters {
        crate::PostgresDeadLetters::new(self.clone())
    }

    /// The saved state and checkpoint of view `name`, in this database.
    pub fn view_store(&self, name: impl Into<String>) -> PostgresViewStore {
        PostgresViewStore::new(self.clone(), name.into())
    }

    /// The checkpoints saved in this store's schema, by name within each
    /// kind: views' (`bookshelf_views`) and table views'
    /// (`bookshelf_checkpoints`), for tools that list them.
    ///
    /// # Errors
    /// Failures of the server, and a checkpoint that does not decode.
    pub async fn saved_checkpoints(&self) -> Result<Vec<bookshelf_core::SavedCheckpoint>, StoreError> {
        let rows = self
            .rows(
                "SELECT 'view', name, checkpoint, offsets FROM bookshelf_views \
                 UNION ALL SELECT 'table', name, position, offsets FROM bookshelf_checkpoints \
                 ORDER BY 1 DESC, 2",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.get(1);
                let checkpoint =
                    bookshelf_core::Checkpoint::from_saved_columns(row.get(2), row.get(3)).map_err(|e| {
                        self.shared
                            .server
                            .refused(format!("the checkpoint of {name} does not decode: {e}"))
                    })?;
                Ok(bookshelf_core::SavedCheckpoint {
                    kind: if row.get::<_, &str>(0) == "view" {
                        "view"
                    } else {
                        "table"
                    },
                    checkpoint,
                    name,
                })
            })
            .collect()
    }

    /// Appends `events` to `stream` inside your own transaction `tx`, under
    /// the same rule as every append (see the crate docs): they are stored
    /// if and when `tx` commits, together with whatever else it wrote.
    ///
    /// The log's head stays locked until `tx` ends, so every other append
    /// waits for it: commit or roll back promptly. A transaction left idle
    /// is ended by the server after
    /// [`IDLE_IN_TRANSACTION`](crate::IDLE_IN_TRANSACTION).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] (then roll `tx` back or go on without the
    /// events), [`StoreError::EmptyAppend`], and failures of the server.
    pub async fn append_in(
        &self,
        tx: &Transaction<'_>,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend(stream.clone()));
        }
        let append = Append {
            stream: stream.clone(),
            expected,
            events,
        };
        match append::append_all(tx, vec![append], self.shared.server.channel()).await {
            Ok(outcomes) => append::only(&self.shared.server, outcomes),
            Err(append::Failure::Nothing(e) | append::Failure::Unknown(e)) => {
                Err(self.shared.server.error("cannot append", e))
            }
        }
    }

    /// A receiver told of each commit, the listener started if it was not.
    fn listening(&self) -> watch::Receiver<()> {
        let shared = &self.shared;
        shared
            .listener
            .get_or_init(|| AbortOnDrop(tokio::spawn(listen(shared.server.clone(), shared.tell.clone()))));
        shared.tell.subscribe()
    }

    pub(crate) fn server(&self) -> &Server {
        &self.shared.server
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.shared.server.get(&self.shared.pool).await
    }

    /// The rows `sql` answers with `args`, on a pooled connection, its
    /// statement prepared once per connection.
    async fn rows(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, Failed> {
        let server = &self.shared.server;
        let client = server.connection(&self.shared.pool).await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| server.failed("cannot read", e))?;
        client
            .query(&statement, args)
            .await
            .map_err(|e| server.failed("cannot read", e))
    }

    async fn read_events(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Arc<RecordedEvent>>, Failed> {
        self.rows(sql, args)
            .await?
            .iter()
            .map(|row| shared_event_of(&self.shared.server, row))
            .collect()
    }

    /// The one number a query of one row answers (`None` for SQL's NULL).
    async fn query_i64(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<i64>, Failed> {
        let rows = self.rows(sql, args).await?;
        let row = rows.first().ok_or_else(|| Failed {
            error: self.shared.server.refused(format!("no row answered {sql:?}")),
            transient: false,
        })?;
        Ok(row.get(0))
    }
}

/// The event a row of `bookshelf_events` holds (selected as
/// `select_events!`): the one place rows become events.
fn event_of(row: &tokio_postgres::Row) -> Result<RecordedEvent, String> {
    let position: i64 = row.get(0);
    let metadata: &str = row.get(7);
    let payload: String = row.get(8);
    let broken = |what: &str, e: serde_json::Error| format!("the event at position {position} has {what}: {e}");
    Ok(RecordedEvent {
        event_id: EventId(row.get(3)),
        stream_id: StreamId::new(row.get::<_, &str>(1)),
        version: Version(row.get::<_, i64>(2) as u64),
        position: Position(position as u64),
        recorded_at: row.get(6),
        event_type: EventType::from(row.get::<_, &str>(4)),
        schema_version: row.get::<_, i32>(5) as u32,
        metadata: bookshelf_core::Metadata::from_json(metadata)
            .map_err(|e| broken("metadata that does not decode", e))?,
        payload: serde_json::value::RawValue::from_string(payload)
            .map_err(|e| broken("a payload that is not JSON", e))?,
    })
}

/// [`event_of`] for a reader: shared, and a row that is not an event a
/// failure that retrying will not mend.
fn shared_event_of(server: &Server, row: &tokio_postgres::Row) -> Result<Arc<RecordedEvent>, Failed> {
    event_of(row).map(Arc::new).map_err(|why| Failed {
        error: server.refused(why),
        transient: false,
    })
}

/// Listens for new events on a connection of its own, and wakes the
/// subscriptions; connects again, with backoff, when the connection drops.
async fn listen(server: Server, tell: watch::Sender<()>) {
    let retry = RetryPolicy::forever(Duration::from_millis(100), Duration::from_secs(5));
    let mut delays = retry.delays();
    loop {
        match server.config().connect(NoTls).await {
            Ok((client, mut connection)) => {
                let notices = tell.clone();
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let driver = tokio::spawn(async move {
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => notices.send_modify(|_| {}),
                            Ok(_) => {}
                            Err(e) => return Some(crate::server::explain(&e)),
                        }
                    }
                    None
                });
                match client.batch_execute(&format!("LISTEN {}", server.channel())).await {
                    Ok(()) => {
                        delays = retry.delays();
                        // Whatever came while no one listened.
                        tell.send_modify(|_| {});
                        let ended = driver.await.ok().flatten();
                        tracing::warn!(database = %server, error = ?ended, "the listening connection ended; connecting again");
                    }
                    Err(e) => {
                        driver.abort();
                        tracing::warn!(database = %server, error = %crate::server::explain(&e), "cannot listen for new events");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(database = %server, error = %crate::server::explain(&e), "cannot connect to listen for new events");
            }
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    type Subscription = PostgresSubscription;

    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend(stream.clone()));
        }
        self.shared
            .writer
            .append(Append {
                stream: stream.clone(),
                expected,
                events,
            })
            .await
    }

    async fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        Ok(self
            .read_events(
                select_events!("WHERE stream = $1 AND version >= $2 ORDER BY version"),
                &[&stream.as_str(), &(from.0 as i64)],
            )
            .await?)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        let version = self
            .query_i64(
                "SELECT MAX(version) FROM bookshelf_events WHERE stream = $1",
                &[&stream.as_str()],
            )
            .await?;
        Ok(Version(version.unwrap_or(0) as u64))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        let head = self
            .query_i64("SELECT max(position) + 1 FROM bookshelf_events", &[])
            .await?;
        Ok(Position(head.unwrap_or(0) as u64))
    }

    async fn streams(&self) -> Result<Vec<(StreamId, Version)>, StoreError> {
        Ok(self
            .rows(
                "SELECT stream, MAX(version) FROM bookshelf_events GROUP BY stream ORDER BY stream COLLATE \"C\"",
                &[],
            )
            .await?
            .iter()
            .map(|row| {
                (
                    StreamId::new(row.get::<_, &str>(0)),
                    Version(row.get::<_, i64>(1) as u64),
                )
            })
            .collect())
    }

    async fn find_idempotency_key(&self, stream: &StreamId, key: &str) -> Result<Option<Version>, StoreError> {
        let version = self
            .query_i64(
                "SELECT MIN(version) FROM bookshelf_events WHERE stream = $1 AND idempotency_key = $2",
                &[&stream.as_str(), &key],
            )
            .await?;
        Ok(version.map(|v| Version(v as u64)))
    }

    async fn subscribe(&self, from: Position) -> Result<PostgresSubscription, StoreError> {
        Ok(PostgresSubscription {
            store: self.clone(),
            told: self.listening(),
            next: from.0,
            ahead: None,
        })
    }
}

#[async_trait]
impl bookshelf_core::EventSource for PostgresStore {
    async fn follow(&self, from: &bookshelf_core::Checkpoint) -> Result<Box<dyn bookshelf_core::Follower>, StoreError> {
        bookshelf_core::GlobalLog(self.clone()).follow(from).await
    }
}

/// A subscription to a [`PostgresStore`]: a cursor over its log, woken by
/// the store's notifications, and looking every [`POLL`] without them.
pub struct PostgresSubscription {
    store: PostgresStore,
    told: watch::Receiver<()>,
    next: u64,
    /// While catching up: the log from `next` on, streamed by one query
    /// and read into events in the background, so that the database sends
    /// rows while the reader uses the ones before.
    ahead: Option<ReadAhead>,
}

/// The most events one streamed read of the log holds: a reader catching
/// up starts a new query this often.
const STREAMED: i64 = 50_000;

/// How many events a streamed read hands over at a time.
const CHUNK: usize = 256;

/// How many chunks a streamed read keeps ready for its reader: with
/// [`CHUNK`], the bound on what a subscription holds in memory beyond its
/// batch.
const READY: usize = 8;

/// A streamed read of the log, from the subscription's `next` position on.
struct ReadAhead {
    chunks: mpsc::Receiver<Result<Vec<Arc<RecordedEvent>>, Failed>>,
    /// What is left of the last chunk received.
    left: std::collections::VecDeque<Arc<RecordedEvent>>,
    /// How many events the reader received: when the read ends at
    /// [`STREAMED`], the log may go on after it.
    received: i64,
    task: JoinHandle<()>,
}

impl ReadAhead {
    /// Starts reading the log from `from`, at most [`STREAMED`] events.
    fn start(store: &PostgresStore, from: u64) -> ReadAhead {
        let (sender, chunks) = mpsc::channel(READY);
        let store = store.clone();
        let task = tokio::spawn(async move {
            if let Err(failed) = stream_events(&store, from, &sender).await {
                let _ = sender.send(Err(failed)).await;
            }
        });
        ReadAhead {
            chunks,
            left: Default::default(),
            received: 0,
            task,
        }
    }
}

/// Sends the events of the log from `from` on (at most [`STREAMED`]) to
/// `sender` in chunks, as one query streams them.
async fn stream_events(
    store: &PostgresStore,
    from: u64,
    sender: &mpsc::Sender<Result<Vec<Arc<RecordedEvent>>, Failed>>,
) -> Result<(), Failed> {
    let server = &store.shared.server;
    let client = server.connection(&store.shared.pool).await?;
    let statement = client
        .prepare_cached(select_events!("WHERE position >= $1 ORDER BY position LIMIT $2"))
        .await
        .map_err(|e| server.failed("cannot read", e))?;
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&(from as i64), &STREAMED];
    let rows = client
        .query_raw(&statement, args)
        .await
        .map_err(|e| server.failed("cannot read", e))?;
    futures_util::pin_mut!(rows);
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut ended = false;
    while !ended {
        match rows.next().await {
            Some(row) => {
                let row = row.map_err(|e| server.failed("cannot read", e))?;
                chunk.push(shared_event_of(server, &row)?);
            }
            None => ended = true,
        }
        if chunk.len() == CHUNK || (ended && !chunk.is_empty()) {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if sender.send(Ok(full)).await.is_err() {
                // The subscription is gone.
                break;
            }
        }
    }
    Ok(())
}

impl Drop for PostgresSubscription {
    fn drop(&mut self) {
        self.stop_streaming();
    }
}

impl std::fmt::Debug for PostgresSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSubscription")
            .field("next", &self.next)
            .finish()
    }
}

/// A page of the log: at most `max` events from position `from` on.
async fn page(store: &PostgresStore, from: u64, max: i64) -> Result<Vec<Arc<RecordedEvent>>, Failed> {
    let from = from as i64;
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&from, &max];
    store
        .read_events(select_events!("WHERE position >= $1 ORDER BY position LIMIT $2"), &args)
        .await
}

impl PostgresSubscription {
    /// Up to `max` events from the streamed read, when one is under way and
    /// has them; `None` when the subscription should read a page instead
    /// (the stream ended or failed).
    async fn take_streamed(&mut self, batch: &mut Vec<Arc<RecordedEvent>>, max: usize) -> Option<()> {
        let ahead = self.ahead.as_mut()?;
        if ahead.left.is_empty() {
            // Received in place: if this call is dropped, what is not
            // received yet is still there for the next one.
            match ahead.chunks.recv().await {
                Some(Ok(chunk)) => {
                    ahead.received += chunk.len() as i64;
                    ahead.left.extend(chunk);
                }
                // Read again, by pages, from the first event not had.
                Some(Err(_)) => {
                    self.stop_streaming();
                    return None;
                }
                None => {}
            }
        }
        if !ahead.left.is_empty() {
            let take = max.min(ahead.left.len());
            batch.extend(ahead.left.drain(..take));
            if let Some(last) = batch.last() {
                self.next = last.position.0 + 1;
            }
            return Some(());
        }
        // The stream ended: go on streaming if it ended at its bound, else
        // the reader has caught up.
        let full = ahead.received == STREAMED;
        self.stop_streaming();
        if full {
            self.ahead = Some(ReadAhead::start(&self.store, self.next));
            return Box::pin(self.take_streamed(batch, max)).await;
        }
        None
    }

    fn stop_streaming(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            ahead.task.abort();
        }
    }
}

#[async_trait]
impl Subscription for PostgresSubscription {
    async fn next_batch(&mut self, batch: &mut Vec<Arc<RecordedEvent>>, max: usize) -> Result<(), StoreError> {
        batch.clear();
        let max = max.max(1);
        loop {
            // Seen before the look, so that a commit after it wakes the wait.
            self.told.borrow_and_update();
            if self.take_streamed(batch, max).await.is_some() {
                return Ok(());
            }
            // While the database is away the subscription waits for it,
            // where it stands: nothing to read is lost.
            let events = retrying("a subscription", Duration::MAX, || {
                page(&self.store, self.next, max as i64)
            })
            .await?;
            if let Some(last) = events.last() {
                self.next = last.position.0 + 1;
                if events.len() == max {
                    // Behind: stream the rest.
                    self.ahead = Some(ReadAhead::start(&self.store, self.next));
                }
                batch.extend(events);
                return Ok(());
            }
            let _ = tokio::time::timeout(POLL, self.told.changed()).await;
        }
    }

    fn position(&self) -> Position {
        Position(self.next)
    }
}
