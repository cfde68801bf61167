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

/// The migrations, in order: the schema's version is how many were applied.
const MIGRATIONS: &[&str] = &[
    // 1: events with one global order, snapshots, saved views, table views' checkpoints.
    "
    CREATE TABLE bookshelf_events (
        position bigint PRIMARY KEY,
        stream text NOT NULL,
        version bigint NOT NULL,
        idempotency_key text,
        body text NOT NULL,
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
    ",
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
