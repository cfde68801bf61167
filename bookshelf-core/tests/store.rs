//! The behaviour every event store must have (see `bookshelf-testkit`), run
//! over the in-memory store and its snapshots.

use bookshelf_core::{InMemorySnapshots, InMemoryStore};

bookshelf_testkit::store_suite!(async || ((), InMemoryStore::new()), async || (
    (),
    InMemorySnapshots::new()
));
