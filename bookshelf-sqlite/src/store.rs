//! The SQLite event store: the durable embedded default. Events, snapshots
//! and saved views in one file, with transactions, and no server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::watch;

use bookshelf_core::store::{AppendOutcome, EventStore, ExpectedVersion, StoreError, Subscription};
use bookshelf_core::{
    Envelope, NewEvent, Position, RecordedEvent, Snapshot, SnapshotStore, StoredView, StreamId, Version, ViewStore,
    ViewStoreError, IDEMPOTENCY_KEY,
};

/// Marks a file as Bookshelf's (SQLite's `application_id`: "BkSh").
const APPLICATION_ID: i64 = 0x426b_5368;
/// The layout of the tables below (SQLite's `user_version`).
const LAYOUT: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    idempotency_key TEXT,
    body TEXT NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX IF NOT EXISTS events_by_key ON events (stream, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS snapshots (
    stream TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    taken_at TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS views (
    name TEXT PRIMARY KEY,
    checkpoint INTEGER NOT NULL,
    offsets TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    projection TEXT NOT NULL,
    location TEXT NOT NULL,
    reason TEXT NOT NULL,
    set_aside_at TEXT NOT NULL,
    event TEXT,
    raw_key BLOB,
    raw_body BLOB,
    raw_headers TEXT
);
CREATE TABLE IF NOT EXISTS redrive_tickets (
    last INTEGER NOT NULL
);
";

/// What files made before the re-drive queue lack: added once, in place
/// (older code names its columns, so it still reads and writes the file).
const REDRIVE_COLUMN: &str = "ALTER TABLE dead_letters ADD COLUMN ticket INTEGER";

/// How far a commit is made durable: SQLite's `synchronous` setting, in
/// write-ahead-log mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = NORMAL`: a commit survives the process dying at any
    /// moment (SIGKILL, a panic); a power cut or an OS crash may lose the
    /// last commits, never corrupt the file. The default.
    #[default]
    Process,
    /// `synchronous = FULL`: a commit also survives a power cut, at the cost
    /// of a sync of the log on every commit.
    PowerLoss,
}

/// Why a file could not serve: an error naming the file.
fn failed(path: &Path, what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{}: {what}: {error}", path.display()).into())
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A connection holds no state of ours that a panic could tear; an open
    // transaction is rolled back when its guard drops.
    connection.lock().unwrap_or_else(|p| p.into_inner())
}

/// An event store in one SQLite file.
///
/// Besides the guarantees of every [`EventStore`], it keeps, like the
/// [`InMemoryStore`](bookshelf_core::InMemoryStore), **one global order**: every
/// event gets the next position of one log, assigned inside the append's
/// write transaction, so readers never see a later position before an
/// earlier one, and a subscription hands over from stored to live events
/// with no gap and no repeat.
///
/// * **Durable.** An append is answered once its transaction is committed
///   (write-ahead log; see [`Durability`] for what a commit survives).
/// * **Several processes on one file.** Appends take SQLite's write lock
///   (waiting up to 10 s for it), so the expected-version check and the
///   insert are one step across processes too; subscriptions see the
///   other processes' events within 100 ms.
/// * **Bad files are errors.** A file that is not SQLite, or is another
///   program's database, or is truncated or corrupt where it is read, is a
///   [`StoreError::Backend`] naming the file; nothing is overwritten.
///
/// The same file holds snapshots ([`SqliteStore::snapshots`]) and saved
/// views ([`SqliteStore::view_store`]). Cloning gives another handle to
/// the same store.
///
/// ```
/// use bookshelf_core::{EventStore, ExpectedVersion, NewEvent, Metadata, EventId, StreamId, Version};
/// use bookshelf_sqlite::SqliteStore;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("events.sqlite");
/// let event = || NewEvent {
///     event_id: EventId::new(),
///     event_type: "BookAdded".into(),
///     schema_version: 1,
///     metadata: Metadata::default(),
///     payload: serde_json::value::RawValue::from_string(r#"{"title":"Dune"}"#.into()).unwrap(),
/// };
/// let store = SqliteStore::open(&path)?;
/// store.append(&StreamId::new("book-1"), ExpectedVersion::NoStream, vec![event()]).await?;
/// drop(store);
///
/// // Opened again, it has kept what it was given.
/// let store = SqliteStore::open(&path)?;
/// assert_eq!(store.stream_version(&StreamId::new("book-1")).await?, Version(1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Bumped after every append of this process.
    appended: watch::Sender<()>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.shared.path).finish()
    }
}

