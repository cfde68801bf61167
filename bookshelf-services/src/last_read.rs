//! The "last read books" service: the five most recently read books as a JSON
//! list on `GET /`.
//!
//! With no flags it runs on the embedded default: a SQLite event store in
//! `bookshelf-data/` (`--data DIR`), with the books aggregate in the same
//! process and its views saved beside it, so that you can add a book, mark
//! it read, see it appear, and find it again after a restart
//! (`--in-memory` keeps nothing):
//!
//! ```text
//! cargo run --example last_read
//! curl -s -X POST localhost:8087/books -H 'content-type: application/json' \
//!      -d '{"title":"Dune","author":"Frank Herbert","isbn":"9780441013593"}'
//! curl -s -X POST localhost:8087/books/<id>/read
//! curl -s localhost:8087/
//! ```
//!
//! With `--broker` it is only the view: it projects the book events of
//! `--topic` from Kafka. With `--consul` it registers itself (`--name`,
//! `--id`, `--tags`) once it listens, and deregisters on shutdown. With
//! `--postgres URL` (or `DATABASE_URL`) the books and the views keep their
//! events and state in that PostgreSQL database.

use crate::{api, books, docs, tables};
use std::path::PathBuf;
use std::sync::Arc;

use api::{Backend, KeepsViews};
use bookshelf::postgres::PostgresStore;
use bookshelf::sqlite::table::TableFold;
use bookshelf::sqlite::SqliteStore;
use bookshelf::versions::{versioned, versions_of, whole, Versions};
use bookshelf::{EventSource, EventStore, InMemoryStore, ProjectionRunner, Repository, RetryPolicy};
use bookshelf_kafka::{KafkaConfig, KafkaDeadLetters, KafkaLog};
use clap::Parser;

use books::{Authors, Book, Clock, LastRead};

/// The five most recently read books, as a JSON list on `GET /`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8087)]
    port: u16,
    /// The service name to register under.
    #[arg(long, default_value = "last-read")]
    name: String,
    /// Where the embedded default keeps its events (`bookshelf.sqlite`) and
    /// views (`views.sqlite`).
    #[arg(long, default_value = "bookshelf-data")]
    data: PathBuf,
    /// Rebuild the views from the events at start, instead of resuming them
    /// from their checkpoints.
    #[arg(long)]
    rebuild: bool,
    #[command(flatten)]
    service: api::ServiceFlags,
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _logging = api::init_tracing();
    let args = Args::parse();
    let listener = args.service.listen(args.port).await?;
    let local = listener.local_addr()?;

    let (app, stop_view, kind): (docs::Api, StopView, String) = match args.service.backend() {
        Backend::InMemory => {
            let (app, stop) = embedded(InMemoryStore::new(), None, false).await?;
            (app, stop, "in-memory store: nothing is kept".to_owned())
        }
        Backend::Embedded => {
            let store = SqliteStore::open(args.data.join("bookshelf.sqlite"))?;
            let views = args.data.join("views.sqlite");
            let (app, stop) = embedded(store.clone(), Some(views), args.rebuild).await?;
            (app, stop, format!("events and views kept in {}", args.data.display()))
        }
        // The books and the views on one database; the authors view is
        // built in memory from the log at start.
        Backend::Postgres(url) => {
            let store = PostgresStore::connect(url).await?;
            let (app, stop) = embedded(store, None, args.rebuild).await?;
            (app, stop, "events and views kept in PostgreSQL".to_owned())
        }
        Backend::Kafka(broker) => {
            let (app, stop) = from_kafka(broker, &args.service.topic).await?;
            (app, stop, String::new())
        }
    };
    let app = app
        .merge(api::health_routes())
        .serve_docs("last_read API")
        .fallback(api::not_found);

    // Listening: now it is ready to be found.
    let registration = args.service.register(&args.name, local).await?;

    match &args.service.broker {
        None => {
            println!("last_read is listening on http://{local}/ (books in this process; {kind})");
            println!("  GET  http://{local}/                  the last read books (also at /last-read)");
            println!("  GET  http://{local}/authors           books by author");
            println!("  POST http://{local}/books             add a book");
            println!("  POST http://{local}/books/ID/read     mark a book read");
            println!("  GET  http://{local}/health");
            println!("  GET  http://{local}/docs/             the API, described (also /openapi.json)");
            println!("Try:");
            println!(
                "  id=$(curl -s -X POST http://{local}/books -H 'content-type: application/json' \\\n     -d '{{\"title\":\"Dune\",\"author\":\"Frank Herbert\",\"isbn\":\"9780441013593\"}}' | sed 's/.*\"id\":\"\\([^\"]*\\)\".*/\\1/')"
            );
            println!("  curl -s -X POST http://{local}/books/$id/read");
            println!("  curl -s http://{local}/");
        }
        Some(broker) => {
            println!(
                "last_read is listening on http://{local}/ (projecting topic {} from {broker})",
                args.service.topic
            );
            println!("  curl -s http://{local}/");
        }
    }

    api::serve(listener, app, registration).await?;
    stop_view.await?;
    tracing::info!("last_read stopped");
    Ok(())
}

