//! Lending copies of books: a process manager across two aggregates, with
//! compensation.
//!
//! ```text
//! cargo run --example lending                   # the demo below, kept in bookshelf-data/lending.sqlite
//! cargo run --example lending -- --postgres postgres://localhost/bookshelf   # the demo, kept in PostgreSQL
//! cargo run --example lending -- --broker 127.0.0.1:9092 --topic lending --consul http://127.0.0.1:8500
//! ```
//!
//! With `--broker`, it is a service (see `service.rs`): `POST /members`
//! `{"id", "balance"}`, `POST /copies` `{"id"}`, `POST
//! /copies/{id}/reserve` `{"loan", "member", "fee"}`, `GET /members/{id}`,
//! `GET /copies/{id}` (state and events), `GET /role`; the loan process runs
//! on the instance that writes the topic.
//!
//! Ada has 10 on her account and Bob 1. Each reserves a copy with a fee of
//! 3: the loan process charges the member and lends the copy, or, when the
//! charge is declined, releases the reservation. A third loan, for a member
//! who does not exist, is refused at the charge and released too. The
//! process manager's commands carry idempotency keys, so that a replay after
//! a crash sends nothing twice (`tests/lending.rs` crashes it on purpose).

pub mod domain;
pub mod service;

use crate::api;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::{Backend, KeepsViews};
use bookshelf::postgres::PostgresStore;
use bookshelf::process::ProcessRunner;
use bookshelf::sqlite::SqliteStore;
use bookshelf::{InMemoryStore, Metadata, Position, Repository};
use bookshelf_kafka::{KafkaConfig, KafkaStore};
use clap::Parser;

use domain::{Copy, CopyCommand, LendingBus, LoanProcess, Member, MemberCommand};

/// Copies, members and the loan process.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// The service name to register under.
    #[arg(long, default_value = "lending")]
    name: String,
    /// Where an instance keeps its local state and the loan process's
    /// checkpoint.
    #[arg(long, default_value = "bookshelf-data")]
    data: PathBuf,
    #[command(flatten)]
    service: api::ServiceFlags,
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _logging = api::init_tracing();
    let args = Args::parse();
    match args.service.backend() {
        Backend::InMemory => demo(InMemoryStore::new()).await,
        Backend::Embedded => demo(SqliteStore::open(args.data.join("lending.sqlite"))?).await,
        Backend::Postgres(url) => demo(PostgresStore::connect(url).await?).await,
        Backend::Kafka(broker) => serve(&args, broker).await,
    }
}

/// The lending service on Kafka.
async fn serve(args: &Args, broker: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = args.service.listen(args.port).await?;
    let local = listener.local_addr()?;
    let id = args
        .service
        .id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", args.name, local.port()));
    let topic = args.service.topic.as_str();
    let config = KafkaConfig::new(broker, topic).partitions(3).create_topic(true);
    let mut builder = KafkaStore::builder(config)
        .member(&id, format!("http://{local}"))
        .state_file(args.data.join(format!("{topic}-{id}.sqlite")))
        .one_owner();
    let passing = bookshelf_consul::Passing::new();
    builder = args.service.share_partitions(builder, &args.name, &id, &passing)?;
    let store = builder.open().await?;
    let loans = tokio::spawn(service::run_loans(
        store.clone(),
        args.data.join(format!("{topic}-{id}-loans.json")),
    ));
    let app = service::routes(Arc::new(service::Lending::new(store.clone())))
        .merge(api::stream_event_routes(store.clone()))
        .merge(api::health_routes())
        .serve_docs("lending API")
        .fallback(api::not_found);
    let registration = args
        .service
        .register_on_kafka(&args.name, local, &store, passing)
        .await?;
    println!("lending is listening on http://{local}/ (Kafka topic {topic})");
    api::serve(listener, app, registration).await?;
    loans.abort();
    store.flush(Duration::from_secs(10)).await?;
    Ok(())
}

/// Three loans, printed. Each command carries an idempotency key, so that
/// a second run on the kept data changes nothing and prints the same. The
/// loan process is saved in the store when it keeps views.
async fn demo<S>(store: S) -> Result<(), Box<dyn std::error::Error>>
where
    S: bookshelf::EventStore + bookshelf::EventSource + Clone + KeepsViews,
{
    let copies = Repository::<Copy, _>::new(store.clone(), ());
    let members = Repository::<Member, _>::new(store.clone(), ());
    members
        .execute_once(
            "ada",
            "demo/join",
            &MemberCommand::Join { balance: 10 },
            Metadata::default(),
        )
        .await?;
    members
        .execute_once(
            "bob",
            "demo/join",
            &MemberCommand::Join { balance: 1 },
            Metadata::default(),
        )
        .await?;
    for copy in ["dune-1", "dune-2", "emma-1"] {
        copies
            .execute_once(copy, "demo/register", &CopyCommand::Register, Metadata::default())
            .await?;
    }

    let mut loans = ProcessRunner::<LoanProcess, _, _>::new("loans", store.clone(), LendingBus::new(store.clone()))
        .only_categories(["copy", "member"])
        .tick_every(Duration::from_millis(100));
    if let Some(saved) = store.saved_view("loans") {
        loans = loans.persist_to(saved);
    }
    if let Some(dead_letters) = store.dead_letters() {
        loans = loans.dead_letters(dead_letters);
    }
    let loans = loans.start();
    for (loan, copy, member) in [
        ("loan-1", "dune-1", "ada"),
        ("loan-2", "dune-2", "bob"),
        ("loan-3", "emma-1", "cyd"),
    ] {
        let reserve = CopyCommand::Reserve {
            loan: loan.into(),
            member: member.into(),
            fee: 3,
        };
        copies
            .execute_once(copy, &format!("demo/{loan}"), &reserve, Metadata::correlated(loan))
            .await?;
    }

    // Each loan takes a few steps; wait until the log is quiet.
    let mut head = Position(0);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = bookshelf::EventStore::head(&store).await?;
        if now == head && loans.wait_for(now).await.is_ok() {
            break;
        }
        head = now;
    }
    loans.read(|process| {
        for (id, loan) in &process.loans {
            println!(
                "{id}: {} for {}: {:?}{}",
                loan.copy,
                loan.member,
                loan.step,
                loan.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
    });
    for copy in ["dune-1", "dune-2", "emma-1"] {
        println!("copy {copy}: {:?}", copies.load(copy).await?.state);
    }
    for member in ["ada", "bob"] {
        println!("member {member}: {:?}", members.load(member).await?.state);
    }
    loans.stop().await?;
    Ok(())
}