/// How often a subscription at the end of the log looks for events that
/// other processes appended.
const POLL: Duration = Duration::from_millis(100);

impl SqliteStore {
    /// Opens the store in `path`, creating the file (and its directory) when
    /// missing, with [`Durability::Process`].
    ///
    /// # Errors
    /// A [`StoreError::Backend`] naming the file when it cannot be created
    /// or opened, is not a SQLite database, belongs to another program, or
    /// comes from a newer Bookshelf.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        SqliteStore::open_with(path, Durability::default())
    }

    /// Opens the store in `path` with the given durability.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| failed(path, "cannot create its directory", e))?;
        }
        let writer = connect(path, durability)?;
        prepare(&writer, path)?;
        let reader = connect(path, durability)?;
        bookshelf_core::telemetry::appended("sqlite", 0);
        Ok(SqliteStore {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                appended: watch::Sender::new(()),
            }),
        })
    }

    /// The file the store is in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The snapshots kept in this store's file.
    pub fn snapshots(&self) -> SqliteSnapshots {
        SqliteSnapshots { store: self.clone() }
    }

    /// The saved state and checkpoint of view `name`, in this store's file.
    pub fn view_store(&self, name: impl Into<String>) -> SqliteViewStore {
        SqliteViewStore {
            store: self.clone(),
            name: name.into(),
        }
    }

    /// The dead letters kept in this file: a runner's sink, and their list.
    pub fn dead_letters(&self) -> SqliteDeadLetters {
        SqliteDeadLetters { store: self.clone() }
    }

    fn error(&self, what: &str, error: impl std::fmt::Display) -> StoreError {
        failed(&self.shared.path, what, error)
    }

    fn read_events(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let connection = lock(&self.shared.reader);
        let mut statement = connection
            .prepare_cached(sql)
            .map_err(|e| self.error("cannot read", e))?;
        let rows = statement
            .query_map(args, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.error("cannot read", e))?;
        let mut events = Vec::new();
        for row in rows {
            let (position, body) = row.map_err(|e| self.error("cannot read", e))?;
            let mut event = RecordedEvent::from_json(&body)
                .map_err(|e| self.error(&format!("the event at position {position} does not decode"), e))?;
            event.position = Position(position as u64);
            events.push(Arc::new(event));
        }
        Ok(events)
    }
}

/// A connection to `path`, in write-ahead-log mode.
fn connect(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let connection = Connection::open(path).map_err(|e| failed(path, "cannot open", e))?;
    let synchronous = match durability {
        Durability::Process => "NORMAL",
        Durability::PowerLoss => "FULL",
    };
    connection
        .busy_timeout(Duration::from_secs(10))
        .and_then(|()| {
            connection.execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};"
            ))
        })
        .map_err(|e| failed(path, "not a usable SQLite database", e))?;
    Ok(connection)
}

/// Checks that `path` is a Bookshelf file of a known layout (or a new one),
/// and creates the tables.
fn prepare(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let read = |pragma: &str| -> Result<i64, StoreError> {
        connection
            .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .map_err(|e| failed(path, "not a SQLite database", e))
    };
    let (application, layout) = (read("application_id")?, read("user_version")?);
    let tables: i64 = connection
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| failed(path, "not a SQLite database, or a damaged one", e))?;
    match (application, layout) {
        (APPLICATION_ID, LAYOUT) => {}
        (APPLICATION_ID, newer) if newer > LAYOUT => {
            return Err(failed(
                path,
                "written by a newer Bookshelf",
                format!("layout {newer}, this one reads {LAYOUT}"),
            ))
        }
        (0, _) if tables == 0 => {
            connection
                .execute_batch(&format!(
                    "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {LAYOUT};"
                ))
                .map_err(|e| failed(path, "cannot write", e))?;
        }
        (other, _) => {
            return Err(failed(
                path,
                "another program's database, not a Bookshelf store",
                format!("application id {other:#x}, {tables} schema entries"),
            ))
        }
    }
    connection
        .execute_batch(SCHEMA)
        .map_err(|e| failed(path, "cannot create the tables", e))?;
    let has_tickets: bool = connection
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('dead_letters') WHERE name = 'ticket')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| failed(path, "cannot read the tables", e))?;
    if !has_tickets {
        connection
            .execute_batch(REDRIVE_COLUMN)
            .map_err(|e| failed(path, "cannot add the re-drive queue", e))?;
    }
    Ok(())
}

