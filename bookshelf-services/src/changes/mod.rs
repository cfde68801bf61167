//! Change events with the state before and after, a replica and a notifier.
//!
//! ```text
//! cargo run --example changes                   # the demo below, kept in bookshelf-data/
//! cargo run --example changes -- --broker 127.0.0.1:9092 --topic books --role feed --consul http://127.0.0.1:8500
//! cargo run --example changes -- --broker 127.0.0.1:9092 --role replica
//! cargo run --example changes -- --broker 127.0.0.1:9092 --role notifier --mailbox /tmp/mailbox
//! ```
//!
//! On Kafka each process runs one role (see `service.rs`).
//!
//! The books aggregate writes to its store; a `ChangeFeed` publishes each
//! book's changes (state before and after, self-contained JSON) to a change
//! log of their own. Two services use them without the books' code: a
//! replica, kept in a JSON file of its own with its checkpoint, and a
//! notifier, run twice, that writes to a mailbox directory it owns. Both
//! notifiers see every change; each message is delivered once.

pub mod consumers;
pub mod service;

use crate::{api, books};
use std::path::PathBuf;
use std::time::Duration;

use api::{Backend, KeepsViews};
use bookshelf::change::ChangeFeed;
use bookshelf::postgres::table::TableFold;
use bookshelf::postgres::{Options as PostgresOptions, PostgresStore};
use bookshelf::process::ProcessRunner;
use bookshelf::sqlite::SqliteStore;
use bookshelf::{EventStore, FileViewStore, InMemoryStore, Metadata, ProjectionRunner, Repository, ViewStore};
use clap::Parser;

use books::{Book, BookCommand, Clock};
use consumers::{Mailbox, Notifier, Replica, ReplicaTable};

/// The books' change events, a replica and a notifier: all in one process in
/// memory, or one role per process on Kafka (`--broker ... --role ...`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// What this process does on Kafka.
    #[arg(long, value_enum)]
    role: Option<service::Role>,
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8091)]
    port: u16,
    /// The service name to register under (default: changes-ROLE).
    #[arg(long)]
    name: Option<String>,
    /// Where the process keeps its state and checkpoint.
    #[arg(long, default_value = "bookshelf-data")]
    data: PathBuf,
    /// The topic the changes are published to.
    #[arg(long, default_value = "book-changes")]
    changes_topic: String,
    /// The notifier's mailbox directory (default: DATA/mailbox).
    #[arg(long)]
    mailbox: Option<PathBuf>,
    #[command(flatten)]
    service: api::ServiceFlags,
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _logging = api::init_tracing();
    let args = Args::parse();
    match (args.service.backend(), args.role) {
        (Backend::Kafka(_), None) => {
            Err("on Kafka, say which part this process runs: --role feed, replica or notifier".into())
        }
        (Backend::Kafka(broker), Some(role)) => serve(&args, broker, role).await,
        (Backend::Postgres(url), _) => demo_on_postgres(url, args.data.join("mailbox")).await,
        (Backend::InMemory | Backend::Embedded, _) => demo(args.data.clone(), args.service.in_memory).await,
    }
}

/// One role of the changes service, on Kafka.
async fn serve(args: &Args, broker: &str, role: service::Role) -> Result<(), Box<dyn std::error::Error>> {
    let listener = args.service.listen(args.port).await?;
    let local = listener.local_addr()?;
    let role_name = format!("{role:?}").to_lowercase();
    let name = args.name.clone().unwrap_or_else(|| format!("changes-{role_name}"));
    let id = args
        .service
        .id
        .clone()
        .unwrap_or_else(|| format!("{name}-{}", local.port()));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let passing = bookshelf_consul::Passing::new();
    let running = service::start(
        role,
        service::Settings {
            flags: &args.service,
            broker,
            name: &name,
            id: &id,
            address: format!("http://{local}"),
            data: args.data.clone(),
            changes_topic: &args.changes_topic,
            mailbox: args.mailbox.clone().unwrap_or_else(|| args.data.join("mailbox")),
            passing: &passing,
        },
        shutdown,
    )
    .await?;
    let app = running
        .routes
        .merge(api::health_routes())
        .serve_docs("changes API")
        .fallback(api::not_found);
    // The feed owns the changes topic's partitions: its check follows its
    // broker. The other roles only read.
    let registration = match &running.store {
        Some(store) => args.service.register_on_kafka(&name, local, store, passing).await?,
        None => args.service.register(&name, local).await?,
    };
    println!("changes ({role_name}) is listening on http://{local}/");
    api::serve(listener, app, registration).await?;
    stop.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), running.task).await;
    if let Some(store) = running.store {
        store.flush(Duration::from_secs(10)).await?;
    }
    Ok(())
}

