//! The checkpoints saved in a SQLite file, listed for tools: views' (the
//! `views` table a [`SqliteViewStore`](crate::SqliteViewStore) writes) and
//! table views' (the `bookshelf_checkpoints` table of
//! [`TableFold`](crate::table::TableFold)).

use std::path::Path;
use std::time::Duration;

use bookshelf_core::{Checkpoint, SavedCheckpoint, StoreError};
use rusqlite::{Connection, OpenFlags};

/// The checkpoints saved in the SQLite file at `path`, by name within each
/// kind: empty for a file with neither table. The file is opened read-only
/// and left as it is, while its writers go on.
///
/// # Errors
/// A [`StoreError::Backend`] naming the file when it cannot be opened or
/// read, or holds a checkpoint that does not decode.
pub fn saved_checkpoints(path: impl AsRef<Path>) -> Result<Vec<SavedCheckpoint>, StoreError> {
    let path = path.as_ref();
    let failed =
        |what: &str, e: &dyn std::fmt::Display| StoreError::Backend(format!("{}: {what}: {e}", path.display()).into());
    let connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| failed("cannot open", &e))?;
    connection
        .busy_timeout(Duration::from_secs(10))
        .map_err(|e| failed("cannot open", &e))?;
    let mut saved = Vec::new();
    for (kind, table, position) in [
        ("view", "views", "checkpoint"),
        ("table", "bookshelf_checkpoints", "position"),
    ] {
        let exists: bool = connection
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                [table],
                |row| row.get(0),
            )
            .map_err(|e| failed("not a SQLite database", &e))?;
        if !exists {
            continue;
        }
        let mut statement = connection
            .prepare(&format!("SELECT name, {position}, offsets FROM {table} ORDER BY name"))
            .map_err(|e| failed("cannot read", &e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| failed("cannot read", &e))?;
        for row in rows {
            let (name, position, offsets) = row.map_err(|e| failed("cannot read", &e))?;
            let checkpoint = Checkpoint::from_saved_columns(position, &offsets)
                .map_err(|e| failed(&format!("the checkpoint of {name} does not decode"), &e))?;
            saved.push(SavedCheckpoint { name, kind, checkpoint });
        }
    }
    Ok(saved)
}
