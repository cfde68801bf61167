//! The store's local state: the events it has read from the topic, indexed by
//! stream, with each partition's next offset and last valid claim, in one
//! SQLite file.
//!
//! It is a copy of the log, never the source of truth: a missing or deleted
//! file is rebuilt by reading the topic from the start. What it holds grows
//! with the log on disk, not in memory (SQLite keeps a bounded page cache).
//! Every batch of records read goes in with the partitions' offsets in one
//! transaction, so after a crash the file resumes exactly where its last
//! commit stopped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bookshelf_core::{Position, RecordedEvent, StoreError, StreamId, Version};
use rusqlite::{params, Connection, OptionalExtension};

use crate::rule::Claim;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topic (name TEXT NOT NULL, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL,
    claim TEXT
);
CREATE TABLE IF NOT EXISTS events (
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (stream, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    claim TEXT NOT NULL,
    PRIMARY KEY (partition, offset)
) WITHOUT ROWID;
";

/// The layout's version, in SQLite's `user_version`. A file of another
/// version is emptied and rebuilt from the topic (it is a copy of the log).
const LAYOUT: i64 = 2;

const DROP: &str = "
DROP TABLE IF EXISTS topic; DROP TABLE IF EXISTS partitions; DROP TABLE IF EXISTS events;
DROP TABLE IF EXISTS keys; DROP TABLE IF EXISTS claims;
";

fn failed(path: &Path, what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("local state {}: {what}: {error}", path.display()).into())
}

/// One event to keep: where it is in the topic and its envelope as JSON.
pub(crate) struct Kept {
    pub stream: String,
    /// Its idempotency key, if it has one.
    pub key: Option<String>,
    pub version: u64,
    pub partition: i32,
    pub offset: i64,
    pub body: String,
}

/// Where a partition stands after a batch: its next offset and its last
/// valid claim.
pub(crate) struct Mark {
    pub partition: i32,
    pub next_offset: i64,
    pub claim: Option<Claim>,
}

/// A partition as saved: the next offset to read and the last valid claim.
pub(crate) struct Saved {
    pub next_offset: i64,
    pub claim: Option<Claim>,
}

