//! The tables, and the versioned migrations that make them.
//!
//! Each migration is applied once, in order, inside one transaction that
//! holds an advisory lock: several instances starting at once on one
//! database apply each migration exactly once (the others wait, then find
//! it done). A database whose schema is newer than this build knows is
//! refused, and nothing of it is touched.

use tokio_postgres::Client;

use crate::server::Server;
use bookshelf_core::StoreError;

/// The advisory lock taken while migrating ("BkSh").
const MIGRATION_LOCK: i64 = 0x426b_5368;

/// The call that locks the log for an append until its transaction ends:
/// an advisory lock in the two-key space ("BkSh", the position sequence's
/// oid), so stores in separate schemas of one database do not wait for
/// each other. Every append takes it before it takes a position (see the
/// `append` module).
macro_rules! lock_the_log {
    () => {
        "pg_advisory_xact_lock(1114330984, 'bookshelf_positions'::regclass::oid::int)"
    };
}
pub(crate) use lock_the_log;

/// The migrations, in order: the schema's version is how many were applied.
const MIGRATIONS: &[&str] = &[
    // 1: events with one global order, the append function, snapshots,
    // saved views, table views' checkpoints.
    r#"
    CREATE TABLE bookshelf_events (
        position bigint PRIMARY KEY,
        stream text NOT NULL,
        version bigint NOT NULL,
        event_id uuid NOT NULL,
        event_type text NOT NULL,
        schema_version int NOT NULL,
        recorded_at timestamptz NOT NULL,
        idempotency_key text,
        metadata json NOT NULL,
        payload json NOT NULL,
        UNIQUE (stream, version)
    );
    CREATE INDEX bookshelf_events_by_key ON bookshelf_events (stream, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    -- The next position: the one row every append locks (see the crate docs).
    CREATE TABLE bookshelf_head (
        id int PRIMARY KEY CHECK (id = 1),
        next bigint NOT NULL
    );
    INSERT INTO bookshelf_head (id, next) VALUES (1, 0);
    -- Appends, in order: append i writes counts[i] events (the next ones
    -- of the event arrays) to streams[i] if the stream is at expected[i]
    -- (-1: any version). For each append: the stream's version after it
    -- and its first position (NULLs for a conflict), and the version found.
    CREATE FUNCTION bookshelf_append(
        streams text[], expected bigint[], counts int[],
        event_ids uuid[], event_types text[], schema_versions int[],
        keys text[], metadata json[], payloads json[], channel text,
        OUT o_versions bigint[], OUT o_firsts bigint[], OUT o_found bigint[]
    ) LANGUAGE plpgsql AS $$
    DECLARE
        next_position bigint;
        start bigint;
        current bigint;
        taken int := 0;
        n int;
    BEGIN
        -- Locked until the commit: positions are taken in commit order.
        SELECT h.next INTO next_position FROM bookshelf_head h WHERE h.id = 1 FOR UPDATE;
        start := next_position;
        -- One entry per append, from 1: NULL until set.
        o_versions := array_fill(NULL::bigint, ARRAY[coalesce(array_length(streams, 1), 0)]);
        o_firsts := o_versions;
        o_found := o_versions;
        FOR i IN 1 .. coalesce(array_length(streams, 1), 0) LOOP
            n := counts[i];
            SELECT e.version INTO current FROM bookshelf_events e
                WHERE e.stream = streams[i] ORDER BY e.version DESC LIMIT 1;
            current := coalesce(current, 0);
            o_found[i] := current;
            IF expected[i] = -1 OR expected[i] = current THEN
                IF n = 1 THEN
                    INSERT INTO bookshelf_events (position, stream, version, event_id, event_type,
                        schema_version, recorded_at, idempotency_key, metadata, payload)
                    VALUES (next_position, streams[i], current + 1, event_ids[taken + 1],
                        event_types[taken + 1], schema_versions[taken + 1], now(), keys[taken + 1],
                        metadata[taken + 1], payloads[taken + 1]);
                ELSE
                    INSERT INTO bookshelf_events (position, stream, version, event_id, event_type,
                        schema_version, recorded_at, idempotency_key, metadata, payload)
                    SELECT next_position + k - 1, streams[i], current + k, event_ids[taken + k],
                        event_types[taken + k], schema_versions[taken + k], now(), keys[taken + k],
                        metadata[taken + k], payloads[taken + k]
                    FROM generate_series(1, n) AS k;
                END IF;
                o_versions[i] := current + n;
                o_firsts[i] := next_position;
                next_position := next_position + n;
            END IF;
            taken := taken + n;
        END LOOP;
        IF next_position <> start THEN
            UPDATE bookshelf_head SET next = next_position WHERE id = 1;
            PERFORM pg_notify(channel, next_position::text);
        END IF;
    END
    $$;
    CREATE TABLE bookshelf_snapshots (
        stream text PRIMARY KEY,
        version bigint NOT NULL,
        taken_at text NOT NULL,
        state text NOT NULL
    );
    CREATE TABLE bookshelf_views (
        name text PRIMARY KEY,
        checkpoint bigint NOT NULL,
        offsets text NOT NULL,
        state text NOT NULL
    );
    CREATE TABLE bookshelf_checkpoints (
        name text PRIMARY KEY,
        position bigint NOT NULL,
        offsets text NOT NULL
    );
    "#,
    // 2: positions from a sequence, taken under the log's lock, instead of
    // the head row (no row written per append: see the `append` module).
    concat!(
        r#"
    CREATE SEQUENCE bookshelf_positions MINVALUE 0 START WITH 0;
    SELECT setval('bookshelf_positions', next, false) FROM bookshelf_head WHERE id = 1;
    DROP TABLE bookshelf_head;
    CREATE OR REPLACE FUNCTION bookshelf_append(
        streams text[], expected bigint[], counts int[],
        event_ids uuid[], event_types text[], schema_versions int[],
        keys text[], metadata json[], payloads json[], channel text,
        OUT o_versions bigint[], OUT o_firsts bigint[], OUT o_found bigint[]
    ) LANGUAGE plpgsql AS $$
    DECLARE
        next_position bigint;
        current bigint;
        taken int := 0;
        n int;
    BEGIN
        -- Held until the commit: positions are taken in commit order.
        PERFORM "#,
        lock_the_log!(),
        r#";
        -- One entry per append, from 1: NULL until set.
        o_versions := array_fill(NULL::bigint, ARRAY[coalesce(array_length(streams, 1), 0)]);
        o_firsts := o_versions;
        o_found := o_versions;
        FOR i IN 1 .. coalesce(array_length(streams, 1), 0) LOOP
            n := counts[i];
            SELECT e.version INTO current FROM bookshelf_events e
                WHERE e.stream = streams[i] ORDER BY e.version DESC LIMIT 1;
            current := coalesce(current, 0);
            o_found[i] := current;
            IF expected[i] = -1 OR expected[i] = current THEN
                -- The first position is taken only once something is written.
                IF next_position IS NULL THEN
                    next_position := nextval('bookshelf_positions');
                END IF;
                IF n = 1 THEN
                    INSERT INTO bookshelf_events (position, stream, version, event_id, event_type,
                        schema_version, recorded_at, idempotency_key, metadata, payload)
                    VALUES (next_position, streams[i], current + 1, event_ids[taken + 1],
                        event_types[taken + 1], schema_versions[taken + 1], now(), keys[taken + 1],
                        metadata[taken + 1], payloads[taken + 1]);
                ELSE
                    INSERT INTO bookshelf_events (position, stream, version, event_id, event_type,
                        schema_version, recorded_at, idempotency_key, metadata, payload)
                    SELECT next_position + k - 1, streams[i], current + k, event_ids[taken + k],
                        event_types[taken + k], schema_versions[taken + k], now(), keys[taken + k],
                        metadata[taken + k], payloads[taken + k]
                    FROM generate_series(1, n) AS k;
                END IF;
                o_versions[i] := current + n;
                o_firsts[i] := next_position;
                next_position := next_position + n;
            END IF;
            taken := taken + n;
        END LOOP;
        IF next_position IS NOT NULL THEN
            -- The positions written are taken: the next append starts after them.
            PERFORM setval('bookshelf_positions', next_position - 1);
            PERFORM pg_notify(channel, next_position::text);
        END IF;
    END
    $$;
    "#
    ),
    // 3: dead letters, kept where the views are.
    r#"
    CREATE TABLE bookshelf_dead_letters (
        id bigserial PRIMARY KEY,
        projection text NOT NULL,
        location text NOT NULL,
        reason text NOT NULL,
        set_aside_at timestamptz NOT NULL DEFAULT now(),
        -- The event's envelope as Bookshelf writes it, when it was an event;
        event json,
        -- else the record as its log held it (headers: [name, hex] pairs).
        raw_key bytea,
        raw_body bytea,
        raw_headers json
    );
    CREATE INDEX bookshelf_dead_letters_by_projection ON bookshelf_dead_letters (projection, id);
    "#,
    // 4: the re-drive queue: a letter's ticket while it waits for its
    // runner, handed out in order under the queue's advisory lock.
    r#"
    ALTER TABLE bookshelf_dead_letters ADD COLUMN ticket bigint;
    CREATE SEQUENCE bookshelf_redrive_tickets;
    CREATE INDEX bookshelf_dead_letters_queued ON bookshelf_dead_letters (projection, ticket)
        WHERE ticket IS NOT NULL;
    "#,
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the database's schema to [`SCHEMA_VERSION`], or refuses a newer
/// one. Returns the version found before.
pub(crate) async fn migrate(client: &mut Client, server: &Server) -> Result<i32, StoreError> {
    let failed = |what: &str, e: tokio_postgres::Error| server.error(what, e);
    let tx = client
        .transaction()
        .await
        .map_err(|e| failed("cannot start the migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| failed("cannot take the migration lock", e))?;
    if let Some(schema) = server.schema() {
        // A checked name (see `Server::parse`): safe to spell out.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(|e| failed("cannot create the store's schema", e))?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS bookshelf_schema (
            id int PRIMARY KEY CHECK (id = 1),
            version int NOT NULL
        )",
    )
    .await
    .map_err(|e| failed("cannot create the schema table", e))?;
    let found: i32 = tx
        .query_opt("SELECT version FROM bookshelf_schema WHERE id = 1", &[])
        .await
        .map_err(|e| failed("cannot read the schema version", e))?
        .map(|row| row.get(0))
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(server.refused(format!(
            "its schema was written by a newer Bookshelf (version {found}; this one knows up to {SCHEMA_VERSION}); \
             nothing was changed"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(migration)
            .await
            .map_err(|e| failed(&format!("migration {} failed", index + 1), e))?;
    }
    if found < SCHEMA_VERSION {
        tx.execute(
            "INSERT INTO bookshelf_schema (id, version) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(|e| failed("cannot record the schema version", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| failed("cannot commit the migration", e))?;
    if found < SCHEMA_VERSION {
        tracing::info!(database = %server, from = found, to = SCHEMA_VERSION, "migrated the schema");
    }
    Ok(found)
}

/// The schema version of the database, without changing anything (0 when
/// it has no Bookshelf tables).
pub(crate) async fn version(client: &Client, server: &Server) -> Result<i32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('bookshelf_schema') IS NOT NULL", &[])
        .await
        .map_err(|e| server.error("cannot read the schema version", e))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_opt("SELECT version FROM bookshelf_schema WHERE id = 1", &[])
        .await
        .map_err(|e| server.error("cannot read the schema version", e))?
        .map(|row| row.get(0))
        .unwrap_or(0))
}
