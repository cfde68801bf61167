//! CloudEvents on Kafka: the binary-mode headers on every record Bookshelf
//! writes, and the envelope of records that other producers write as
//! CloudEvents.
//!
//! # What Bookshelf writes
//!
//! Every event record carries, beside its `bookshelf.*` headers and its JSON
//! envelope body, the CloudEvents 1.0 Kafka binary-mode headers, mapped
//! from the envelope:
//!
//! | header | value |
//! |---|---|
//! | `ce_specversion` | `1.0` |
//! | `ce_id` | the event id |
//! | `ce_source` | `/bookshelf/` and the topic, such as `/bookshelf/books` |
//! | `ce_type` | the event type, such as `BookRead` |
//! | `ce_time` | when it was recorded (RFC 3339) |
//! | `ce_subject` | the stream id, such as `book-42` (also the record key) |
//! | `content-type` | `application/json` |
//!
//! The body stays Bookshelf's envelope (its `payload` field is the event's
//! data), so a CloudEvents consumer gets the envelope as `data`.
//!
//! # What readers accept from other producers
//!
//! A record without Bookshelf's epoch header that is a CloudEvent — binary
//! mode (a `ce_specversion` header, the body being the data) or structured
//! mode (`content-type: application/cloudevents+json`, the body an event
//! with `specversion`, `id`, `source`, `type` and `data`) — is an event for
//! views and process runners ([`crate::rule::Verdict::Foreign`]), mapped
//! onto the envelope:
//!
//! * event type: `type`; schema version 1;
//! * event id: `id` when it is a UUID, otherwise a UUID derived from
//!   `source` and `id` (version 5), the same at every read;
//! * stream: `subject`, else the record key, else `cloudevents`;
//! * **version 0: no stream version.** Such an event belongs to no
//!   aggregate's stream: the store's follower passes it over (a load of
//!   that stream does not see it, and its versions are not disturbed), and
//!   views and runners take it at its position (the partition offset);
//! * recorded at: `time`, else the record's timestamp;
//! * payload: the data, which must be JSON (`datacontenttype` or
//!   `content-type` absent, `application/json` or `…+json`); other data
//!   is reported and set aside;
//! * metadata: `source` under the key `cloudevents.source`; a valid
//!   `traceparent` (distributed-tracing extension) as the event's.
//!
//! A view applies such an event when its type is one the view knows, as any
//! other; fencing does not apply to them (they come from no owner).

use bookshelf_core::{EventId, Metadata, Position, RecordedEvent, StreamId, Version};
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{Headers, Message};
use serde_json::value::RawValue;
use serde_json::Value;

/// `ce_specversion`.
pub const SPECVERSION: &str = "ce_specversion";
/// `ce_id`.
pub const ID: &str = "ce_id";
/// `ce_source`.
pub const SOURCE: &str = "ce_source";
/// `ce_type`.
pub const TYPE: &str = "ce_type";
/// `ce_time`.
pub const TIME: &str = "ce_time";
/// `ce_subject`.
pub const SUBJECT: &str = "ce_subject";
/// `content-type`.
pub const CONTENT_TYPE: &str = "content-type";
/// `ce_traceparent`: the distributed-tracing extension, kept as the
/// event's `traceparent` (and written from it).
pub const TRACEPARENT: &str = "ce_traceparent";
/// The content type of a structured-mode record.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The metadata key under which a foreign event's `source` is kept.
pub const SOURCE_METADATA: &str = "cloudevents.source";

/// The CloudEvents headers of `event`, written to `topic`.
pub(crate) fn headers_of(event: &RecordedEvent, topic: &str) -> [(&'static str, String); 7] {
    [
        (SPECVERSION, "1.0".to_owned()),
        (ID, event.event_id.to_string()),
        (SOURCE, format!("/bookshelf/{topic}")),
        (TYPE, event.event_type.to_string()),
        (
            TIME,
            event.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        (SUBJECT, event.stream_id.to_string()),
        (CONTENT_TYPE, "application/json".to_owned()),
    ]
}

fn header<'a, M: Message>(record: &'a M, name: &str) -> Option<&'a str> {
    let headers = record.headers()?;
    let value = headers.iter().find(|h| h.key.eq_ignore_ascii_case(name))?.value?;
    std::str::from_utf8(value).ok()
}

/// Whether `record` is a CloudEvent that another producer wrote: a
/// CloudEvents record without Bookshelf's epoch header.
pub fn is_foreign<M: Message>(record: &M) -> bool {
    if header(record, crate::rule::EPOCH).is_some() || header(record, crate::rule::KIND).is_some() {
        return false;
    }
    header(record, SPECVERSION).is_some()
        || header(record, CONTENT_TYPE).is_some_and(|t| t.trim().to_ascii_lowercase().starts_with(STRUCTURED))
}

