//! Allocations on the hot paths, counted with dhat as the global allocator:
//! a decoded envelope allocates only the strings its event and metadata own,
//! an encoded event only its payload's text, and stream ids and event type
//! names of up to 23 bytes allocate nothing, to make or to clone.
//!
//! One test in this file: dhat counts every thread's allocations, and
//! allows one profiler at a time.

use bookshelf_core::{
    codec, Envelope, EventCodec, EventId, EventType, Metadata, Position, RecordedEvent, StreamId, Version,
};
use chrono::{TimeZone, Utc};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Shelved {
    /// One string of its own.
    BookRead { title: String, pages: u32 },
}

impl bookshelf_core::DomainEvent for Shelved {}

/// How many blocks `f` allocated, and what it returned.
fn blocks_during<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = dhat::HeapStats::get().total_blocks;
    let value = f();
    (dhat::HeapStats::get().total_blocks - before, value)
}

#[test]
fn hot_paths_allocate_only_what_their_data_owns() {
    let _profiler = dhat::Profiler::builder().testing().build();

    let (blocks, short) = blocks_during(|| StreamId::for_aggregate("book", "1234567890"));
    assert_eq!(blocks, 0, "a short stream id is kept inline");
    assert_eq!(blocks_during(|| short.clone()).0, 0, "and cloned as a value");
    let (blocks, name) = blocks_during(|| EventType::from("BookRead"));
    assert_eq!(blocks, 0, "a short event type name is kept inline");
    assert_eq!(blocks_during(|| name.clone()).0, 0);
    let long_id = "9".repeat(40);
    let (blocks, long) = blocks_during(|| StreamId::for_aggregate("book", &long_id));
    assert_eq!(blocks, 1, "a long stream id: one shared allocation");
    assert_eq!(blocks_during(|| long.clone()).0, 0, "shared, not copied");

    let event = Shelved::BookRead {
        title: "Dune".into(),
        pages: 412,
    };
    let (blocks, encoded) = blocks_during(|| codec::encode(&event).expect("the event encodes"));
    assert_eq!(encoded.event_type, "BookRead");
    // The payload's text is written into a buffer, then boxed to its
    // length: at most a growth or a shrink besides, never the name.
    assert!(blocks <= 2, "encoding took {blocks} allocations");

    let record: RecordedEvent = Envelope {
        event_id: EventId::new(),
        stream_id: short.clone(),
        version: Version(3),
        position: Position(1017),
        recorded_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        event_type: encoded.event_type,
        schema_version: encoded.schema_version,
        metadata: Metadata::correlated("req-7"),
        payload: encoded.payload,
    };
    let json = record.to_json();
    let codec = EventCodec::<Shelved>::new();
    let (blocks, decoded) = blocks_during(|| codec.decode_json(&json).expect("the envelope decodes"));
    assert_eq!(decoded.payload, event);
    assert_eq!(decoded.stream_id, short);
    // The event's title and the correlation id: nothing for the header.
    assert_eq!(blocks, 2, "decoding an envelope took {blocks} allocations");
    let (blocks, _) = blocks_during(|| codec.decode_envelope(&record).expect("the record decodes"));
    // The title, and the metadata's copy of the correlation id.
    assert_eq!(blocks, 2, "decoding a stored record took {blocks} allocations");
}
