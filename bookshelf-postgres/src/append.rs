//! Appending: the one rule every append follows, and the writer that
//! gathers the appends of concurrent callers into one transaction.
//!
//! **The rule.** An append locks the log's head row
//! (`SELECT … FROM bookshelf_head FOR UPDATE`) before anything else, checks
//! the expected versions, inserts its events at the positions that follow
//! the head, moves the head, and commits. The lock is held until the
//! commit, so appends take positions one transaction after another: a
//! transaction commits before the next one can take a position, positions
//! become visible in their order, and a transaction that rolls back gives
//! its positions back (the head moves with it or not at all). Readers of
//! the log therefore never see a hole, and never see a later position
//! while an earlier one could still commit.

use std::collections::HashMap;

use bookshelf_core::store::{AppendOutcome, ExpectedVersion, StoreError};
use bookshelf_core::{Envelope, NewEvent, Position, StreamId, Version, IDEMPOTENCY_KEY};
use chrono::Utc;
use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use crate::server::Server;

/// The most appends one transaction gathers.
const MOST_APPENDS: usize = 256;

/// One append, waiting for its transaction.
pub(crate) struct Pending {
    pub(crate) append: Append,
    pub(crate) answer: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// What one append writes.
pub(crate) struct Append {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<NewEvent>,
}

/// Whether [`append_all`] runs a transaction of its own or appends inside
/// one the caller holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Within {
    /// Begin and commit here, each sent with the statements beside it, so
    /// that the whole append takes two round trips.
    Own,
    /// Inside the caller's transaction, which commits (or not) later.
    Caller,
}

/// Why [`append_all`] failed.
pub(crate) enum Failure {
    /// Nothing was stored.
    Nothing(tokio_postgres::Error),
    /// The connection failed while the commit was on its way: the appends
    /// may or may not be stored.
    Unknown(tokio_postgres::Error),
}

/// Appends each of `appends`, in order, under the rule of the
/// [module docs](self). An append whose stream is not at its expected
/// version is answered with a conflict and writes nothing; the others are
/// written.
pub(crate) async fn append_all<C: GenericClient + Sync>(
    client: &C,
    appends: Vec<Append>,
    within: Within,
    channel: &str,
) -> Result<Vec<Result<AppendOutcome, StoreError>>, Failure> {
    let head = client
        .prepare_cached("SELECT next FROM bookshelf_head WHERE id = 1 FOR UPDATE")
        .await
        .map_err(Failure::Nothing)?;
    let versions = client
        // Each stream's last version from the end of its index: a lookup, not a scan.
        .prepare_cached(
            "SELECT s.stream, (SELECT e.version FROM bookshelf_events e WHERE e.stream = s.stream \
             ORDER BY e.version DESC LIMIT 1) FROM unnest($1::text[]) AS s(stream)",
        )
        .await
        .map_err(Failure::Nothing)?;
    let streams: Vec<&str> = appends.iter().map(|a| a.stream.as_str()).collect();
    let by_stream: [&(dyn ToSql + Sync); 1] = [&streams];
    // The head is locked first: the versions read after it cannot change
    // before the commit.
    let (next, rows) = if within == Within::Own {
        let (_, next, rows) = tokio::try_join!(
            client.batch_execute("BEGIN"),
            client.query_one(&head, &[]),
            client.query(&versions, &by_stream),
        )
        .map_err(Failure::Nothing)?;
        (next, rows)
    } else {
        tokio::try_join!(client.query_one(&head, &[]), client.query(&versions, &by_stream)).map_err(Failure::Nothing)?
    };
    let next: i64 = next.get(0);
    let mut actual: HashMap<String, Version> = rows
        .into_iter()
        .filter_map(|row| {
            let version: Option<i64> = row.get(1);
            version.map(|v| (row.get::<_, String>(0), Version(v as u64)))
        })
        .collect();

    let recorded_at = Utc::now();
    let mut rows = Rows::default();
    let mut position = next as u64;
    let mut outcomes = Vec::with_capacity(appends.len());
    for append in appends {
        let stream = &append.stream;
        let current = actual.get(stream.as_str()).copied().unwrap_or(Version::INITIAL);
        if append.events.is_empty() {
            outcomes.push(Err(StoreError::EmptyAppend(stream.clone())));
            continue;
        }
        if !append.expected.admits(current) {
            outcomes.push(Err(StoreError::Conflict {
                stream: stream.clone(),
                expected: append.expected,
                actual: current,
            }));
            continue;
        }
        let first = Position(position);
        let mut version = current;
        for event in append.events {
            version = version.next();
            let key = event.metadata.extra.get(IDEMPOTENCY_KEY).cloned();
            let recorded = Envelope {
                event_id: event.event_id,
                stream_id: stream.clone(),
                version,
                position: Position(position),
                recorded_at,
                event_type: event.event_type,
                schema_version: event.schema_version,
                metadata: event.metadata,
                payload: event.payload,
            };
            rows.positions.push(position as i64);
            rows.streams.push(stream.as_str().to_owned());
            rows.versions.push(version.0 as i64);
            rows.keys.push(key);
            rows.bodies.push(recorded.to_json());
            position += 1;
        }
        actual.insert(stream.as_str().to_owned(), version);
        outcomes.push(Ok(AppendOutcome {
            version,
            first_position: first,
            last_position: Position(position - 1),
        }));
    }
    if rows.positions.is_empty() {
        if within == Within::Own {
            client.batch_execute("ROLLBACK").await.map_err(Failure::Nothing)?;
        }
        return Ok(outcomes);
    }
    let insert = client
        .prepare_cached(
            "INSERT INTO bookshelf_events (position, stream, version, idempotency_key, body) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[])",
        )
        .await
        .map_err(Failure::Nothing)?;
    let advance = client
        .prepare_cached("UPDATE bookshelf_head SET next = $1 WHERE id = 1")
        .await
        .map_err(Failure::Nothing)?;
    let notify = client
        .prepare_cached("SELECT pg_notify($1, $2)")
        .await
        .map_err(Failure::Nothing)?;
    let head = position as i64;
    let told = head.to_string();
    let columns: [&(dyn ToSql + Sync); 5] = [&rows.positions, &rows.streams, &rows.versions, &rows.keys, &rows.bodies];
    let moved: [&(dyn ToSql + Sync); 1] = [&head];
    let told: [&(dyn ToSql + Sync); 2] = [&channel, &told];
    // Sent together: one round trip.
    let written = async {
        tokio::try_join!(
            client.execute(&insert, &columns),
            client.execute(&advance, &moved),
            client.execute(&notify, &told),
        )
    };
    if within == Within::Caller {
        written.await.map_err(Failure::Nothing)?;
        return Ok(outcomes);
    }
    match tokio::join!(written, client.batch_execute("COMMIT")) {
        (Ok(_), Ok(())) => Ok(outcomes),
        // The server refused a statement: the transaction was aborted, and
        // its COMMIT rolled it back.
        (Err(e), _) if e.as_db_error().is_some() => Err(Failure::Nothing(e)),
        (Err(e), _) | (_, Err(e)) => Err(if e.as_db_error().is_some() {
            Failure::Nothing(e)
        } else {
            Failure::Unknown(e)
        }),
    }
}

