//! Appending: the one rule every append follows, and the writer that
//! gathers the appends of concurrent callers into one transaction.
//!
//! **The rule**, kept by the database function `bookshelf_append` (see
//! `schema.rs`), and for one event appended alone by [`ONE_EVENT`] and
//! [`ONE_EVENT_AT`]: an append takes the log's lock (an advisory lock held
//! until its transaction ends: `lock_the_log!`) before it takes a position
//! from the sequence `bookshelf_positions`, checks the expected versions,
//! inserts its events at the positions it took, and notifies the live
//! readers. So appends take positions one transaction after another: a
//! transaction ends before the next one can take a position, and positions
//! become visible in their order. A transaction that rolls back leaves its
//! positions unused, below every position taken after it: a reader that has
//! seen a later position knows the hole for what it is. Readers of the log
//! therefore never see a later position while an earlier one could still
//! commit. One event appended alone is one statement: one round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bookshelf_core::store::{AppendOutcome, ExpectedVersion, StoreError};
use bookshelf_core::{NewEvent, Position, StreamId, Version, IDEMPOTENCY_KEY};
use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use crate::server::Server;

/// The most appends one transaction gathers.
const MOST_APPENDS: usize = 256;

/// The appends of a store: each written on the caller's own task while no
/// other is in flight (nothing to gather, so no hand-over to pay for), and
/// handed to the store's writer task, which gathers them, while others are.
/// Either way every append follows the rule of the [module docs](self):
/// the database orders them, not this.
pub(crate) struct Writer {
    server: Server,
    pool: Pool,
    queue: mpsc::Sender<Pending>,
    /// Appends begun and not answered.
    in_flight: AtomicUsize,
    known: Arc<KnownVersions>,
}

impl Writer {
    /// The writer of a store on `pool`, its writer task started.
    pub(crate) fn start(server: Server, pool: Pool) -> Writer {
        let (queue, received) = mpsc::channel(1024);
        let known = Arc::new(KnownVersions::default());
        tokio::spawn(write(server.clone(), pool.clone(), Arc::clone(&known), received));
        Writer {
            server,
            pool,
            queue,
            in_flight: AtomicUsize::new(0),
            known,
        }
    }

    /// Writes `append`: its outcome, a conflict, or why it failed.
    pub(crate) async fn append(&self, append: Append) -> Result<AppendOutcome, StoreError> {
        let begun = InFlight::begin(&self.in_flight);
        if begun.alone {
            let outcomes = commit(&self.server, &self.pool, &self.known, vec![append]).await?;
            return only(&self.server, outcomes);
        }
        let (answer, outcome) = oneshot::channel();
        let closed = || StoreError::Closed(format!("{}: the store's writer has stopped", self.server));
        self.queue
            .send(Pending { append, answer })
            .await
            .map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }
}

/// The outcome of the one append in `outcomes`.
pub(crate) fn only(
    server: &Server,
    mut outcomes: Vec<Result<AppendOutcome, StoreError>>,
) -> Result<AppendOutcome, StoreError> {
    outcomes
        .pop()
        .unwrap_or_else(|| Err(server.refused("an append gave no outcome".to_owned())))
}

/// One append in flight, counted until it is answered (or its caller gives
/// up on it).
struct InFlight<'a> {
    count: &'a AtomicUsize,
    /// Whether no other append was in flight when this one began.
    alone: bool,
}

impl<'a> InFlight<'a> {
    fn begin(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, Ordering::AcqRel);
        InFlight {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The versions this store's own committed appends left streams at. A
/// version once written stays (nothing deletes events), so the stream is
/// known to have reached it, and an append of one event after it can name
/// its version instead of looking the stream up ([`ONE_EVENT_AT`]): the
/// stream's unique version refuses it if another writer got there first,
/// and then the entry is forgotten and [`bookshelf_append`](append_all)
/// decides. Appends inside a caller's transaction ([`append_all`] called by
/// `append_in`) are never noted: that transaction may still roll back.
#[derive(Default)]
pub(crate) struct KnownVersions(Mutex<HashMap<StreamId, u64>>);

impl KnownVersions {
    /// The most streams remembered: past it the memory starts over empty
    /// (the next append to each stream looks it up once), so what it holds
    /// stays flat however many streams the log has.
    const MOST: usize = 4096;

    fn get(&self, stream: &StreamId) -> Option<u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(stream).copied()
    }

    /// Notes that `stream` reached `version`.
    fn note(&self, stream: &StreamId, version: u64) {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= Self::MOST && !known.contains_key(stream) {
            known.clear();
        }
        let entry = known.entry(stream.clone()).or_insert(version);
        *entry = (*entry).max(version);
    }

    fn forget(&self, stream: &StreamId) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(stream);
    }

