//! A process manager replayed sends nothing twice: a notifier that sent a
//! message per deposit, its state then lost (or rebuilt from the start, or
//! a new version under a new name), folds the log again without sending
//! any of those messages again, and goes on sending for new events, once
//! each. The bus here counts every send and forgives nothing: a repeat
//! shows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bookshelf_core::process::{CommandBus, Dispatch, DispatchError, ProcessManager, ProcessRunner};
use bookshelf_core::{
    async_trait, Envelope, EventStore, ExpectedVersion, InMemoryStore, InMemoryViewStore, Position, StreamId,
};
use bookshelf_testkit::accounts::{deposit, AccountEvent};
use serde::{Deserialize, Serialize};

/// Tells of every deposit.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Notifier {
    told: u64,
}

impl ProcessManager for Notifier {
    type Event = AccountEvent;
    type Command = String;

    fn react(&mut self, event: &Envelope<AccountEvent>) -> Vec<Dispatch<String>> {
        let AccountEvent::Deposited { amount } = event.payload else {
            return Vec::new();
        };
        self.told += 1;
        vec![Dispatch::new(event.event_id.to_string(), format!("{amount} deposited"))]
    }
}

/// Counts the sends of each key.
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<BTreeMap<String, u32>>>);

#[async_trait]
impl CommandBus<String> for Outbox {
    async fn dispatch(&self, dispatch: &Dispatch<String>) -> Result<(), DispatchError> {
        *self.0.lock().unwrap().entry(dispatch.key.clone()).or_default() += 1;
        Ok(())
    }
}

impl Outbox {
    fn sends(&self) -> (usize, u32) {
        let sent = self.0.lock().unwrap();
        (sent.len(), sent.values().copied().max().unwrap_or(0))
    }
}

#[tokio::test]
async fn a_notifier_replayed_from_zero_sends_nothing_twice() {
    let store = InMemoryStore::new();
    let deposits: Vec<_> = (1..=50).map(deposit).collect();
    store
        .append(&StreamId::new("account-1"), ExpectedVersion::NoStream, deposits)
        .await
        .unwrap();
    let (outbox, effects) = (Outbox::default(), InMemoryViewStore::new());

    let first = ProcessRunner::<Notifier, _, _>::new("notifier", store.clone(), outbox.clone())
        .persist_to(InMemoryViewStore::new())
        .effects_in(effects.clone())
        .start();
    first.wait_for(Position(50)).await.unwrap();
    first.stop().await.unwrap();
    assert_eq!(outbox.sends(), (50, 1), "each deposit told once");

    // Its state lost: replayed from zero, under a new name, into a new
    // state; the commands' mark kept apart.
    let again = ProcessRunner::<Notifier, _, _>::new("notifier@v2", store.clone(), outbox.clone())
        .persist_to(InMemoryViewStore::new())
        .effects_in(effects.clone())
        .start();
    again.wait_for(Position(50)).await.unwrap();
    assert_eq!(again.read(|n| n.told), 50, "the state folded again");
    assert_eq!(outbox.sends(), (50, 1), "nothing sent twice");

    // New events: told, once each.
    store
        .append(
            &StreamId::new("account-2"),
            ExpectedVersion::NoStream,
            vec![deposit(7), deposit(8)],
        )
        .await
        .unwrap();
    again.wait_for(Position(52)).await.unwrap();
    assert_eq!(outbox.sends(), (52, 1));
    again.stop().await.unwrap();

    // Without the mark, a replay sends everything again: what the mark is for.
    let unmarked = ProcessRunner::<Notifier, _, _>::new("notifier@v3", store.clone(), outbox.clone()).start();
    unmarked.wait_for(Position(52)).await.unwrap();
    assert_eq!(outbox.sends(), (52, 2));
    unmarked.stop().await.unwrap();
}
