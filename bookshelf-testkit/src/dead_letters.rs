//! The check every store that keeps dead letters passes: a runner's letters
//! listed in the order set aside, by runner, with the reason and the event
//! as stored; a record that was no event back as its log held it.

use std::future::Future;
use std::pin::Pin;

use bookshelf_core::{
    DeadLetter, DeadLetters, EventSource, EventStore, ExpectedVersion, KeptDeadLetter, NewEvent, Poison, Position,
    ProjectionRunner, RawRecord, StoreError, StreamId, ViewStore,
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

/// Runs the re-drive check on `store`, whose letters `sink` keeps and
/// `list` lists, with the ledger's state saved in `views`: two letters set
/// aside by the old code; re-driven while the old code still runs, they
/// fail again and are put back, out of the queue, with the reason; once the
/// fixed code runs, re-driven one then the rest, each is applied once, in
/// the order re-driven, after what the runner had applied, and leaves the
/// list; a restart applies nothing again.
///
/// # Panics
/// When a step does not hold.
pub async fn redriven_once<S, V>(
    store: S,
    sink: impl DeadLetters + Clone,
    views: V,
    list: impl Fn(Option<String>) -> Listed,
) where
    S: EventStore + EventSource + Clone,
    V: ViewStore + Clone,
{
    use crate::accounts::{raw_event, FixedLedger};
    use bookshelf_core::Redrive;
    use std::time::Duration;

    let runner = "redriven-ledger";
    let appended = store
        .append(
            &StreamId::new("account-9"),
            ExpectedVersion::NoStream,
            vec![
                deposit(5),
                raw_event("Deposited", 1, r#"{"amount":"7"}"#),
                deposit(11),
                raw_event("Deposited", 1, r#"{"amount":"13"}"#),
            ],
        )
        .await
        .expect("appended");
    // Positions from the first event's (a Kafka topic has other records
    // between appends).
    let (first, end) = (appended.first_position.0, appended.last_position.next());
    let letters = |kept: Vec<KeptDeadLetter>| -> Vec<(u64, String, Option<u64>)> {
        kept.into_iter()
            .map(|k| {
                let position = k.letter.record.event().expect("an event").position.0;
                (position - first, k.letter.reason, k.ticket)
            })
            .collect()
    };
    let from_first = |applied: &[u64]| applied.iter().map(|p| p - first).collect::<Vec<_>>();
    let old_code = || {
        ProjectionRunner::<Ledger, _>::new(runner, store.clone())
            .persist_to(views.clone())
            .dead_letters(sink.clone())
            .redrive_every(Duration::from_millis(20))
            .start()
    };
    let old = old_code();
    old.wait_for(end).await.expect("caught up");
    assert_eq!(old.read(|l| (from_first(&l.applied), l.total)), (vec![0, 2], 16));
    old.stop().await.expect("stopped");
    let before = letters(list(Some(runner.into())).await.expect("the letters"));
    assert_eq!(
        before.iter().map(|l| (l.0, l.2)).collect::<Vec<_>>(),
        [(1, None), (3, None)]
    );

    // Queued while the runner is away: they wait, each with one ticket.
    assert_eq!(sink.redrive(runner, Redrive::All).await.expect("queued"), 2);
    let queued = letters(list(Some(runner.into())).await.expect("the letters"));
    assert!(
        queued.iter().all(|l| l.2.is_some()),
        "both wait with a ticket: {queued:?}"
    );
    assert!(
        sink.redrive(runner, Redrive::All).await.expect("nothing more") == 0,
        "a queued letter keeps its ticket"
    );
    // Taken by the code that still cannot read them: back, with why.
    let old = old_code();
    let back = wait_until(&list, runner, |kept| kept.iter().all(|k| k.ticket.is_none())).await;
    let back = letters(back);
    assert_eq!(back.iter().map(|l| l.0).collect::<Vec<_>>(), [1, 3], "both kept");
    assert!(
        back.iter().all(|l| l.1.contains("Deposited")),
        "with the new reason: {back:?}"
    );
    assert_eq!(old.read(|l| l.total), 16, "nothing applied");
    let report = bookshelf_core::report::reports()
        .into_iter()
        .find(|r| r.name == runner)
        .expect("listed");
    assert_eq!((report.set_aside, report.redriven), (2, 0), "{report:?}");
    old.stop().await.expect("stopped");

    // The fix deployed: the runner of the same name, on the same state.
    let fixed = ProjectionRunner::<FixedLedger, _>::new(runner, store.clone())
        .persist_to(views.clone())
        .dead_letters(sink.clone())
        .redrive_every(Duration::from_millis(20))
        .start();
    fixed.wait_for(end).await.expect("caught up");
    assert_eq!(fixed.read(|l| l.0.total), 16, "restored, the letters not applied yet");
    let ids: Vec<u64> = list(Some(runner.into()))
        .await
        .expect("the letters")
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(sink.redrive(runner, Redrive::Letter(ids[1])).await.expect("queued"), 1);
    assert_eq!(sink.redrive(runner, Redrive::All).await.expect("queued"), 1);
    assert!(
        sink.redrive(runner, Redrive::Letter(u64::MAX)).await.is_err(),
        "no such letter: refused"
    );
    wait_until(&list, runner, Vec::is_empty).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fixed.read(|l| l.0.applied.len()) < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fixed.read(|l| (from_first(&l.0.applied), l.0.total)),
        (vec![0, 2, 3, 1], 36),
        "each once, in the order re-driven, after what was applied"
    );
    let checkpoint = fixed.checkpoint().expect("running");
    assert!(checkpoint.redriven() > 0, "{checkpoint:?}");
    fixed.stop().await.expect("stopped");

    let again = ProjectionRunner::<FixedLedger, _>::new(runner, store.clone())
        .persist_to(views)
        .dead_letters(sink.clone())
        .redrive_every(Duration::from_millis(20))
        .start();
    again.wait_for(end).await.expect("caught up");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(again.read(|l| l.0.total), 36, "nothing applied twice after a restart");
    assert!(list(Some(runner.into())).await.expect("the letters").is_empty());
    again.stop().await.expect("stopped");
}

/// `runner`'s letters once `done` holds of them (within ten seconds).
async fn wait_until(
    list: &impl Fn(Option<String>) -> Listed,
    runner: &str,
    done: impl Fn(&Vec<KeptDeadLetter>) -> bool,
) -> Vec<KeptDeadLetter> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let kept = list(Some(runner.to_owned())).await.expect("the letters");
        if done(&kept) {
            return kept;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {kept:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