    /// The version an append of one event to `stream` at `expected` will
    /// write, when it is known without looking the stream up: 1 for a new
    /// stream; one past a version the stream is known to have reached.
    fn next_for(&self, stream: &StreamId, expected: ExpectedVersion) -> Option<u64> {
        match expected {
            ExpectedVersion::NoStream => Some(1),
            ExpectedVersion::Exact(version) => self
                .get(stream)
                .filter(|&known| known >= version.0)
                .map(|_| version.0 + 1),
            ExpectedVersion::Any => self.get(stream).map(|known| known + 1),
        }
    }
}

/// One append, waiting for its transaction.
struct Pending {
    append: Append,
    answer: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// What one append writes.
pub(crate) struct Append {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<NewEvent>,
}

/// Why [`append_all`] failed.
pub(crate) enum Failure {
    /// Nothing was stored.
    Nothing(tokio_postgres::Error),
    /// The connection failed while the statement was on its way: outside
    /// a transaction of the caller's, the appends may or may not be stored.
    Unknown(tokio_postgres::Error),
}

impl Failure {
    /// `error` of a statement run outside a transaction of the caller's:
    /// the outcome is unknown when the connection failed on the way.
    fn of(error: tokio_postgres::Error) -> Failure {
        if crate::server::lost_connection(&error) {
            Failure::Unknown(error)
        } else {
            Failure::Nothing(error)
        }
    }
}

/// The outcome of an append of one event, written at `position` as
/// `version`.
fn one_written(position: i64, version: i64) -> AppendOutcome {
    AppendOutcome {
        version: Version(version as u64),
        first_position: Position(position as u64),
        last_position: Position(position as u64),
    }
}

/// An expected version as both append statements take it: -1 for any, else
/// the version the stream must be at (0: no stream).
fn expected_code(expected: ExpectedVersion) -> i64 {
    match expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => 0,
        ExpectedVersion::Exact(version) => version.0 as i64,
    }
}

/// An event's metadata as the events table keeps it.
fn metadata_json(metadata: &bookshelf_core::Metadata) -> String {
    serde_json::to_string(metadata).expect("metadata always serializes: its fields are plain data")
}

/// The arguments of `bookshelf_append`: one entry per append, then one per
/// event.
#[derive(Default)]
struct Arguments {
    streams: Vec<String>,
    expected: Vec<i64>,
    counts: Vec<i32>,
    event_ids: Vec<uuid::Uuid>,
    event_types: Vec<String>,
    schema_versions: Vec<i32>,
    keys: Vec<Option<String>>,
    metadata: Vec<String>,
    payloads: Vec<String>,
}

impl Arguments {
    /// The columns of `events`, one entry each.
    fn push_events(&mut self, events: &[NewEvent]) {
        for event in events {
            self.event_ids.push(event.event_id.0);
            self.keys.push(event.metadata.extra.get(IDEMPOTENCY_KEY).cloned());
            self.metadata.push(metadata_json(&event.metadata));
            self.event_types.push(event.event_type.as_str().to_owned());
            self.schema_versions.push(event.schema_version as i32);
            self.payloads.push(event.payload.get().to_owned());
        }
    }
}

