//! Several stores on one topic: ownership from membership, claims and epochs,
//! and the one rule every reader applies, against a real broker (tansu, from
//! `scripts/test.sh`).

mod common;

use common::{brokers, counted, dead_letters, project_to_end, projection, topic};
use std::collections::BTreeMap;
use std::time::Duration;

use bookshelf_core::{
    DomainEvent, Envelope, EventStore, ExpectedVersion, InMemoryViewStore, StoreError, StreamId, Version, View,
};
use bookshelf_kafka::{headers, rule, KafkaConfig, KafkaStore};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

fn config(topic: &str) -> KafkaConfig {
    KafkaConfig::new(brokers(), topic)
        .partitions(3)
        .create_topic(true)
        .timeout(Duration::from_secs(15))
}

async fn member(topic: &str, id: &str, members: watch::Receiver<Vec<String>>) -> KafkaStore {
    KafkaStore::builder(config(topic))
        .member(id, format!("http://{id}"))
        .members(members)
        .claim_backoff(Duration::from_millis(300))
        .open()
        .await
        .expect("a member store opens")
}

/// Waits until `check` holds, or fails naming `what`.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn owned(store: &KafkaStore) -> Vec<i32> {
    store
        .owners()
        .into_iter()
        .filter(|o| o.mine)
        .map(|o| o.partition)
        .collect()
}

/// A stream of `prefix-N` on `partition` of 3.
fn stream_on(partition: i32, prefix: &str) -> StreamId {
    (0..)
        .map(|n| StreamId::new(format!("{prefix}-{n}")))
        .find(|s| bookshelf_kafka::partition_for(s.as_str(), 3) == partition)
        .expect("some key hashes to every partition")
}

fn raw_producer() -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("a plain producer")
}

