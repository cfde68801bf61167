//! The check every store that keeps dead letters passes: a runner's letters
//! listed in the order set aside, by runner, with the reason and the event
//! as stored; a record that was no event back as its log held it.

use std::future::Future;
use std::pin::Pin;

use bookshelf_core::{
    DeadLetter, DeadLetters, EventSource, EventStore, ExpectedVersion, KeptDeadLetter, NewEvent, Poison, Position,
    ProjectionRunner, RawRecord, StoreError, StreamId,
};

use crate::accounts::{deposit, Ledger};

/// What a store's list of its letters answers (`None`: every runner's).
pub type Listed = Pin<Box<dyn Future<Output = Result<Vec<KeptDeadLetter>, StoreError>> + Send>>;

/// Runs the check on `store`, whose letters `sink` keeps and `list` lists.
///
/// # Panics
/// When the store does not keep or list a letter as it should.
pub async fn kept_and_listed<S>(store: S, sink: impl DeadLetters + Clone, list: impl Fn(Option<String>) -> Listed)
where
    S: EventStore + EventSource + Clone,
{
    let broken = NewEvent {
        payload: serde_json::value::RawValue::from_string(r#"{"amount":"lots"}"#.to_owned()).expect("JSON"),
        ..deposit(1)
    };
    store
        .append(
            &StreamId::new("account-1"),
            ExpectedVersion::NoStream,
            vec![deposit(5), broken, deposit(7)],
        )
        .await
        .expect("appended");
    let ledger = ProjectionRunner::<Ledger, _>::new("kept-ledger", store.clone())
        .dead_letters(sink.clone())
        .start();
    ledger.wait_for(Position(3)).await.expect("caught up");
    assert_eq!(ledger.read(|l| l.total), 12, "the others applied");
    ledger.stop().await.expect("stopped");
    let raw = RawRecord {
        location: "books/0@9".into(),
        key: Some(b"k".to_vec()),
        body: Some(vec![0xff, 0x00, b'x']),
        headers: vec![("h".into(), vec![1, 2, 255])],
    };
    sink.put(DeadLetter {
        projection: "elsewhere".into(),
        location: raw.location.clone(),
        record: Poison::Raw(Box::new(raw.clone())),
        reason: "not an event envelope".into(),
    })
    .await
    .expect("kept");

    let kept = list(Some("kept-ledger".into())).await.expect("the letters");
    assert_eq!(kept.len(), 1, "{kept:?}");
    let letter = &kept[0].letter;
    assert_eq!(letter.location, "position 1");
    assert!(letter.reason.contains("Deposited"), "{}", letter.reason);
    let event = letter.record.event().expect("an event");
    assert_eq!(
        (event.position, event.payload.get()),
        (Position(1), r#"{"amount":"lots"}"#)
    );
    let all = list(None).await.expect("the letters");
    assert_eq!(all.len(), 2);
    assert!(all[0].id < all[1].id, "in the order set aside");
    match &all[1].letter.record {
        Poison::Raw(back) => assert_eq!(**back, raw),
        other => panic!("a raw record, not {other:?}"),
    }
}