type StopView = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), bookshelf::ProjectionError>> + Send>>;

/// The views and the books aggregate on one store: the last read books as
/// a view saved in the store (when it keeps views, with which of its
/// versions serves), the authors as a SQL table in `tables` (or in memory
/// without one).
async fn embedded<S>(
    store: S,
    tables: Option<PathBuf>,
    rebuild: bool,
) -> Result<(docs::Api, StopView), Box<dyn std::error::Error>>
where
    S: EventStore + EventSource + Clone + KeepsViews,
{
    // Each version of the view (the first named `last-read`, the next
    // `last-read@v2`, …) saved and setting letters aside apart.
    let version = {
        let store = store.clone();
        move |version: u32, rebuild: bool| {
            let name = versioned("last-read", version);
            let mut view = ProjectionRunner::<LastRead, _>::new(name.clone(), store.clone()).only_category("book");
            if let Some(saved) = store.saved_view(&name) {
                view = view.persist_to(saved).save_every(100);
            }
            if let Some(dead_letters) = store.dead_letters() {
                view = view.dead_letters(dead_letters);
            }
            if rebuild {
                view = view.rebuild();
            }
            view.start()
        }
    };
    // The version that served before a restart serves again.
    let memory: Box<dyn bookshelf::ViewStore> = match store.saved_view(&versions_of("last-read")) {
        Some(memory) => memory,
        None => Box::new(bookshelf::InMemoryViewStore::new()),
    };
    let view = Versions::open(memory, |number| version(number, rebuild), whole).await?;
    // A dropped version's saved state and letters are removed with it.
    let view = api::forgotten_when_dropped(view, "last-read", store.clone());
    // A version built beside the one serving starts from the start of the log.
    api::rebuildable("last-read", view.clone(), whole, move |number| version(number, true));
    let mut settle = vec![api::settle_on_versions(view.clone())];
    let (authors, stop_authors): (docs::Api, StopView) = match tables {
        Some(path) => {
            if rebuild && path.exists() {
                std::fs::remove_file(&path)?; // derived data: built again from the events
            }
            let table = TableFold::open("authors", path, tables::AuthorsTable)?
                .follow(store.clone())
                .start();
            settle.push(api::settle_on(table.handle()));
            (
                api::authors_routes(tables::AuthorsTableHandle(table.reads().clone())),
                Box::pin(table.stop()),
            )
        }
        // In memory, built from the log at start: rebuilt side by side too.
        None => {
            let store = store.clone();
            let start = move |number: u32| {
                let mut authors = ProjectionRunner::<Authors, _>::new(versioned("authors", number), store.clone())
                    .only_category("book");
                if let Some(dead_letters) = store.dead_letters() {
                    authors = authors.dead_letters(dead_letters);
                }
                authors.start()
            };
            let authors = Versions::new(1, start(1), whole);
            api::rebuildable("authors", authors.clone(), whole, start);
            settle.push(api::settle_on_versions(authors.clone()));
            (api::authors_routes(authors.clone()), Box::pin(authors.stop()))
        }
    };
    let streams = api::stream_routes(store.clone());
    let books = Arc::new(api::BooksApi {
        books: Repository::<Book, _>::new(store.clone(), Clock::system())
            .with_cache(100_000)
            // Several writers (instances on one database): a command without
            // If-Match is decided again on the newer state after a conflict.
            .with_retry(RetryPolicy::attempts(8)),
        read_your_writes: settle,
        new_id: None,
    });
    let app = api::last_read_routes(view.clone())
        .merge(authors)
        .merge(api::books_routes(books))
        .merge(streams);
    let stop = async move {
        view.stop().await?;
        stop_authors.await
    };
    Ok((app, Box::pin(stop)))
}

/// The view alone, projected from the book events on Kafka.
async fn from_kafka(broker: &str, topic: &str) -> Result<(docs::Api, StopView), Box<dyn std::error::Error>> {
    let config = KafkaConfig::new(broker, topic).partitions(3).create_topic(true);
    let dead_letters: Arc<dyn bookshelf::DeadLetters> = Arc::new(KafkaDeadLetters::open(&config).await?);
    // The books topic may carry other book events this view ignores (the
    // runner's default): only what does not decode is set aside.
    // Each version in this process's memory, built from the topic at start.
    let version = move |number: u32| {
        ProjectionRunner::<LastRead, _>::new(versioned("last-read", number), KafkaLog::new(config.clone()))
            .dead_letters(dead_letters.clone())
            .start()
    };
    let view = Versions::new(1, version(1), whole);
    api::rebuildable("last-read", view.clone(), whole, version);
    let app = api::last_read_routes(view.clone());
    Ok((app, Box::pin(view.stop())))
}