#[async_trait]
impl EventStore for SqliteStore {
    type Subscription = SqliteSubscription;

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
        let outcome = {
            let mut connection = lock(&self.shared.writer);
            let write = |e: rusqlite::Error| self.error("cannot append", e);
            // IMMEDIATE: the write lock is taken before the version is read,
            // so no other writer (of any process) slips in between.
            let tx = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(write)?;
            let actual: i64 = tx
                .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?1")
                .and_then(|mut s| s.query_row([stream.as_str()], |r| r.get(0)))
                .map_err(write)?;
            let actual = Version(actual as u64);
            if !expected.admits(actual) {
                return Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual,
                });
            }
            let first: i64 = tx
                .prepare_cached("SELECT COALESCE(MAX(position) + 1, 0) FROM events")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(write)?;
            let mut version = actual;
            let mut position = first;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO events (position, stream, version, idempotency_key, body) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(write)?;
                for event in events {
                    version = version.next();
                    let key = event.metadata.extra.get(IDEMPOTENCY_KEY).cloned();
                    let recorded = Envelope {
                        event_id: event.event_id,
                        stream_id: stream.clone(),
                        version,
                        position: Position(position as u64),
                        recorded_at,
                        event_type: event.event_type,
                        schema_version: event.schema_version,
                        metadata: event.metadata,
                        payload: event.payload,
                    };
                    insert
                        .execute(params![
                            position,
                            stream.as_str(),
                            version.0 as i64,
                            key,
                            recorded.to_json()
                        ])
                        .map_err(write)?;
                    position += 1;
                }
            }
            tx.commit().map_err(write)?;
            AppendOutcome {
                version,
                first_position: Position(first as u64),
                last_position: Position(position as u64 - 1),
            }
        };
        self.shared.appended.send_modify(|_| {});
        bookshelf_core::telemetry::appended(
            "sqlite",
            (outcome.last_position.0 + 1 - outcome.first_position.0) as usize,
        );
        Ok(outcome)
    }

    async fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        self.read_events(
            "SELECT position, body FROM events WHERE stream = ?1 AND version >= ?2 ORDER BY version",
            params![stream.as_str(), from.0 as i64],
        )
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        let connection = lock(&self.shared.reader);
        let version: i64 = connection
            .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?1")
            .and_then(|mut s| s.query_row([stream.as_str()], |r| r.get(0)))
            .map_err(|e| self.error("cannot read", e))?;
        Ok(Version(version as u64))
    }

    async fn streams(&self) -> Result<Vec<(StreamId, Version)>, StoreError> {
        let connection = lock(&self.shared.reader);
        let mut statement = connection
            .prepare_cached("SELECT stream, MAX(version) FROM events GROUP BY stream ORDER BY stream")
            .map_err(|e| self.error("cannot read", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    StreamId::new(row.get::<_, String>(0)?),
                    Version(row.get::<_, i64>(1)? as u64),
                ))
            })
            .map_err(|e| self.error("cannot read", e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.error("cannot read", e))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        let connection = lock(&self.shared.reader);
        let head: i64 = connection
            .prepare_cached("SELECT COALESCE(MAX(position) + 1, 0) FROM events")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.error("cannot read", e))?;
        Ok(Position(head as u64))
    }

    async fn find_idempotency_key(&self, stream: &StreamId, key: &str) -> Result<Option<Version>, StoreError> {
        let connection = lock(&self.shared.reader);
        let version: Option<i64> = connection
            .prepare_cached("SELECT MIN(version) FROM events WHERE stream = ?1 AND idempotency_key = ?2")
            .and_then(|mut s| s.query_row([stream.as_str(), key], |r| r.get(0)))
            .map_err(|e| self.error("cannot read", e))?;
        Ok(version.map(|v| Version(v as u64)))
    }

    async fn subscribe(&self, from: Position) -> Result<SqliteSubscription, StoreError> {
        Ok(SqliteSubscription {
            store: self.clone(),
            appended: self.shared.appended.subscribe(),
            next: from.0,
        })
    }
}

