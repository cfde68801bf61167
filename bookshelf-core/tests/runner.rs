//! The one runner's rules, on a source written here: a record delivered
//! again (as an at-least-once source may) is applied once, and records that
//! are not events move the checkpoint without reaching the fold.

use std::collections::BTreeMap;
use std::sync::Arc;

use bookshelf_core::{
    async_trait, Checkpoint, DomainEvent, Envelope, EventId, EventSource, Followed, Follower, Mark, Metadata, Position,
    ProjectionRunner, RawRecord, Record, RecordedEvent, StoreError, StreamId, Version, View,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Counted {
    Counted { n: u64 },
}
impl DomainEvent for Counted {}

#[derive(Debug, Default)]
struct Seen(Vec<u64>);

impl View for Seen {
    type Event = Counted;
    fn apply(&mut self, event: Envelope<Counted>) {
        let Counted::Counted { n } = event.payload;
        self.0.push(n);
    }
}

fn event(offset: u64) -> Record {
    let payload = serde_json::value::RawValue::from_string(format!(r#"{{"n":{offset}}}"#)).unwrap();
    Record::Event(Arc::new(RecordedEvent {
        event_id: EventId::new(),
        stream_id: StreamId::new(format!("counter-{offset}")),
        version: Version(1),
        position: Position(offset),
        recorded_at: chrono::Utc::now(),
        event_type: "Counted".into(),
        schema_version: 1,
        metadata: Metadata::default(),
        payload,
    }))
}

/// Hands out its batches in turn, then nothing; each record as `(offset,
/// record)` of partition `p/0`.
struct Script(Vec<Vec<(u64, Record)>>);

#[async_trait]
impl EventSource for Script {
    async fn follow(&self, _: &Checkpoint) -> Result<Box<dyn Follower>, StoreError> {
        Ok(Box::new(Played(self.0.clone().into_iter().rev().collect())))
    }
}

struct Played(Vec<Vec<(u64, Record)>>);

#[async_trait]
impl Follower for Played {
    async fn next_batch(&mut self, batch: &mut Vec<Followed>, _: usize) -> Result<(), StoreError> {
        let Some(next) = self.0.pop() else {
            return std::future::pending().await;
        };
        let partition: Arc<str> = Arc::from("p/0");
        batch.extend(next.into_iter().map(|(offset, record)| Followed {
            partition: Arc::clone(&partition),
            mark: Mark {
                next: offset + 1,
                token: 7,
            },
            record,
        }));
        Ok(())
    }

    fn ends(&self) -> BTreeMap<String, u64> {
        BTreeMap::from([("p/0".to_owned(), 6)])
    }
}

#[tokio::test]
async fn a_record_delivered_again_is_applied_once_and_what_is_not_an_event_only_moves_the_checkpoint() {
    let unreadable = || Record::Unreadable {
        raw: Box::new(RawRecord {
            location: "p/0@3".into(),
            ..RawRecord::default()
        }),
        reason: "not an event envelope".into(),
    };
    let source = Script(vec![
        vec![(0, event(0)), (1, event(1)), (2, Record::Skip)],
        // At least once: 1 and 2 again, then on.
        vec![(1, event(1)), (2, Record::Skip), (3, unreadable()), (4, event(4))],
        vec![(4, event(4)), (5, event(5))],
    ]);
    let dead = bookshelf_core::InMemoryDeadLetters::new();
    let running = ProjectionRunner::<Seen, _>::new("seen", source)
        .dead_letters(dead.clone())
        .start();
    running
        .wait_for(BTreeMap::from([("p/0".to_owned(), 6)]))
        .await
        .expect("the runner reads to the end");
    assert_eq!(
        running.read(|seen| seen.0.clone()),
        [0, 1, 4, 5],
        "each event once, in order"
    );
    assert_eq!(running.checkpoint().unwrap().get("p/0"), Mark { next: 6, token: 7 });
    let letters = dead.letters();
    assert_eq!(letters.len(), 1, "the unreadable record is set aside, once");
    assert_eq!(letters[0].location, "p/0@3");
    running.stop().await.unwrap();
}

/// Every runner of the process is listed by `reports()` from its start:
/// where it stands, when it last moved, what it set aside and why; it
/// leaves the list once stopped.
#[tokio::test]
async fn a_runner_reports_where_it_stands_what_it_set_aside_and_leaves_the_list_once_stopped() {
    let report = |name: &str| bookshelf_core::reports().into_iter().find(|r| r.name == name);
    let poison = Record::Event(Arc::new(RecordedEvent {
        event_type: "Exploded".into(),
        ..match event(2) {
            Record::Event(event) => (*event).clone(),
            _ => unreachable!("event() makes events"),
        }
    }));
    let source = Script(vec![vec![(0, event(0)), (1, event(1)), (2, poison)]]);
    let before = chrono::Utc::now();
    let running = ProjectionRunner::<Seen, _>::new("reported", source)
        .unknown_events(bookshelf_core::UnknownEvents::DeadLetter)
        .start();
    running
        .wait_for(BTreeMap::from([("p/0".to_owned(), 3)]))
        .await
        .expect("the runner reads to the end");
    let seen = report("reported").expect("a running runner is listed");
    assert_eq!(seen.state, bookshelf_core::RunnerState::Running);
    assert_eq!(
        seen.partitions["p/0"],
        bookshelf_core::PartitionReport {
            position: 3,
            end: Some(6),
            lag: Some(3)
        }
    );
    assert!(seen.moved_at.is_some_and(|at| at >= before), "{:?}", seen.moved_at);
    assert_eq!(seen.set_aside, 1);
    assert!(
        seen.last_set_aside
            .as_deref()
            .is_some_and(|why| why.contains("Exploded")),
        "{:?}",
        seen.last_set_aside
    );
    assert_eq!(seen.failure, None);
    running.stop().await.expect("stopped");
    assert_eq!(report("reported"), None, "a runner stopped on purpose leaves the list");
}

struct Unreachable;

#[async_trait]
impl EventSource for Unreachable {
    async fn follow(&self, _: &Checkpoint) -> Result<Box<dyn Follower>, StoreError> {
        Err(StoreError::Backend("the log at nowhere:1 cannot be reached".into()))
    }
}

/// A runner that failed stays listed, with why.
#[tokio::test]
async fn a_failed_runner_stays_listed_with_its_failure() {
    let running = ProjectionRunner::<Seen, _>::new("doomed", Unreachable).start();
    running.ended().await;
    let report = bookshelf_core::reports()
        .into_iter()
        .find(|r| r.name == "doomed")
        .expect("a failed runner is listed");
    assert_eq!(report.state, bookshelf_core::RunnerState::Failed);
    assert!(
        report.failure.as_deref().is_some_and(|why| why.contains("nowhere:1")),
        "{:?}",
        report.failure
    );
}

/// A failed runner leaves the list once another of its name starts: a
/// process that restarts a failing runner lists it once.
#[tokio::test]
async fn a_failed_runner_leaves_the_list_when_another_of_its_name_starts() {
    let listed = || {
        bookshelf_core::reports()
            .iter()
            .filter(|r| r.name == "restarted")
            .count()
    };
    for _ in 0..3 {
        let running = ProjectionRunner::<Seen, _>::new("restarted", Unreachable).start();
        running.ended().await;
    }
    assert_eq!(listed(), 1);
}
