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

#[path = "../common/api.rs"]
mod api;
#[path = "../common/books.rs"]
mod books;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bookshelf::{InMemoryStore, ProjectionRunner, Repository};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use books::{Book, Clock, LastRead};

/// The five most recently read books, as a JSON list on `GET /`.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    addr: IpAddr,
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8087)]
    port: u16,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let store = InMemoryStore::new();
    let view = ProjectionRunner::<LastRead, _>::new("last-read", store.clone())
        .only_category("book")
        .start();
    let books = Arc::new(api::BooksApi {
        books: Repository::<Book, _>::new(store.clone(), Clock::system()),
        read_your_writes: Some(view.handle()),
    });
    let app = api::last_read_routes(view.handle())
        .merge(api::books_routes(books))
        .merge(api::health_routes())
        .fallback(api::not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http());

    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.addr, args.port)).await?;
    let local = listener.local_addr()?;
    tracing::info!(%local, store = "in-memory", "last_read listening");
    println!("last_read is listening on http://{local}/ (embedded default: in-memory store, books in this process)");
    println!("  GET  http://{local}/                  the last read books");
    println!("  POST http://{local}/books             add a book");
    println!("  POST http://{local}/books/ID/read     mark a book read");
    println!("  GET  http://{local}/health");
    println!("Try:");
    println!(
        "  id=$(curl -s -X POST http://{local}/books -H 'content-type: application/json' \\\n     -d '{{\"title\":\"Dune\",\"author\":\"Frank Herbert\",\"isbn\":\"9780441013593\"}}' | sed 's/.*\"id\":\"\\([^\"]*\\)\".*/\\1/')"
    );
    println!("  curl -s -X POST http://{local}/books/$id/read");
    println!("  curl -s http://{local}/");

    axum::serve(listener, app)
        .with_graceful_shutdown(api::shutdown_signal())
        .await?;
    view.stop().await?;
    tracing::info!("last_read stopped");
    Ok(())
}