/// The columns of the rows to insert, as arrays.
#[derive(Default)]
struct Rows {
    positions: Vec<i64>,
    streams: Vec<String>,
    versions: Vec<i64>,
    keys: Vec<Option<String>>,
    bodies: Vec<String>,
}

/// The writer of a store: takes the appends sent to it, as many as are
/// waiting (up to [`MOST_APPENDS`]), appends them in one transaction and
/// answers each. Ends when every sender is gone.
pub(crate) async fn write(server: Server, pool: Pool, mut appends: mpsc::Receiver<Pending>) {
    let mut gathered = Vec::new();
    while appends.recv_many(&mut gathered, MOST_APPENDS).await > 0 {
        let count: usize = gathered.iter().map(|p| p.append.events.len()).sum();
        let (answers, batch): (Vec<_>, Vec<_>) = gathered.drain(..).map(|p| (p.answer, p.append)).unzip();
        match commit(&server, &pool, batch).await {
            Ok(outcomes) => {
                let mut written = 0;
                for (answer, outcome) in answers.into_iter().zip(outcomes) {
                    if let Ok(done) = &outcome {
                        written += (done.last_position.0 + 1 - done.first_position.0) as usize;
                    }
                    let _ = answer.send(outcome);
                }
                if written > 0 {
                    bookshelf_core::telemetry::appended("postgres", written);
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
    batch: Vec<Append>,
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let client = server.get(pool).await?;
    match append_all(&client, batch, Within::Own, server.channel()).await {
        Ok(outcomes) => Ok(outcomes),
        Err(failure) => {
            // The connection may be inside a failed transaction, or
            // broken: it does not go back to the pool.
            drop(deadpool_postgres::Object::take(client));
            Err(match failure {
                Failure::Nothing(e) => server.error("cannot append (nothing was stored)", e),
                Failure::Unknown(e) => server.error(
                    "the connection failed while the append was committed: its outcome is unknown",
                    e,
                ),
            })
        }
    }
}
