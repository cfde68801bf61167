//! Lending copies of books: a process manager across two aggregates, with
//! compensation.
//!
//! ```text
//! cargo run --example lending
//! ```
//!
//! Ada has 10 on her account and Bob 1. Each reserves a copy with a fee of
//! 3: the loan process charges the member and lends the copy, or, when the
//! charge is declined, releases the reservation. A third loan, for a member
//! who does not exist, is refused at the charge and released too. The
//! process manager's commands carry idempotency keys, so that a replay after
//! a crash sends nothing twice (`tests/lending.rs` crashes it on purpose).

mod domain;

use std::time::Duration;

use bookshelf::process::ProcessRunner;
use bookshelf::{InMemoryStore, Metadata, Position, Repository};

use domain::{Copy, CopyCommand, LendingBus, LoanProcess, Member, MemberCommand};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let store = InMemoryStore::new();
    let copies = Repository::<Copy, _>::new(store.clone(), ());
    let members = Repository::<Member, _>::new(store.clone(), ());
    members
        .execute("ada", &MemberCommand::Join { balance: 10 }, Metadata::default())
        .await?;
    members
        .execute("bob", &MemberCommand::Join { balance: 1 }, Metadata::default())
        .await?;
    for copy in ["dune-1", "dune-2", "emma-1"] {
        copies
            .execute(copy, &CopyCommand::Register, Metadata::default())
            .await?;
    }

    let loans = ProcessRunner::<LoanProcess, _, _>::new("loans", store.clone(), LendingBus::new(store.clone()))
        .only_categories(["copy", "member"])
        .tick_every(Duration::from_millis(100))
        .start();
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
        copies.execute(copy, &reserve, Metadata::correlated(loan)).await?;
    }

    // Each loan takes a few steps; wait until the log is quiet.
    let mut head = Position(0);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = bookshelf::EventStore::head(&store).await?;
        if now == head && loans.wait_for(now).await {
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