/// Everything in one process, printed: kept in `data` (the books' events in
/// `books.sqlite`; the changes, the replica and the notifiers' checkpoints
/// in `changes.sqlite`; the mailbox in `mailbox/`), or in memory. Each
/// command carries an idempotency key, so a second run on kept data
/// changes nothing and delivers no message again.
async fn demo(data: PathBuf, in_memory: bool) -> Result<(), Box<dyn std::error::Error>> {
    if in_memory {
        let dir = std::env::temp_dir().join(format!("bookshelf-changes-{}", std::process::id()));
        let (writes, changes) = (InMemoryStore::new(), InMemoryStore::new());
        let saved = Saved::in_stores(&writes, &changes, || FileViewStore::new(dir.join("replica.json")));
        return run_demo(writes, changes, saved, dir.join("mailbox"), None).await;
    }
    let writes = SqliteStore::open(data.join("books.sqlite"))?;
    let changes = SqliteStore::open(data.join("changes.sqlite"))?;
    let saved = Saved::in_stores(&writes, &changes, || FileViewStore::new(data.join("replica.json")));
    run_demo(writes, changes, saved, data.join("mailbox"), None).await
}

/// The demo on PostgreSQL: the books' events in the database's default
/// schema, the changes and the runners' state in schema `book_changes`,
/// and the replica also kept as the table `book_changes.replica_books`,
/// its rows moved with its checkpoint.
async fn demo_on_postgres(url: &str, mailbox: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let writes = PostgresStore::connect(url).await?;
    let changes = PostgresStore::connect_with(url, PostgresOptions::new().schema("book_changes")).await?;
    let saved = Saved::in_stores(&writes, &changes, || FileViewStore::new(mailbox.join("replica.json")));
    let table = changes.clone();
    run_demo(writes, changes, saved, mailbox, Some(table)).await
}

/// Where the demo's runners keep their state.
struct Saved {
    feed: Option<Box<dyn ViewStore>>,
    replica: Box<dyn ViewStore>,
    notifiers: [Option<Box<dyn ViewStore>>; 2],
}

impl Saved {
    /// The feed's state kept beside the writes, the others beside the
    /// changes; the replica in `otherwise` when the changes keep no views.
    fn in_stores<F: ViewStore + 'static>(
        writes: &impl KeepsViews,
        changes: &impl KeepsViews,
        otherwise: impl FnOnce() -> F,
    ) -> Saved {
        Saved {
            feed: writes.saved_view("feed"),
            replica: changes.saved_view("replica").unwrap_or_else(|| Box::new(otherwise())),
            notifiers: [changes.saved_view("notifier-1"), changes.saved_view("notifier-2")],
        }
    }
}

async fn run_demo<S>(
    writes: S,
    changes: S,
    saved: Saved,
    mailbox: PathBuf,
    table: Option<PostgresStore>,
) -> Result<(), Box<dyn std::error::Error>>
where
    S: EventStore + bookshelf::EventSource + Clone,
{
    let mailbox = Mailbox { dir: mailbox };
    std::fs::create_dir_all(&mailbox.dir)?;
    let mut feed = ChangeFeed::<Book, _, _>::new(writes.clone(), changes.clone());
    if let Some(store) = saved.feed {
        feed = feed.persist_to(store);
    }
    let feed = feed.start();
    let replica = ProjectionRunner::<Replica, _>::new("replica", changes.clone())
        .persist_to(saved.replica)
        .start();
    let replica_table = match table {
        Some(db) => Some(
            TableFold::open("replica-table", &db, ReplicaTable)
                .await?
                .follow(changes.clone())
                .start(),
        ),
        None => None,
    };
    let notifiers: Vec<_> = saved
        .notifiers
        .into_iter()
        .map(|store| {
            let notifier = ProcessRunner::<Notifier, _, _>::new("notifier", changes.clone(), mailbox.clone());
            match store {
                Some(store) => notifier.persist_to(store).start(),
                None => notifier.start(),
            }
        })
        .collect();

    let books = Repository::<Book, _>::new(writes.clone(), Clock::system());
    let add = |title: &str, author: &str| BookCommand::Add {
        title: title.into(),
        author: author.into(),
        isbn: "9780441013593".into(),
    };
    let steps = [
        ("dune", add("Dune", "Frank Herbert")),
        ("emma", add("Emma", "Jane Austen")),
        ("dune", BookCommand::MarkRead),
        ("dune", BookCommand::Rate { stars: 5 }),
        ("emma", BookCommand::MarkRead),
        ("emma", BookCommand::Remove),
    ];
    for (n, (id, command)) in steps.iter().enumerate() {
        books
            .execute_once(id, &format!("demo/{n}"), command, Metadata::default())
            .await?;
    }

    let end = writes.head().await?;
    feed.wait_for(end).await?;
    let published = changes.head().await?;
    replica.wait_for(published).await?;
    if let Some(table) = &replica_table {
        table.wait_for(published).await?;
    }
    for notifier in &notifiers {
        notifier.wait_for(published).await?;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let rows = match &replica_table {
        Some(table) => {
            println!("replica (the table book_changes.replica_books):");
            consumers::replica_rows(table).await?
        }
        None => {
            println!("replica:");
            replica.handle().read(|r| r.books.clone())
        }
    };
    for (id, (version, state)) in rows {
        println!("  {id} v{version}: {state}");
    }
    println!(
        "mailbox ({}), each message once although two notifiers ran:",
        mailbox.dir.display()
    );
    for (key, message) in mailbox.delivered()? {
        println!("  {key}: {}", message.lines().last().unwrap_or_default());
    }
    for notifier in notifiers {
        notifier.stop().await?;
    }
    replica.stop().await?;
    if let Some(table) = replica_table {
        table.stop().await?;
    }
    feed.stop().await?;
    Ok(())
}