fn error_of<T: std::fmt::Debug>(result: Result<T, StoreError>) -> StoreError {
    match result {
        Err(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_share_the_partitions_and_a_leavers_partitions_move() {
    let topic = topic("members");
    let (tx, rx) = watch::channel(vec!["a".to_owned(), "b".to_owned()]);
    let a = member(&topic, "a", rx.clone()).await;
    let b = member(&topic, "b", rx.clone()).await;
    until("a and b own all three partitions between them", || {
        owned(&a).len() + owned(&b).len() == 3
    })
    .await;
    assert!(
        !owned(&a).is_empty() && !owned(&b).is_empty(),
        "a: {:?}, b: {:?}",
        owned(&a),
        owned(&b)
    );
    let on_b = stream_on(owned(&b)[0], "counter");
    until("a has read b's claim", || {
        a.owner_of(&on_b).is_some_and(|c| c.owner == "b")
    })
    .await;

    // a does not write b's partitions; it says who does.
    let refused = error_of(a.append(&on_b, ExpectedVersion::Any, vec![counted(1)]).await);
    let StoreError::NotOwner { owner, .. } = &refused else {
        panic!("a NotOwner error, got {refused}");
    };
    assert_eq!(owner.as_deref(), Some("b"));
    assert!(refused.is_retryable());
    assert_eq!(a.owner_of(&on_b).map(|c| c.address), Some("http://b".to_owned()));

    b.append(&on_b, ExpectedVersion::NoStream, vec![counted(1)])
        .await
        .unwrap();
    until("a has read b's event", || {
        futures_ready(a.stream_version(&on_b)) == Some(Version(1))
    })
    .await;

    // b leaves: its partitions move to a, which goes on from b's version.
    tx.send_replace(vec!["a".to_owned()]);
    until("a owns every partition", || owned(&a).len() == 3).await;
    until("b owns none", || owned(&b).is_empty()).await;
    let late = error_of(
        b.append(&on_b, ExpectedVersion::Exact(Version(1)), vec![counted(9)])
            .await,
    );
    assert!(matches!(late, StoreError::NotOwner { .. }), "{late}");
    let out = a
        .append(&on_b, ExpectedVersion::Exact(Version(1)), vec![counted(2)])
        .await
        .unwrap();
    assert_eq!(out.version, Version(2));
    let payloads: Vec<String> = a
        .read_stream(&on_b, Version(1))
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload.get().to_owned())
        .collect();
    assert_eq!(payloads, vec![r#"{"n":1}"#, r#"{"n":2}"#]);
}

/// The value of a future that is ready at once (local reads are).
fn futures_ready<T>(future: impl std::future::Future<Output = Result<T, StoreError>>) -> Option<T> {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(Ok(value)) => Some(value),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CounterEvent {
    Counted { n: u64 },
}
impl DomainEvent for CounterEvent {}

#[derive(Default, Serialize, Deserialize)]
struct Seen {
    by_stream: BTreeMap<String, Vec<u64>>,
}

impl View for Seen {
    type Event = CounterEvent;
    fn apply(&mut self, event: Envelope<CounterEvent>) {
        let CounterEvent::Counted { n } = event.payload;
        self.by_stream.entry(event.stream_id.to_string()).or_default().push(n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_writers_late_records_are_passed_over_by_every_reader() {
    let topic = topic("fenced");
    let first = KafkaStore::open(config(&topic)).await.unwrap();
    let stream = StreamId::new("counter-z");
    first
        .append(&stream, ExpectedVersion::NoStream, vec![counted(1)])
        .await
        .unwrap();
    let old_epoch = first.owner_of(&stream).unwrap().epoch;

    // A second one writer takes over: its claims fence the first.
    let second = KafkaStore::open(config(&topic)).await.unwrap();
    assert!(second.owner_of(&stream).unwrap().epoch > old_epoch);
    assert_eq!(second.stream_version(&stream).await.unwrap(), Version(1));
    until("the first has read the second's claims", || owned(&first).is_empty()).await;
    let refused = error_of(
        first
            .append(&stream, ExpectedVersion::Exact(Version(1)), vec![counted(7)])
            .await,
    );
    assert!(matches!(refused, StoreError::NotOwner { .. }), "{refused}");

    // What a paused first owner would still have sent: version 2 under its
    // old epoch, landing after the claim. Then the second writes version 2.
    let producer = raw_producer();
    let late = bookshelf_core::RecordedEvent {
        event_id: bookshelf_core::EventId::new(),
        stream_id: stream.clone(),
        version: Version(2),
        position: bookshelf_core::Position(0),
        recorded_at: chrono::Utc::now(),
        event_type: "Counted".into(),
        schema_version: 1,
        metadata: Default::default(),
        payload: serde_json::value::RawValue::from_string(r#"{"n":666}"#.into()).unwrap(),
    };
    let body = late.to_json();
    let epoch_text = old_epoch.to_string();
    let record = FutureRecord::to(&topic)
        .key(stream.as_str())
        .payload(&body)
        .partition(second.partition_of(&stream))
        .headers(OwnedHeaders::new().insert(Header {
            key: headers::EPOCH,
            value: Some(epoch_text.as_bytes()),
        }));
    producer.send(record, Duration::from_secs(10)).await.unwrap();
    let out = second
        .append(&stream, ExpectedVersion::Exact(Version(1)), vec![counted(2)])
        .await
        .expect("the late record did not count as version 2");
    assert_eq!(out.version, Version(2));

    // Every reader agrees: the store, a projection, and a third store reading
    // the topic from the start.
    let ns = |events: &[std::sync::Arc<bookshelf_core::RecordedEvent>]| -> Vec<String> {
        events.iter().map(|e| e.payload.get().to_owned()).collect()
    };
    let expected = vec![r#"{"n":1}"#.to_owned(), r#"{"n":2}"#.to_owned()];
    assert_eq!(ns(&second.read_stream(&stream, Version(1)).await.unwrap()), expected);
    project_to_end(
        projection::<Seen>("seen", &config(&topic)).await,
        &config(&topic),
        &topic,
        |seen| assert_eq!(seen.by_stream.get(stream.as_str()), Some(&vec![1, 2])),
    )
    .await;
    let third = KafkaStore::open(config(&topic)).await.unwrap();
    assert_eq!(ns(&third.read_stream(&stream, Version(1)).await.unwrap()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_answered_after_a_takeover_is_an_error_and_not_in_the_log() {
    // Two members that both believe they own everything (discovery lists
    // each only itself): whoever claims last wins, the other's appends fail
    // and none of what they answered with an error is ever read.
    let topic = topic("split-brain");
    let (_ta, ra) = watch::channel(vec!["a".to_owned()]);
    let (_tb, rb) = watch::channel(vec!["b".to_owned()]);
    let a = member(&topic, "a", ra).await;
    until("a owns every partition", || owned(&a).len() == 3).await;
    let b = member(&topic, "b", rb).await;
    let mut answered: Vec<(StreamId, u64, bool)> = Vec::new();
    let mut tasks = Vec::new();
    for n in 0..300u64 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("counter-{}", n % 30));
            let writer = if n % 2 == 0 { &a } else { &b };
            let result = writer.append(&stream, ExpectedVersion::Any, vec![counted(n)]).await;
            (stream, n, result)
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut fenced = 0;
    for task in tasks {
        let (stream, n, result) = task.await.unwrap();
        match result {
            Ok(_) => answered.push((stream, n, true)),
            Err(error @ (StoreError::Fenced { .. } | StoreError::NotOwner { .. } | StoreError::Backend(_))) => {
                if matches!(error, StoreError::Fenced { .. }) {
                    fenced += 1;
                }
                answered.push((stream, n, false));
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    // The last word: a reader of the whole topic from the start.
    let reader = KafkaStore::builder(config(&topic))
        .member("reader", "")
        .members(watch::channel(Vec::new()).1)
        .open()
        .await
        .unwrap();
    until("the reader has caught up", || reader.caught_up().0).await;
    let mut in_log: BTreeMap<u64, usize> = BTreeMap::new();
    for s in 0..30 {
        for event in reader
            .read_stream(&StreamId::new(format!("counter-{s}")), Version(1))
            .await
            .unwrap()
        {
            let n: u64 = event.metadata.extra["n"].parse().unwrap();
            *in_log.entry(n).or_default() += 1;
        }
    }
    let acknowledged = answered.iter().filter(|(_, _, ok)| *ok).count();
    for (stream, n, ok) in &answered {
        let times = in_log.get(n).copied().unwrap_or(0);
        if *ok {
            assert_eq!(times, 1, "acknowledged append {n} on {stream} is in the log once");
        } else {
            assert_eq!(
                times, 0,
                "append {n} on {stream} answered with an error is not in the log"
            );
        }
    }
    assert!(acknowledged > 0, "some appends went through");
    eprintln!(
        "{acknowledged} acknowledged, {} refused ({fenced} fenced after sending)",
        answered.len() - acknowledged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_that_break_the_protocol_are_named_and_set_aside() {
    let topic = topic("broken");
    let store = KafkaStore::open(config(&topic)).await.unwrap();
    let stream = stream_on(0, "counter");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![counted(1)])
        .await
        .unwrap();
    let epoch = store.owner_of(&stream).unwrap().epoch.to_string();
    let producer = raw_producer();
    let epoch_header = || {
        OwnedHeaders::new().insert(Header {
            key: headers::EPOCH,
            value: Some(epoch.as_bytes()),
        })
    };
    let good_body = |version: u64| {
        format!(
            r#"{{"event_id":"{}","stream_id":"{stream}","version":{version},"position":0,"recorded_at":"2026-11-23T00:00:00Z","event_type":"Counted","schema_version":1,"payload":{{"n":{version}}}}}"#,
            bookshelf_core::EventId::new()
        )
    };
    let wrong = good_body(2);
    // On partition 1, though the stream belongs on 0.
    let record = FutureRecord::to(&topic)
        .key(stream.as_str())
        .payload(&wrong)
        .partition(1)
        .headers(epoch_header());
    producer.send(record, Duration::from_secs(10)).await.unwrap();
    // No key at all.
    let record = FutureRecord::<str, _>::to(&topic)
        .payload(&wrong)
        .partition(0)
        .headers(epoch_header());
    producer.send(record, Duration::from_secs(10)).await.unwrap();
    // A claim whose body is not a claim.
    let record = FutureRecord::to(&topic)
        .key(rule::CLAIM_KEY)
        .payload("{\"epoch\":\"many\"}")
        .partition(0)
        .headers(OwnedHeaders::new().insert(Header {
            key: rule::KIND,
            value: Some(rule::CLAIM.as_bytes()),
        }));
    producer.send(record, Duration::from_secs(10)).await.unwrap();
    // None of them counts: the next version is still 2, and the store goes on.
    store
        .append(&stream, ExpectedVersion::Exact(Version(1)), vec![counted(2)])
        .await
        .unwrap();
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(2));

    let projection = projection::<Seen>("seen", &config(&topic))
        .await
        .persist_to(InMemoryViewStore::new());
    project_to_end(projection, &config(&topic), &topic, |seen| {
        assert_eq!(seen.by_stream.get(stream.as_str()), Some(&vec![1, 2]))
    })
    .await;

    let mut reasons: Vec<String> = dead_letters(&topic, 3)
        .await
        .into_iter()
        .map(|(_, reason, source, _)| format!("{source} {reason}"))
        .collect();
    reasons.sort();
    let text = reasons.join("\n");
    assert!(
        text.contains(&format!("{topic}/1@")) && text.contains("belongs on partition 0"),
        "{text}"
    );
    assert!(text.contains("without a stream key"), "{text}");
    assert!(text.contains("claim that is not valid"), "{text}");
}

/// A read behind [`KafkaStore::read_barrier`] on an instance that does not
/// own the partition sees every append acknowledged before it, and so does
/// a store opened a moment ago. Without the barrier both read their copy
/// as it stands: the follower's fetches on tansu take 50 ms, a freshly
/// opened store has read nothing yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_behind_a_barrier_sees_every_append_acknowledged_before_it() {
    let topic = topic("barrier");
    let (_tell, members) = watch::channel(vec!["writer".to_owned()]);
    let writer = member(&topic, "writer", members.clone()).await;
    let reader = member(&topic, "reader", members.clone()).await;
    until("the writer owns every partition", || owned(&writer).len() == 3).await;
    let stream = stream_on(1, "fresh");
    let within = Duration::from_secs(3);
    for n in 1..=20u64 {
        writer
            .append(&stream, ExpectedVersion::Exact(Version(n - 1)), vec![counted(n)])
            .await
            .expect("appended");
        reader
            .read_barrier(&stream, within)
            .await
            .expect("the barrier is passed");
        let version = reader.stream_version(&stream).await.expect("a version");
        assert_eq!(version, Version(n), "a read after append {n} was acknowledged");
        let events = reader.read_stream(&stream, Version(n)).await.expect("the stream");
        assert_eq!(events.len(), 1, "the event of append {n}");
    }

    // A store that has just opened, with nothing of the topic read yet.
    let late = member(&topic, "late", members).await;
    late.read_barrier(&stream, within).await.expect("the barrier is passed");
    assert_eq!(late.stream_version(&stream).await.expect("a version"), Version(20));
}