/// Appends each of `appends`, in order, under the rule of the
/// [module docs](self), in one statement: in a transaction of its own when
/// `client` is outside one, else in the caller's. An append whose stream is
/// not at its expected version is answered with a conflict and writes
/// nothing; the others are written.
pub(crate) async fn append_all<C: GenericClient + Sync>(
    client: &C,
    appends: Vec<Append>,
    channel: &str,
) -> Result<Vec<Result<AppendOutcome, StoreError>>, Failure> {
    let statement = client
        .prepare_cached(
            "SELECT o_versions, o_firsts, o_found FROM bookshelf_append($1, $2, $3, $4, $5, $6, $7, \
             $8::text[]::json[], $9::text[]::json[], $10)",
        )
        .await
        .map_err(Failure::Nothing)?;
    let mut arguments = Arguments::default();
    let mut asked = Vec::with_capacity(appends.len());
    for append in appends {
        arguments.streams.push(append.stream.as_str().to_owned());
        arguments.expected.push(expected_code(append.expected));
        arguments.counts.push(append.events.len() as i32);
        arguments.push_events(&append.events);
        asked.push((append.stream, append.expected));
    }
    let parameters: [&(dyn ToSql + Sync); 10] = [
        &arguments.streams,
        &arguments.expected,
        &arguments.counts,
        &arguments.event_ids,
        &arguments.event_types,
        &arguments.schema_versions,
        &arguments.keys,
        &arguments.metadata,
        &arguments.payloads,
        &channel,
    ];
    let row = client.query_one(&statement, &parameters).await.map_err(Failure::of)?;
    // One entry per append.
    let versions: Vec<Option<i64>> = row.get(0);
    let firsts: Vec<Option<i64>> = row.get(1);
    let found: Vec<Option<i64>> = row.get(2);
    Ok(asked
        .into_iter()
        .enumerate()
        .map(|(i, (stream, expected))| {
            let at = |values: &[Option<i64>]| values.get(i).copied().flatten();
            let (version, first, found) = (at(&versions), at(&firsts), at(&found).unwrap_or(0));
            match (version, first) {
                (Some(version), Some(first)) => Ok(AppendOutcome {
                    version: Version(version as u64),
                    first_position: Position(first as u64),
                    last_position: Position((first + version - found - 1) as u64),
                }),
                _ => Err(StoreError::Conflict {
                    stream,
                    expected,
                    actual: Version(found as u64),
                }),
            }
        })
        .collect())
}

/// One event appended to one stream in one plain statement, under the same
/// rule as the function (the log locked before a position is taken, held
/// to the commit) but without its arrays and loop: the common append. The
/// lock is in the filter that gates the one row (evaluated before the row
/// and its `nextval`), so a conflict takes no position. The stream's
/// version is read in the statement's snapshot, from before the lock, so
/// it may be stale when another append to the stream commits meanwhile:
/// then the insert breaks the stream's unique version and the statement
/// writes nothing (the position it took stays unused). It also writes
/// nothing when the stream is not at the expected version. In both cases
/// [`bookshelf_append`](append_all) decides. The notification's payload is
/// empty: listeners only wake.
const ONE_EVENT: &str = concat!(
    "INSERT INTO bookshelf_events (position, stream, version, event_id, event_type, schema_version, \
        recorded_at, idempotency_key, metadata, payload) \
    SELECT nextval('bookshelf_positions'), $1, found.version + 1, $3, $4, $5, now(), $6, \
        $7::text::json, $8::text::json \
    FROM (SELECT coalesce(max(version), 0) AS version FROM bookshelf_events WHERE stream = $1) AS found \
    WHERE ($2::bigint = -1 OR $2::bigint = found.version) AND ",
    crate::schema::lock_the_log!(),
    " IS NOT NULL AND pg_notify($9, '') IS NOT NULL \
    RETURNING position, version"
);

/// [`ONE_EVENT`] with the version to write given (`$2`), not looked up:
/// for an append whose version [`KnownVersions`] knows. The stream's
/// unique version refuses it when the stream is already past it.
const ONE_EVENT_AT: &str = concat!(
    "INSERT INTO bookshelf_events (position, stream, version, event_id, event_type, schema_version, \
        recorded_at, idempotency_key, metadata, payload) \
    SELECT nextval('bookshelf_positions'), $1, $2::bigint, $3, $4, $5, now(), $6, $7::text::json, $8::text::json \
    WHERE ",
    crate::schema::lock_the_log!(),
    " IS NOT NULL AND pg_notify($9, '') IS NOT NULL \
    RETURNING position, version"
);

