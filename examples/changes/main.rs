//! Change events with the state before and after, a replica and a notifier.
//!
//! ```text
//! cargo run --example changes
//! ```
//!
//! The books aggregate writes to its store; a `ChangeFeed` publishes each
//! book's changes (state before and after, self-contained JSON) to a change
//! log of their own. Two services use them without the books' code: a
//! replica, kept in a JSON file of its own with its checkpoint, and a
//! notifier, run twice, that writes to a mailbox directory it owns. Both
//! notifiers see every change; each message is delivered once.

#[path = "../common/books.rs"]
mod books;
mod consumers;

use std::time::Duration;

use bookshelf::change::ChangeFeed;
use bookshelf::process::ProcessRunner;
use bookshelf::{EventStore, FileViewStore, InMemoryStore, Metadata, ProjectionRunner, Repository};

use books::{Book, BookCommand, Clock};
use consumers::{Mailbox, Notifier, Replica};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let dir = std::env::temp_dir().join(format!("bookshelf-changes-{}", std::process::id()));
    let mailbox = Mailbox {
        dir: dir.join("mailbox"),
    };
    std::fs::create_dir_all(&mailbox.dir)?;

    let (writes, changes) = (InMemoryStore::new(), InMemoryStore::new());
    let feed = ChangeFeed::<Book, _, _>::new(writes.clone(), changes.clone()).start();
    let replica = ProjectionRunner::<Replica, _>::new("replica", changes.clone())
        .persist_to(FileViewStore::new(dir.join("replica.json")))
        .start();
    let notifiers: Vec<_> = (0..2)
        .map(|_| ProcessRunner::<Notifier, _, _>::new("notifier", changes.clone(), mailbox.clone()).start())
        .collect();

    let books = Repository::<Book, _>::new(writes.clone(), Clock::system());
    let add = |title: &str, author: &str| BookCommand::Add {
        title: title.into(),
        author: author.into(),
        isbn: "9780441013593".into(),
    };
    books
        .execute("dune", &add("Dune", "Frank Herbert"), Metadata::default())
        .await?;
    books
        .execute("emma", &add("Emma", "Jane Austen"), Metadata::default())
        .await?;
    books
        .execute("dune", &BookCommand::MarkRead, Metadata::default())
        .await?;
    books
        .execute("dune", &BookCommand::Rate { stars: 5 }, Metadata::default())
        .await?;
    books
        .execute("emma", &BookCommand::MarkRead, Metadata::default())
        .await?;
    books.execute("emma", &BookCommand::Remove, Metadata::default()).await?;

    let end = writes.head().await?;
    feed.wait_for(end).await;
    let published = changes.head().await?;
    replica.handle().wait_for(published).await;
    for notifier in &notifiers {
        notifier.wait_for(published).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    println!("replica ({}):", dir.join("replica.json").display());
    for (id, (version, state)) in replica.handle().read(|r| r.books.clone()) {
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
    feed.stop().await?;
    Ok(())
}
