//! Books by author as a SQL table: the same answers as the in-memory
//! `Authors` view, from a table that grows on disk, not in memory.

use bookshelf::sqlite::table::{rusqlite, TableView, Tables};
use bookshelf::Envelope;

use crate::api::AuthorsQuery;
use crate::books::{AuthorSummary, BookEvent, ShelvedBook};

/// One row per book on the shelf, with its author; removed books leave.
pub struct AuthorsTable;

impl TableView for AuthorsTable {
    type Event = BookEvent;

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS shelved_books (
                 id TEXT PRIMARY KEY,
                 author TEXT NOT NULL,
                 title TEXT NOT NULL,
                 isbn TEXT NOT NULL,
                 reads INTEGER NOT NULL DEFAULT 0,
                 stars INTEGER
             );
             CREATE INDEX IF NOT EXISTS shelved_books_by_author ON shelved_books (author, title, id);",
        )
    }

    fn apply(&self, db: &rusqlite::Transaction<'_>, event: &Envelope<BookEvent>) -> rusqlite::Result<()> {
        let id = event.stream_id.entity_id();
        match &event.payload {
            BookEvent::BookAdded { title, author, isbn } => db.execute(
                "INSERT OR REPLACE INTO shelved_books (id, author, title, isbn) VALUES (?1, ?2, ?3, ?4)",
                [id, author, title, isbn],
            ),
            BookEvent::BookRead { .. } => db.execute("UPDATE shelved_books SET reads = reads + 1 WHERE id = ?1", [id]),
            BookEvent::BookRated { stars } => db.execute(
                "UPDATE shelved_books SET stars = ?2 WHERE id = ?1",
                rusqlite::params![id, stars],
            ),
            BookEvent::BookRemoved => db.execute("DELETE FROM shelved_books WHERE id = ?1", [id]),
        }?;
        Ok(())
    }
}

/// The authors queries, answered with SQL.
#[derive(Clone)]
pub struct AuthorsTableHandle(pub Tables);

impl AuthorsTableHandle {
    fn answer<R: Default>(&self, query: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R>) -> R {
        self.0.query(query).unwrap_or_else(|error| {
            tracing::error!(%error, "the authors table cannot be read");
            R::default()
        })
    }
}

impl AuthorsQuery for AuthorsTableHandle {
    fn list(&self) -> Vec<AuthorSummary> {
        self.answer(|db| {
            let mut rows = db.prepare_cached(
                "SELECT author, COUNT(*), SUM(reads) FROM shelved_books GROUP BY author ORDER BY author",
            )?;
            let list = rows
                .query_map([], |r| {
                    Ok(AuthorSummary {
                        author: r.get(0)?,
                        books: r.get::<_, i64>(1)? as usize,
                        reads: r.get::<_, i64>(2)? as u32,
                    })
                })?
                .collect();
            list
        })
    }

    fn books_of(&self, author: &str) -> Option<Vec<ShelvedBook>> {
        let books: Vec<ShelvedBook> = self.answer(|db| {
            let mut rows = db.prepare_cached(
                "SELECT id, title, isbn, reads, stars FROM shelved_books WHERE author = ?1 ORDER BY title, id",
            )?;
            let books = rows
                .query_map([author], |r| {
                    Ok(ShelvedBook {
                        id: r.get(0)?,
                        title: r.get(1)?,
                        isbn: r.get(2)?,
                        reads: r.get::<_, i64>(3)? as u32,
                        stars: r.get::<_, Option<i64>>(4)?.map(|s| s as u8),
                    })
                })?
                .collect();
            books
        });
        (!books.is_empty()).then_some(books)
    }
}