/// The envelope of any record readers take as an event: Bookshelf's own
/// (its JSON body), or a CloudEvent of another producer mapped as the
/// module docs say. Its position is the record's offset.
///
/// # Errors
/// Why the record cannot be an envelope, for reports and dead letters.
pub fn envelope_of<M: Message>(record: &M) -> Result<RecordedEvent, String> {
    let mut event = if is_foreign(record) {
        foreign(record)?
    } else {
        let body = record.payload().ok_or("the record has no body")?;
        let json = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
        RecordedEvent::from_json(json).map_err(|e| e.to_string())?
    };
    event.position = Position(record.offset().max(0) as u64);
    Ok(event)
}

/// The attributes of a CloudEvent, from headers or a structured body.
struct Attributes {
    id: String,
    source: String,
    kind: String,
    time: Option<String>,
    subject: Option<String>,
    content_type: Option<String>,
    traceparent: Option<String>,
}

/// Refuses data whose content type is given and is not JSON.
fn json_only(content_type: Option<&str>) -> Result<(), String> {
    let Some(kind) = content_type else { return Ok(()) };
    let kind = kind.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if kind == "application/json" || kind.ends_with("+json") {
        Ok(())
    } else {
        Err(format!("CloudEvent data of type {kind:?}; only JSON data is mapped"))
    }
}

fn foreign<M: Message>(record: &M) -> Result<RecordedEvent, String> {
    let body = record.payload().unwrap_or_default();
    let structured = header(record, SPECVERSION).is_none();
    let (attributes, data): (Attributes, Box<RawValue>) = if structured {
        let event: serde_json::Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| format!("a structured CloudEvent that is not a JSON object: {e}"))?;
        let text = |name: &str| event.get(name).and_then(Value::as_str).map(str::to_owned);
        let required = |name: &str| text(name).ok_or_else(|| format!("a structured CloudEvent without {name}"));
        if event.contains_key("data_base64") {
            return Err("a CloudEvent with binary data (data_base64); only JSON data is mapped".into());
        }
        let data = event.get("data").cloned().unwrap_or(Value::Null);
        let data = serde_json::value::to_raw_value(&data).map_err(|e| e.to_string())?;
        (
            Attributes {
                id: required("id")?,
                source: required("source")?,
                kind: required("type")?,
                time: text("time"),
                subject: text("subject"),
                content_type: text("datacontenttype"),
                traceparent: text("traceparent"),
            },
            data,
        )
    } else {
        let required = |name: &str| {
            header(record, name)
                .map(str::to_owned)
                .ok_or_else(|| format!("a CloudEvent without {name}"))
        };
        json_only(header(record, CONTENT_TYPE))?;
        let data = std::str::from_utf8(body).map_err(|e| format!("CloudEvent data that is not UTF-8: {e}"))?;
        let data =
            RawValue::from_string(data.to_owned()).map_err(|e| format!("CloudEvent data that is not JSON: {e}"))?;
        (
            Attributes {
                id: required(ID)?,
                source: required(SOURCE)?,
                kind: required(TYPE)?,
                time: header(record, TIME).map(str::to_owned),
                subject: header(record, SUBJECT).map(str::to_owned),
                content_type: header(record, CONTENT_TYPE).map(str::to_owned),
                traceparent: header(record, TRACEPARENT).map(str::to_owned),
            },
            data,
        )
    };
    json_only(attributes.content_type.as_deref())?;
    let event_id = match attributes.id.parse::<EventId>() {
        Ok(id) => id,
        Err(_) => EventId(uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("{}\n{}", attributes.source, attributes.id).as_bytes(),
        )),
    };
    let recorded_at = match &attributes.time {
        Some(time) => DateTime::parse_from_rfc3339(time)
            .map_err(|e| format!("a CloudEvent time {time:?} that is not RFC 3339: {e}"))?
            .with_timezone(&Utc),
        None => record
            .timestamp()
            .to_millis()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .unwrap_or_else(Utc::now),
    };
    let stream = attributes
        .subject
        .or_else(|| {
            record
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "cloudevents".to_owned());
    let mut metadata = Metadata::default();
    metadata.extra.insert(SOURCE_METADATA.to_owned(), attributes.source);
    metadata.traceparent = attributes
        .traceparent
        .filter(|t| t.parse::<bookshelf_core::trace::TraceParent>().is_ok());
    Ok(RecordedEvent {
        event_id,
        stream_id: StreamId::new(stream),
        version: Version(0),
        position: Position(0),
        recorded_at,
        event_type: attributes.kind.into(),
        schema_version: 1,
        metadata,
        payload: data,
    })
}
