//! The "books by author" view as a service of its own: every author on the
//! shelf with their books, how often each was read and its rating,
//! projected from the book events on Kafka.
//!
//! ```text
//! cargo run --example authors -- --broker 127.0.0.1:9092 --topic books --consul http://127.0.0.1:8500
//! curl -s localhost:8089/authors
//! curl -s localhost:8089/authors/Frank%20Herbert
//! cargo run --example authors -- --postgres postgres://localhost/bookshelf   # from PostgreSQL
//! ```
//!
//! It is a second view over the same events as `last_read`, with its own
//! consumer group and its own saved offsets: views are added without touching
//! the writer. On the embedded default (`cargo run --example last_read`) the
//! same view is served in that one process, at the same paths.

use crate::{api, books};
use api::Backend;
use bookshelf::postgres::PostgresStore;
use std::sync::Arc;

use bookshelf::versions::{versioned, whole, Versions};
use bookshelf::{DeadLetters, ProjectionRunner, Running, UnknownEvents, ViewState};
use bookshelf_kafka::{KafkaConfig, KafkaDeadLetters, KafkaLog};
use clap::Parser;

use books::Authors;

/// Books by author, projected from the book events on Kafka.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8089)]
    port: u16,
    /// The service name to register under.
    #[arg(long, default_value = "authors")]
    name: String,
    #[command(flatten)]
    service: api::ServiceFlags,
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _logging = api::init_tracing();
    let args = Args::parse();
    let listener = args.service.listen(args.port).await?;
    let local = listener.local_addr()?;
    // Each version (`authors`, then `authors@v2`, …) built in memory from
    // the log at start, then followed; rebuilt side by side over HTTP.
    type Start = Box<dyn Fn(u32) -> Running<ViewState<Authors>> + Send + Sync>;
    let (start, source): (Start, String) = match args.service.backend() {
        Backend::Kafka(broker) => {
            let config = KafkaConfig::new(broker, args.service.topic.as_str())
                .partitions(3)
                .create_topic(true);
            let dead_letters: Arc<dyn DeadLetters> = Arc::new(KafkaDeadLetters::open(&config).await?);
            let start = move |number| {
                ProjectionRunner::<Authors, _>::new(versioned("authors", number), KafkaLog::new(config.clone()))
                    .dead_letters(dead_letters.clone())
                    .unknown_events(UnknownEvents::Skip)
                    .start()
            };
            let source = format!("projecting topic {} from {broker}", args.service.topic);
            (Box::new(start), source)
        }
        Backend::Postgres(url) => {
            let store = PostgresStore::connect(url).await?;
            let start = move |number| {
                ProjectionRunner::<Authors, _>::new(versioned("authors", number), store.clone())
                    .only_category("book")
                    .dead_letters(store.dead_letters())
                    .start()
            };
            (Box::new(start), "projecting the book events from PostgreSQL".to_owned())
        }
        Backend::InMemory | Backend::Embedded => {
            return Err(
                "authors projects the book events from Kafka (--broker HOST:PORT) or PostgreSQL \
                        (--postgres URL or DATABASE_URL); on the embedded default, `cargo run --example last_read` \
                        serves /authors"
                    .into(),
            )
        }
    };
    let view = Versions::new(1, start(1), whole);
    api::rebuildable("authors", view.clone(), whole, start);
    let app = api::authors_routes(view.clone())
        .merge(api::health_routes())
        .serve_docs("authors API")
        .fallback(api::not_found);

    let registration = args.service.register(&args.name, local).await?;
    println!("authors is listening on http://{local}/ ({source})");
    println!("  curl -s http://{local}/authors");
    api::serve(listener, app, registration).await?;
    view.stop().await?;
    tracing::info!("authors stopped");
    Ok(())
}