/// [`ONE_EVENT_AT`] when the version to write is known, else [`ONE_EVENT`],
/// for `append` (of one event): its outcome when the statement wrote it,
/// `None` when it wrote nothing and the function must decide.
async fn one_event<C: GenericClient + Sync>(
    client: &C,
    known: &KnownVersions,
    append: &Append,
    channel: &str,
) -> Result<Option<AppendOutcome>, Failure> {
    let Some(event) = append.events.first() else {
        return Ok(None);
    };
    let named = known.next_for(&append.stream, append.expected);
    let (sql, version) = match named {
        Some(version) => (ONE_EVENT_AT, version as i64),
        None => (ONE_EVENT, expected_code(append.expected)),
    };
    let statement = client.prepare_cached(sql).await.map_err(Failure::Nothing)?;
    let metadata = metadata_json(&event.metadata);
    let key = event.metadata.extra.get(IDEMPOTENCY_KEY);
    let parameters: [&(dyn ToSql + Sync); 9] = [
        &append.stream.as_str(),
        &version,
        &event.event_id.0,
        &event.event_type.as_str(),
        &(event.schema_version as i32),
        &key,
        &metadata,
        &event.payload.get(),
        &channel,
    ];
    match client.query_opt(&statement, &parameters).await {
        Ok(Some(row)) => Ok(Some(one_written(row.get(0), row.get(1)))),
        Ok(None) => Ok(None),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            if named.is_some() {
                // Another writer moved the stream: what was known is stale.
                known.forget(&append.stream);
            }
            Ok(None)
        }
        Err(e) => Err(Failure::of(e)),
    }
}

/// [`ONE_EVENT_AT`] for several appends at once: one event each, to
/// distinct streams, each version given (`$2`).
const KNOWN_EVENTS: &str = concat!(
    "INSERT INTO bookshelf_events (position, stream, version, event_id, event_type, schema_version, \
        recorded_at, idempotency_key, metadata, payload) \
    SELECT nextval('bookshelf_positions'), a.stream, a.version, a.event_id, a.event_type, a.schema_version, \
        now(), a.key, a.metadata::json, a.payload::json \
    FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::int[], $6::text[], $7::text[], $8::text[]) \
        AS a(stream, version, event_id, event_type, schema_version, key, metadata, payload) \
    WHERE ",
    crate::schema::lock_the_log!(),
    " IS NOT NULL AND pg_notify($9, '') IS NOT NULL \
    RETURNING stream, position, version"
);

/// [`KNOWN_EVENTS`] for `batch`, when it is such a batch and `known` knows
/// every version: the outcome of each append, in order. `None` when it is
/// not, or when a stream had moved (the statement wrote nothing, and what
/// was known of the batch's streams is forgotten): the function decides.
async fn known_events<C: GenericClient + Sync>(
    client: &C,
    known: &KnownVersions,
    batch: &[Append],
    channel: &str,
) -> Result<Option<Vec<Result<AppendOutcome, StoreError>>>, Failure> {
    let mut streams = std::collections::HashSet::with_capacity(batch.len());
    if batch.len() < 2 || batch.iter().any(|a| a.events.len() != 1 || !streams.insert(&a.stream)) {
        return Ok(None);
    }
    let mut arguments = Arguments::default();
    let mut versions = Vec::with_capacity(batch.len());
    for append in batch {
        let Some(version) = known.next_for(&append.stream, append.expected) else {
            return Ok(None);
        };
        versions.push(version as i64);
        arguments.streams.push(append.stream.as_str().to_owned());
        arguments.push_events(&append.events);
    }
    let statement = client.prepare_cached(KNOWN_EVENTS).await.map_err(Failure::Nothing)?;
    let parameters: [&(dyn ToSql + Sync); 9] = [
        &arguments.streams,
        &versions,
        &arguments.event_ids,
        &arguments.event_types,
        &arguments.schema_versions,
        &arguments.keys,
        &arguments.metadata,
        &arguments.payloads,
        &channel,
    ];
    let rows = match client.query(&statement, &parameters).await {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            for append in batch {
                known.forget(&append.stream);
            }
            return Ok(None);
        }
        Err(e) => return Err(Failure::of(e)),
    };
    let written: HashMap<&str, (i64, i64)> = rows
        .iter()
        .map(|row| (row.get::<_, &str>(0), (row.get::<_, i64>(1), row.get::<_, i64>(2))))
        .collect();
    Ok(Some(
        batch
            .iter()
            .map(|append| match written.get(append.stream.as_str()) {
                Some(&(position, version)) => Ok(one_written(position, version)),
                // One statement writes all its rows or none.
                None => Err(StoreError::Backend(
                    format!("an append to {} was not answered by its statement", append.stream).into(),
                )),
            })
            .collect(),
    ))
}

