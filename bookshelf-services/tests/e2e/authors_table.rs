//! Books by author as a SQL table (`bookshelf_services::tables`) answers
//! exactly as the in-memory `Authors` view over the same events, and keeps
//! its rows and checkpoint across a restart.

use api::AuthorsQuery;
use books::{Authors, BookEvent};
use bookshelf::sqlite::table::TableFold;
use bookshelf::{codec, EventStore, ExpectedVersion, InMemoryStore, NewEvent, StreamId, View};
use bookshelf_services::api;
use bookshelf_services::books;
use bookshelf_services::tables;

/// Adds, reads, ratings and removals over 40 books by 6 authors.
fn events() -> Vec<(String, BookEvent)> {
    let mut events = Vec::new();
    for n in 0..40u32 {
        events.push((
            format!("{n}"),
            BookEvent::BookAdded {
                title: format!("Title {}", (n * 7) % 13),
                author: format!("Author {}", n % 6),
                isbn: "9780441013593".into(),
            },
        ));
    }
    for n in 0..120u32 {
        let book = (n * 11) % 40;
        let event = match n % 4 {
            0 | 1 => BookEvent::BookRead {
                title: String::new(),
                author: String::new(),
                read_at: chrono::Utc::now(),
            },
            2 => BookEvent::BookRated {
                stars: (n % 5 + 1) as u8,
            },
            _ if n % 17 == 3 => BookEvent::BookRemoved,
            _ => continue,
        };
        events.push((format!("{book}"), event));
    }
    events
}

#[tokio::test]
async fn the_authors_table_answers_as_the_view_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = InMemoryStore::new();
    let mut in_memory = Authors::default();
    let path = dir.path().join("views.sqlite");
    let table = TableFold::open("authors", &path, tables::AuthorsTable)
        .unwrap()
        .follow(store.clone())
        .batch_size(7)
        .start();
    let mut removed = std::collections::HashSet::new();
    for (id, event) in events() {
        if removed.contains(&id) {
            continue; // a removed book takes no more commands
        }
        if event == BookEvent::BookRemoved {
            removed.insert(id.clone());
        }
        let encoded = codec::encode(&event).unwrap();
        let stream = StreamId::for_aggregate("book", &id);
        let written = store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent {
                    event_id: Default::default(),
                    event_type: encoded.event_type,
                    schema_version: encoded.schema_version,
                    metadata: Default::default(),
                    payload: encoded.payload,
                }],
            )
            .await
            .unwrap();
        let recorded = store.read_stream(&stream, written.version).await.unwrap();
        in_memory.apply(
            codec::EventCodec::<BookEvent>::new()
                .decode_envelope(&recorded[0])
                .unwrap(),
        );
    }
    let head = store.head().await.unwrap();
    table.handle().wait_for(head).await.unwrap();
    let sql = tables::AuthorsTableHandle(table.reads().clone());
    let view = api::AuthorsView(bookshelf::ViewState::new(in_memory.clone()));
    assert_eq!(sql.list(), view.list());
    assert!(!view.list().is_empty());
    for n in 0..7 {
        let author = format!("Author {n}");
        assert_eq!(sql.books_of(&author), view.books_of(&author), "{author}");
    }
    table.stop().await.unwrap();

    // Started again: the rows and the checkpoint were kept; nothing is
    // applied twice.
    let table = TableFold::open("authors", &path, tables::AuthorsTable)
        .unwrap()
        .follow(store.clone())
        .start();
    table.handle().wait_for(head).await.unwrap();
    assert_eq!(tables::AuthorsTableHandle(table.reads().clone()).list(), view.list());
    table.stop().await.unwrap();
}
