//! The "last read books" service: the five most recently read books as a JSON
//! list on `GET /`.
//!
//! With no flags it runs on the embedded default: an in-memory event store,
//! with the books aggregate in the same process, so that you can add a book,
//! mark it read and see it appear:
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
//! `--id`, `--tags`) once it listens, and deregisters on shutdown.

#[path = "../common/api.rs"]
mod api;
#[path = "../common/books.rs"]
mod books;

use std::sync::Arc;

use bookshelf::{InMemoryStore, ProjectionRunner, Repository, UnknownEvents};
use bookshelf_kafka::{KafkaConfig, KafkaProjection};
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
    #[command(flatten)]
    service: api::ServiceFlags,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    api::init_tracing();
    let args = Args::parse();
    let listener = args.service.listen(args.port).await?;
    let local = listener.local_addr()?;

    let (app, stop_view): (axum::Router, StopView) = match &args.service.broker {
        None => embedded(),
        Some(broker) => from_kafka(broker, &args.service.topic).await?,
    };
    let app = app.merge(api::health_routes()).fallback(api::not_found);

    // Listening: now it is ready to be found.
    let registration = args.service.register(&args.name, local).await?;

    match &args.service.broker {
        None => {
            println!(
                "last_read is listening on http://{local}/ (embedded default: in-memory store, books in this process)"
            );
            println!("  GET  http://{local}/                  the last read books (also at /last-read)");
            println!("  GET  http://{local}/authors           books by author");
            println!("  POST http://{local}/books             add a book");
            println!("  POST http://{local}/books/ID/read     mark a book read");
            println!("  GET  http://{local}/health");
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

/// The view and the books aggregate on one in-memory store.
fn embedded() -> (axum::Router, StopView) {
    let store = InMemoryStore::new();
    let view = ProjectionRunner::<LastRead, _>::new("last-read", store.clone())
        .only_category("book")
        .start();
    let authors = ProjectionRunner::<Authors, _>::new("authors", store.clone())
        .only_category("book")
        .start();
    let books = Arc::new(api::BooksApi {
        books: Repository::<Book, _>::new(store.clone(), Clock::system()).with_cache(100_000),
        read_your_writes: vec![api::settle_on(view.handle()), api::settle_on(authors.handle())],
        new_id: None,
    });
    let app = api::last_read_routes(view.handle())
        .merge(api::authors_routes(authors.handle()))
        .merge(api::books_routes(books));
    let stop = async move {
        view.stop().await?;
        authors.stop().await
    };
    (app, Box::pin(stop))
}

/// The view alone, projected from the book events on Kafka.
async fn from_kafka(broker: &str, topic: &str) -> Result<(axum::Router, StopView), bookshelf::ProjectionError> {
    let config = KafkaConfig::new(broker, topic).partitions(3).create_topic(true);
    let view = KafkaProjection::<LastRead>::new("last-read", config)
        // The books topic may carry other book events this view ignores.
        .unknown_events(UnknownEvents::Skip)
        .start()
        .await?;
    let app = api::last_read_routes(view.handle());
    Ok((app, Box::pin(view.stop())))
}