/// The writer task of a store: takes the appends sent to it, as many as are
/// waiting (up to [`MOST_APPENDS`]), appends them in one transaction and
/// answers each. Ends when every sender is gone.
async fn write(server: Server, pool: Pool, known: Arc<KnownVersions>, mut appends: mpsc::Receiver<Pending>) {
    let mut gathered = Vec::new();
    while appends.recv_many(&mut gathered, MOST_APPENDS).await > 0 {
        let count: usize = gathered.iter().map(|p| p.append.events.len()).sum();
        let (answers, batch): (Vec<_>, Vec<_>) = gathered.drain(..).map(|p| (p.answer, p.append)).unzip();
        match commit(&server, &pool, &known, batch).await {
            Ok(outcomes) => {
                for (answer, outcome) in answers.into_iter().zip(outcomes) {
                    let _ = answer.send(outcome);
                }
            }
            Err(failure) => {
                tracing::warn!(database = %server, appends = answers.len(), events = count, error = %failure, "an append transaction failed");
                let why = match &failure {
                    StoreError::Backend(source) => source.to_string(),
                    other => other.to_string(),
                };
                for answer in answers {
                    let _ = answer.send(Err(StoreError::Backend(why.clone().into())));
                }
            }
        }
    }
}

/// One transaction for `batch`: the outcome of each append, or why the
/// transaction failed (saying so when its outcome is unknown).
async fn commit(
    server: &Server,
    pool: &Pool,
    known: &KnownVersions,
    batch: Vec<Append>,
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let client = server.get(pool).await?;
    let attempt = match batch.as_slice() {
        [append] if append.events.len() == 1 => one_event(&client, known, append, server.channel())
            .await
            .map(|done| done.map(|done| vec![Ok(done)])),
        _ => known_events(&client, known, &batch, server.channel()).await,
    };
    let streams: Vec<StreamId> = batch.iter().map(|append| append.stream.clone()).collect();
    let result = match attempt {
        Ok(Some(outcomes)) => Ok(outcomes),
        Ok(None) => append_all(&client, batch, server.channel()).await,
        Err(failure) => Err(failure),
    };
    match result {
        Ok(outcomes) => {
            let written: u64 = outcomes
                .iter()
                .flatten()
                .map(|done| done.last_position.0 + 1 - done.first_position.0)
                .sum();
            if written > 0 {
                bookshelf_core::telemetry::appended("postgres", written as usize);
            }
            for (stream, outcome) in streams.iter().zip(&outcomes) {
                if let Ok(done) = outcome {
                    known.note(stream, done.version.0);
                }
            }
            Ok(outcomes)
        }
        Err(failure) => {
            // The connection may be broken: it does not go back to the pool.
            drop(deadpool_postgres::Object::take(client));
            Err(match failure {
                Failure::Nothing(e) => server.error("cannot append (nothing was stored)", e),
                Failure::Unknown(e) => server.error(
                    "the connection failed while the append was on its way: its outcome is unknown",
                    e,
                ),
            })
        }
    }
}