/// The local state file. The follower writes through [`LocalState::keep`];
/// readers use [`LocalState::read_stream`] and [`LocalState::version`] at the
/// same time (SQLite's write-ahead log lets them).
#[derive(Clone)]
pub(crate) struct LocalState {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A connection has no state of ours that a panic could tear.
    connection.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalState {
    /// Opens (or creates) the state of `topic`, which has `partitions`, at
    /// `path`. A file that belongs to another topic, or that is not a state
    /// file, is an error naming the file.
    pub fn open(path: &Path, topic: &str, partitions: i32) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| failed(path, "cannot create its directory", e))?;
        }
        let connect = || -> Result<Connection, StoreError> {
            let connection = Connection::open(path).map_err(|e| failed(path, "cannot open", e))?;
            connection
                .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;")
                .map_err(|e| failed(path, "not a SQLite database, or not writable", e))?;
            Ok(connection)
        };
        let writer = connect()?;
        let layout: i64 = writer
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| failed(path, "not a SQLite database", e))?;
        if layout != LAYOUT {
            let tables: i64 = writer
                .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'", [], |r| {
                    r.get(0)
                })
                .map_err(|e| failed(path, "not a SQLite database", e))?;
            if tables > 0 {
                tracing::info!(file = %path.display(), layout, "local state of an older layout: rebuilt from the topic");
            }
            writer
                .execute_batch(&format!("{DROP} PRAGMA user_version = {LAYOUT};"))
                .map_err(|e| failed(path, "cannot write", e))?;
        }
        writer
            .execute_batch(SCHEMA)
            .map_err(|e| failed(path, "not a Bookshelf state file", e))?;
        let known: Option<(String, i32)> = writer
            .query_row("SELECT name, partitions FROM topic", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| failed(path, "not a Bookshelf state file", e))?;
        match known {
            None => {
                writer
                    .execute(
                        "INSERT INTO topic (name, partitions) VALUES (?1, ?2)",
                        params![topic, partitions],
                    )
                    .map_err(|e| failed(path, "cannot write", e))?;
            }
            Some((name, count)) if name == topic && count == partitions => {}
            Some((name, count)) => {
                return Err(failed(
                    path,
                    "belongs to another topic",
                    format!("it holds {name:?} with {count} partitions, not {topic:?} with {partitions}"),
                ))
            }
        }
        let reader = connect()?;
        Ok(LocalState {
            path: path.to_owned(),
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Each partition's saved position, `partitions` long (a partition never
    /// saved starts at offset 0 with no claim).
    pub fn saved(&self, partitions: i32) -> Result<Vec<Saved>, StoreError> {
        let connection = lock(&self.writer);
        let mut statement = connection
            .prepare("SELECT next_offset, claim FROM partitions WHERE partition = ?1")
            .map_err(|e| failed(&self.path, "cannot read", e))?;
        (0..partitions)
            .map(|partition| {
                let row: Option<(i64, Option<String>)> = statement
                    .query_row([partition], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(|e| failed(&self.path, "cannot read", e))?;
                let (next_offset, claim) = row.unwrap_or((0, None));
                let claim = claim
                    .map(|json| serde_json::from_str(&json))
                    .transpose()
                    .map_err(|e| failed(&self.path, "holds a claim that does not parse", e))?;
                Ok(Saved { next_offset, claim })
            })
            .collect()
    }

    /// Keeps `events` and the valid `claims` read (partition, offset, claim),
    /// and moves the partitions to `marks`, all in one transaction.
    pub fn keep(&self, events: &[Kept], marks: &[Mark], claims: &[(i32, i64, Claim)]) -> Result<(), StoreError> {
        let mut connection = lock(&self.writer);
        let write = |e: &dyn std::fmt::Display| failed(&self.path, "cannot write", e);
        let tx = connection.transaction().map_err(|e| write(&e))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO events (stream, version, partition, offset, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| write(&e))?;
            let mut keyed = tx
                .prepare_cached("INSERT OR IGNORE INTO keys (stream, key, version) VALUES (?1, ?2, ?3)")
                .map_err(|e| write(&e))?;
            for event in events {
                if let Some(key) = &event.key {
                    keyed
                        .execute(params![event.stream, key, event.version as i64])
                        .map_err(|e| write(&e))?;
                }
                insert
                    .execute(params![
                        event.stream,
                        event.version as i64,
                        event.partition,
                        event.offset,
                        event.body
                    ])
                    .map_err(|e| write(&e))?;
            }
            let mut mark = tx
                .prepare_cached(
                    "INSERT INTO partitions (partition, next_offset, claim) VALUES (?1, ?2, ?3)
                     ON CONFLICT (partition) DO UPDATE SET next_offset = ?2, claim = COALESCE(?3, claim)",
                )
                .map_err(|e| write(&e))?;
            let mut claimed = tx
                .prepare_cached("INSERT OR REPLACE INTO claims (partition, offset, claim) VALUES (?1, ?2, ?3)")
                .map_err(|e| write(&e))?;
            for (partition, offset, claim) in claims {
                let json = serde_json::to_string(claim).map_err(|e| write(&e))?;
                claimed
                    .execute(params![partition, offset, json])
                    .map_err(|e| write(&e))?;
            }
            for m in marks {
                let claim = m
                    .claim
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| write(&e))?;
                mark.execute(params![m.partition, m.next_offset, claim])
                    .map_err(|e| write(&e))?;
            }
        }
        tx.commit().map_err(|e| write(&e))
    }

    /// The last valid claim of `partition` before `offset`: where the rule
    /// stands for a reader starting there.
    pub fn claim_before(&self, partition: i32, offset: i64) -> Result<Option<Claim>, StoreError> {
        let connection = lock(&self.reader);
        let json: Option<String> = connection
            .prepare_cached(
                "SELECT claim FROM claims WHERE partition = ?1 AND offset < ?2 ORDER BY offset DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![partition, offset], |r| r.get(0)).optional())
            .map_err(|e| failed(&self.path, "cannot read", e))?;
        json.map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|e| failed(&self.path, "holds a claim that does not parse", e))
    }

    /// The version of the first event of `stream` kept under idempotency key
    /// `key`.
    pub fn find_key(&self, stream: &str, key: &str) -> Result<Option<Version>, StoreError> {
        let connection = lock(&self.reader);
        let version: Option<i64> = connection
            .prepare_cached("SELECT version FROM keys WHERE stream = ?1 AND key = ?2")
            .and_then(|mut s| s.query_row([stream, key], |r| r.get(0)).optional())
            .map_err(|e| failed(&self.path, "cannot read", e))?;
        Ok(version.map(|v| Version(v as u64)))
    }

    /// The stream's version as kept: the version of its last event, 0 for none.
    pub fn version(&self, stream: &str) -> Result<Version, StoreError> {
        self.version_on(&lock(&self.reader), stream)
    }

    /// The same, through the follower's connection (which sees what it wrote).
    pub fn version_for_writer(&self, stream: &str) -> Result<Version, StoreError> {
        self.version_on(&lock(&self.writer), stream)
    }

    fn version_on(&self, connection: &Connection, stream: &str) -> Result<Version, StoreError> {
        let version: Option<i64> = connection
            .prepare_cached("SELECT MAX(version) FROM events WHERE stream = ?1")
            .and_then(|mut s| s.query_row([stream], |r| r.get(0)))
            .map_err(|e| failed(&self.path, "cannot read", e))?;
        Ok(Version(version.unwrap_or(0) as u64))
    }

    /// The stream's events from version `from` on, each with its offset as
    /// its position.
    pub fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
        let connection = lock(&self.reader);
        let read = |e| failed(&self.path, "cannot read", e);
        let mut statement = connection
            .prepare_cached("SELECT offset, body FROM events WHERE stream = ?1 AND version >= ?2 ORDER BY version")
            .map_err(read)?;
        let rows = statement
            .query_map(params![stream.as_str(), from.0 as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(read)?;
        let mut events = Vec::new();
        for row in rows {
            let (offset, body) = row.map_err(read)?;
            let mut event = RecordedEvent::from_json(&body).map_err(|e| {
                failed(
                    &self.path,
                    &format!("event at offset {offset} of {stream} does not decode"),
                    e,
                )
            })?;
            event.position = Position(offset as u64);
            events.push(Arc::new(event));
        }
        Ok(events)
    }
}