#[async_trait]
impl bookshelf_core::source::EventSource for SqliteStore {
    async fn follow(
        &self,
        from: &bookshelf_core::source::Checkpoint,
    ) -> Result<Box<dyn bookshelf_core::source::Follower>, StoreError> {
        bookshelf_core::source::GlobalLog(self.clone()).follow(from).await
    }
}

/// A subscription to a [`SqliteStore`]: a cursor over its log.
pub struct SqliteSubscription {
    store: SqliteStore,
    appended: watch::Receiver<()>,
    next: u64,
}

impl std::fmt::Debug for SqliteSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSubscription").field("next", &self.next).finish()
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn next_batch(&mut self, batch: &mut Vec<Arc<RecordedEvent>>, max: usize) -> Result<(), StoreError> {
        batch.clear();
        let max = max.max(1) as i64;
        // As in the in-memory subscription: a reader behind yields now and then.
        tokio::task::coop::consume_budget().await;
        loop {
            // Seen before the look, so that an append after it wakes the wait.
            self.appended.borrow_and_update();
            let events = self.store.read_events(
                "SELECT position, body FROM events WHERE position >= ?1 ORDER BY position LIMIT ?2",
                params![self.next as i64, max],
            )?;
            if let Some(last) = events.last() {
                self.next = last.position.0 + 1;
                batch.extend(events);
                return Ok(());
            }
            // Woken by this process's appends, or after a while for those
            // of other processes.
            let _ = tokio::time::timeout(POLL, self.appended.changed()).await;
        }
    }

    fn position(&self) -> Position {
        Position(self.next)
    }
}

/// The snapshots in a [`SqliteStore`]'s file.
#[derive(Clone, Debug)]
pub struct SqliteSnapshots {
    store: SqliteStore,
}

