//! The books service: the `Book` aggregate behind HTTP.
//!
//! ```text
//! cargo run --example books                      # events in bookshelf-data/books.sqlite, port 8088
//! cargo run --example books -- --postgres postgres://localhost/bookshelf   # or DATABASE_URL=...
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

pub mod owners;

use crate::{api, books};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::Backend;
use bookshelf::postgres::PostgresStore;
use bookshelf::sqlite::SqliteStore;
use bookshelf::{EventStore, InMemoryStore, Repository, RetryPolicy};
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
    /// Where the events are kept (`books.sqlite`), or, on Kafka, the local
    /// state (the events read, by stream), one file per topic and instance.
    #[arg(long, default_value = "bookshelf-data")]
    data: PathBuf,
    /// On Kafka: answer reads as before read barriers, from the owner's
    /// copy of the log as it stands (or this instance's, while ownership
    /// moves), without first reading the book's partition to its end. Reads
    /// may then be stale; this is here to measure what the barrier costs
    /// and to show that the tests find stale reads without it.
    #[arg(long, hide = true)]
    stale_reads: bool,
    #[command(flatten)]
    service: api::ServiceFlags,
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _logging = api::init_tracing();
    let args = Args::parse();
    let listener = args.service.listen(args.port).await?;
    let local = listener.local_addr()?;
    match args.service.backend() {
        Backend::InMemory => serve(&args, listener, InMemoryStore::new(), None, "in-memory store").await?,
        Backend::Embedded => {
            let path = args.data.join("books.sqlite");
            let store = SqliteStore::open(&path)?;
            let kind = format!("events kept in {}", path.display());
            serve(&args, listener, store, None, &kind).await?
        }
        // Any number of instances on one database: each serves every book,
        // the database's optimistic concurrency picks one winner of a race.
        Backend::Postgres(url) => {
            let store = PostgresStore::connect(url).await?;
            serve(&args, listener, store, None, "events kept in PostgreSQL").await?
        }
        Backend::Kafka(broker) => {
            let config = KafkaConfig::new(broker, args.service.topic.as_str())
                .partitions(3)
                .create_topic(true);
            let id = args
                .service
                .id
                .clone()
                .unwrap_or_else(|| format!("{}-{}", args.name, local.port()));
            let state = args.data.join(format!("{}-{id}.sqlite", args.service.topic));
            let builder = KafkaStore::builder(config)
                .member(&id, format!("http://{local}"))
                .state_file(state);
            let passing = bookshelf_consul::Passing::new();
            let kind = if args.service.consul_config().is_some() {
                // Instances share the partitions out among those Consul lists.
                "Kafka, partitions shared through Consul"
            } else {
                "Kafka, the one writer of its topic"
            };
            let builder = args.service.share_partitions(builder, &args.name, &id, &passing)?;
            let store = builder.open().await?;
            let owners = owners::Owners::start(store.clone(), !args.stale_reads)?;
            serve(&args, listener, store.clone(), Some((owners, passing)), kind).await?;
            store.flush(Duration::from_secs(10)).await?;
        }
    }
    tracing::info!("books stopped");
    Ok(())
}

async fn serve<S: EventStore + Clone>(
    args: &Args,
    listener: tokio::net::TcpListener,
    store: S,
    kafka: Option<(Arc<owners::Owners>, bookshelf_consul::Passing)>,
    kind: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let owners = kafka.as_ref().map(|(owners, _)| Arc::clone(owners));
    let local = listener.local_addr()?;
    let new_id: Option<api::NewId> = owners.clone().map(|o| Arc::new(move || o.new_id()) as api::NewId);
    // A topic has no index of its streams to list.
    let streams = match kafka {
        Some(_) => api::stream_event_routes(store.clone()),
        None => api::stream_routes(store.clone()),
    };
    let api = Arc::new(api::BooksApi {
        books: Repository::<Book, _>::new(store, Clock::system())
            .with_cache(100_000)
            // Several writers (instances on one database): a command without
            // If-Match is decided again on the newer state after a conflict.
            .with_retry(RetryPolicy::attempts(8)),
        read_your_writes: Vec::new(),
        new_id,
    });
    let mut app = api::books_routes(api);
    if let Some(owners) = owners.clone() {
        let route_to_owner = Arc::clone(&owners);
        app = app
            .map_router(|router| {
                router.layer(axum::middleware::from_fn_with_state(
                    route_to_owner,
                    owners::route_to_owner,
                ))
            })
            .merge(owners::routes(owners));
    }
    // Any stream this instance keeps, not routed to an owner: the console
    // asks every instance.
    let app = app
        .merge(streams)
        .merge(api::health_routes())
        .serve_docs("books API")
        .fallback(api::not_found);

    let registration = match kafka {
        // On Kafka: healthy while the broker answers, so that an instance
        // cut off from it gives its partitions up within the check's TTL.
        Some((owners, passing)) => {
            args.service
                .register_on_kafka(&args.name, local, &owners.store, passing)
                .await?
        }
        None => args.service.register(&args.name, local).await?,
    };
    println!("books is listening on http://{local}/ ({kind})");
    api::serve(listener, app, registration).await
}
