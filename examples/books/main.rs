//! The books service: the `Book` aggregate behind HTTP.
//!
//! ```text
//! cargo run --example books                      # in-memory store, port 8088
//! cargo run --example books -- --broker 127.0.0.1:9092 --topic books --consul http://127.0.0.1:8500
//! ```
//!
//! Commands: `POST /books`, `POST /books/{id}/read`, `PUT /books/{id}/rating`,
//! `DELETE /books/{id}`, each with an optional `If-Match: "<version>"`.
//! Queries: `GET /books/{id}` (with its version as `ETag`) and the book's
//! event log at `GET /books/{id}/events`. Validation errors are 400, unknown
//! books 404, removed books 410, version conflicts 409, all with a JSON
//! `{"error": …}` body. An `x-correlation-id` header ends up in the events'
//! metadata.

#[path = "../common/api.rs"]
mod api;
#[path = "../common/books.rs"]
mod books;

use std::sync::Arc;
use std::time::Duration;

use bookshelf::{EventStore, InMemoryStore, Repository};
use bookshelf_kafka::{KafkaConfig, KafkaStore};
use clap::Parser;

use books::{Book, Clock};

/// The books aggregate over HTTP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8088)]
    port: u16,
    /// The service name to register under.
    #[arg(long, default_value = "books")]
    name: String,
    #[command(flatten)]
    service: api::ServiceFlags,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    api::init_tracing();
    let args = Args::parse();
    match &args.service.broker {
        None => serve(&args, InMemoryStore::new(), "in-memory store").await?,
        Some(broker) => {
            let config = KafkaConfig::new(broker.as_str(), args.service.topic.as_str())
                .partitions(3)
                .create_topic(true);
            let store = KafkaStore::open(config).await?;
            serve(&args, store.clone(), "Kafka").await?;
            store.flush(Duration::from_secs(10)).await?;
        }
    }
    tracing::info!("books stopped");
    Ok(())
}

async fn serve<S: EventStore>(args: &Args, store: S, kind: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = args.service.listen(args.port).await?;
    let local = listener.local_addr()?;
    let api = Arc::new(api::BooksApi {
        books: Repository::<Book, _>::new(store, Clock::system()).with_cache(100_000),
        read_your_writes: Vec::new(),
    });
    let app = api::books_routes(api)
        .merge(api::health_routes())
        .fallback(api::not_found);

    let registration = args.service.register(&args.name, local).await?;
    println!("books is listening on http://{local}/ ({kind})");
    api::serve(listener, app, registration).await
}