#[async_trait]
impl SnapshotStore for SqliteSnapshots {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let connection = lock(&self.store.shared.reader);
        let row: Option<(i64, String, String)> = connection
            .prepare_cached("SELECT version, taken_at, state FROM snapshots WHERE stream = ?1")
            .and_then(|mut s| {
                s.query_row([stream.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(|e| self.store.error("cannot read snapshots", e))?;
        let Some((version, taken_at, state)) = row else {
            return Ok(None);
        };
        let state = serde_json::from_str(&state).map_err(|e| self.store.error("a snapshot does not parse", e))?;
        let taken_at: DateTime<Utc> = bookshelf_core::timestamp::parse(&taken_at)
            .ok_or_else(|| self.store.error("a snapshot's time does not parse", &taken_at))?;
        Ok(Some(Snapshot {
            stream_id: stream.clone(),
            version: Version(version as u64),
            state,
            taken_at,
        }))
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let connection = lock(&self.store.shared.writer);
        connection
            .prepare_cached(
                "INSERT INTO snapshots (stream, version, taken_at, state) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (stream) DO UPDATE SET version = ?2, taken_at = ?3, state = ?4 \
                 WHERE excluded.version >= snapshots.version",
            )
            .and_then(|mut s| {
                s.execute(params![
                    snapshot.stream_id.as_str(),
                    snapshot.version.0 as i64,
                    snapshot.taken_at.to_rfc3339(),
                    snapshot.state.to_string()
                ])
            })
            .map_err(|e| self.store.error("cannot save a snapshot", e))?;
        Ok(())
    }
}

/// One view's state and checkpoint in a [`SqliteStore`]'s file, saved
/// together in one transaction (one row).
#[derive(Clone, Debug)]
pub struct SqliteViewStore {
    store: SqliteStore,
    name: String,
}

#[async_trait]
impl ViewStore for SqliteViewStore {
    async fn load(&self) -> Result<Option<StoredView>, ViewStoreError> {
        let connection = lock(&self.store.shared.reader);
        let row: Option<(i64, String, String)> = connection
            .prepare_cached("SELECT checkpoint, offsets, state FROM views WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([&self.name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(|e| ViewStoreError(Box::new(self.store.error("cannot read a view", e))))?;
        let Some((checkpoint, offsets, state)) = row else {
            return Ok(None);
        };
        let broken = |e: serde_json::Error| {
            ViewStoreError(Box::new(
                self.store
                    .error(&format!("the saved view {:?} does not parse", self.name), e),
            ))
        };
        Ok(Some(StoredView {
            checkpoint: Position(checkpoint as u64),
            offsets: serde_json::from_str(&offsets).map_err(broken)?,
            state: serde_json::value::RawValue::from_string(state).map_err(broken)?,
        }))
    }

    async fn save(&self, view: &StoredView) -> Result<(), ViewStoreError> {
        let offsets =
            serde_json::to_string(&view.offsets).map_err(|e| ViewStoreError(Box::new(self.store.error("", e))))?;
        let connection = lock(&self.store.shared.writer);
        connection
            .prepare_cached(
                "INSERT INTO views (name, checkpoint, offsets, state) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (name) DO UPDATE SET checkpoint = ?2, offsets = ?3, state = ?4",
            )
            .and_then(|mut s| s.execute(params![self.name, view.checkpoint.0 as i64, offsets, view.state.get()]))
            .map_err(|e| ViewStoreError(Box::new(self.store.error("cannot save a view", e))))?;
        Ok(())
    }

    async fn remove(&self) -> Result<(), ViewStoreError> {
        let connection = lock(&self.store.shared.writer);
        connection
            .prepare_cached("DELETE FROM views WHERE name = ?1")
            .and_then(|mut s| s.execute([&self.name]))
            .map_err(|e| ViewStoreError(Box::new(self.store.error("cannot remove a view", e))))?;
        Ok(())
    }
}

/// The dead letters of a [`SqliteStore`]'s file (table `dead_letters`):
/// each letter a row, numbered in the order set aside, with the runner's
/// name, where it was and why (the record in the columns of
/// [`RecordColumns`](bookshelf_core::RecordColumns)).
#[derive(Clone, Debug)]
pub struct SqliteDeadLetters {
    store: SqliteStore,
}

impl SqliteDeadLetters {
    /// The letters kept, in the order they were set aside: every runner's,
    /// or `projection`'s only.
    ///
    /// # Errors
    /// A [`StoreError::Backend`] naming the file when it cannot be read, or
    /// holds a letter that does not read.
    pub fn list(&self, projection: Option<&str>) -> Result<Vec<bookshelf_core::KeptDeadLetter>, StoreError> {
        let connection = lock(&self.store.shared.reader);
        let failed = |e: rusqlite::Error| self.store.error("cannot read the dead letters", e);
        let mut statement = connection
            .prepare_cached(
                "SELECT id, set_aside_at, ticket, projection, location, reason, event, raw_key, raw_body, \
                 raw_headers FROM dead_letters WHERE ?1 IS NULL OR projection = ?1 ORDER BY id",
            )
            .map_err(failed)?;
        self.read(&mut statement, [projection])
    }

    /// The letters `statement` selects (the columns of [`list`](Self::list)).
    fn read(
        &self,
        statement: &mut rusqlite::CachedStatement<'_>,
        args: impl rusqlite::Params,
    ) -> Result<Vec<bookshelf_core::KeptDeadLetter>, StoreError> {
        let failed = |e: rusqlite::Error| self.store.error("cannot read the dead letters", e);
        let rows = statement
            .query_map(args, |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    bookshelf_core::RecordColumns {
                        event: row.get(6)?,
                        key: row.get(7)?,
                        body: row.get(8)?,
                        headers: row.get(9)?,
                    },
                ))
            })
            .map_err(failed)?;
        let mut kept = Vec::new();
        for row in rows {
            let (id, at, ticket, projection, location, reason, columns) = row.map_err(failed)?;
            let broken = |why: String| self.store.error(&format!("dead letter {id}"), why);
            let set_aside_at = bookshelf_core::timestamp::parse(&at)
                .ok_or_else(|| broken(format!("its time does not parse: {at}")))?;
            kept.push(
                bookshelf_core::KeptDeadLetter::from_row(
                    id as u64,
                    set_aside_at,
                    ticket.map(|t| t as u64),
                    projection,
                    location,
                    reason,
                    columns,
                )
                .map_err(broken)?,
            );
        }
        Ok(kept)
    }

    fn now() -> String {
        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }
}

#[async_trait]
impl bookshelf_core::DeadLetters for SqliteDeadLetters {
    async fn put(&self, letter: bookshelf_core::DeadLetter) -> Result<(), StoreError> {
        let columns = bookshelf_core::RecordColumns::of(&letter.record);
        let at = Self::now();
        let connection = lock(&self.store.shared.writer);
        connection
            .prepare_cached(
                "INSERT INTO dead_letters \
                 (projection, location, reason, set_aside_at, event, raw_key, raw_body, raw_headers) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    letter.projection,
                    letter.location,
                    letter.reason,
                    at,
                    columns.event,
                    columns.key,
                    columns.body,
                    columns.headers
                ])
            })
            .map_err(|e| self.store.error("cannot set a dead letter aside", e))?;
        Ok(())
    }

    async fn kept_letters(&self, runner: Option<&str>) -> Result<Vec<bookshelf_core::KeptDeadLetter>, StoreError> {
        self.list(runner)
    }

    fn redrives(&self) -> bool {
        true
    }

    async fn redrive(&self, runner: &str, which: bookshelf_core::Redrive) -> Result<usize, StoreError> {
        let letter = match which {
            bookshelf_core::Redrive::Letter(id) => Some(id as i64),
            bookshelf_core::Redrive::All => None,
        };
        let mut connection = lock(&self.store.shared.writer);
        let failed = |e: rusqlite::Error| {
            self.store
                .error(&format!("cannot re-drive the dead letters of {runner}"), e)
        };
        // Immediate: another process (the command line, a service) cannot
        // hand out the same tickets in between.
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed)?;
        let chosen: Vec<(i64, Option<i64>)> = tx
            .prepare_cached(
                "SELECT id, ticket FROM dead_letters WHERE projection = ?1 AND (?2 IS NULL OR id = ?2) ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map(params![runner, letter], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(failed)?;
        if let (Some(id), true) = (letter, chosen.is_empty()) {
            return Err(self
                .store
                .error("cannot re-drive", format!("no dead letter {id} of {runner}")));
        }
        let mut last: i64 = tx
            .query_row("SELECT COALESCE(MAX(last), 0) FROM redrive_tickets", [], |r| r.get(0))
            .map_err(failed)?;
        let mut queued = 0;
        for (id, _) in chosen.iter().filter(|(_, ticket)| ticket.is_none()) {
            last += 1;
            tx.execute("UPDATE dead_letters SET ticket = ?1 WHERE id = ?2", params![last, id])
                .map_err(failed)?;
            queued += 1;
        }
        tx.execute_batch("DELETE FROM redrive_tickets")
            .and_then(|()| tx.execute("INSERT INTO redrive_tickets (last) VALUES (?1)", [last]))
            .and_then(|_| tx.commit())
            .map_err(failed)?;
        Ok(queued)
    }

    async fn queued(&self, runner: &str, after: u64) -> Result<Vec<bookshelf_core::Redriven>, StoreError> {
        let connection = lock(&self.store.shared.reader);
        let mut statement = connection
            .prepare_cached(
                "SELECT id, set_aside_at, ticket, projection, location, reason, event, raw_key, raw_body, \
                 raw_headers FROM dead_letters WHERE projection = ?1 AND ticket > ?2 ORDER BY ticket",
            )
            .map_err(|e| self.store.error("cannot read the dead letters", e))?;
        let kept = self.read(&mut statement, params![runner, after as i64])?;
        Ok(kept.into_iter().filter_map(|kept| kept.queued_after(after)).collect())
    }

    async fn put_back(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        lock(&self.store.shared.writer)
            .execute(
                "UPDATE dead_letters SET ticket = NULL, reason = ?2, set_aside_at = ?3 WHERE id = ?1",
                params![id as i64, reason, Self::now()],
            )
            .map_err(|e| self.store.error("cannot put a dead letter back", e))?;
        Ok(())
    }

    async fn forget(&self, runner: &str, through: Option<u64>) -> Result<(), StoreError> {
        let through = through.map(|t| t as i64);
        lock(&self.store.shared.writer)
            .execute(
                "DELETE FROM dead_letters WHERE projection = ?1 AND (?2 IS NULL OR ticket <= ?2)",
                params![runner, through],
            )
            .map_err(|e| self.store.error("cannot forget dead letters", e))?;
        Ok(())
    }
}
