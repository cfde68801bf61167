//! What the bench files share.

#![allow(dead_code)] // each bench uses its own part

use bookshelf::{EventStore, Metadata, Repository};

use crate::books::{Book, BookCommand};

/// How many events a bench folds: 1,000,000 unless `BOOKSHELF_BENCH_EVENTS`
/// says otherwise (the test suite smoke-runs the benches on a few thousand).
pub fn events() -> u64 {
    std::env::var("BOOKSHELF_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

/// Adds `n` books, then reads each twice: 3n commands, each a load, a
/// decision and an append.
pub async fn add_then_read_twice<S: EventStore>(books: &Repository<Book, S>, n: u64) {
    for id in 0..n {
        let add = BookCommand::Add {
            title: format!("Book {id}"),
            author: "Somebody".into(),
            isbn: "9780441013593".into(),
        };
        books.execute(&id.to_string(), &add, Metadata::default()).await.unwrap();
    }
    for _ in 0..2 {
        for id in 0..n {
            books
                .execute(&id.to_string(), &BookCommand::MarkRead, Metadata::default())
                .await
                .unwrap();
        }
    }
}
