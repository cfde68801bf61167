//! Identifiers and the event envelope: what a store records around each event.
//!
//! # The JSON form
//!
//! A [`RecordedEvent`] serializes to one JSON object. The field names below are
//! stable: stores and topics written by one version of Bookshelf are read by
//! the next.
//!
//! ```json
//! {
//!   "event_id": "6f1c2f3e-7d0a-4a5b-9a55-0c7f2d3a4b5c",
//!   "stream_id": "book-42",
//!   "version": 3,
//!   "position": 1017,
//!   "recorded_at": "2026-11-22T17:00:00.123456Z",
//!   "event_type": "BookRead",
//!   "schema_version": 1,
//!   "metadata": { "correlation_id": "req-7", "causation_id": "cmd-9", "extra": { "user": "ann" } },
//!   "payload": { "book_id": "42", "read_at": "2026-11-22T17:00:00Z" }
//! }
//! ```
//!
//! * `version` counts the events of the stream: the first event of a stream has
//!   version 1.
//! * `position` is the event's place in the store's global log, starting at 0.
//! * `metadata` fields that are empty are left out when writing and read as
//!   empty when missing; `metadata` itself may be missing.
//! * `payload` is the event's own data, as produced by serde from the event
//!   type's variant (see [`crate::codec`]).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use smol_str::SmolStr;
use uuid::Uuid;

/// The identity of one stream of events, usually `"<category>-<id>"`, such as
/// `"book-42"`.
///
/// Cloning is cheap: an id of up to 23 bytes is kept inline (no allocation
/// at all), a longer one is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StreamId(SmolStr);

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Straight from the borrowed text where possible.
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(StreamId(SmolStr::new(&*text)))
    }
}

impl StreamId {
    /// A stream id from its full text.
    pub fn new(id: impl AsRef<str>) -> Self {
        StreamId(SmolStr::new(id))
    }

    /// The stream of one aggregate instance: `"<category>-<id>"`.
    ///
    /// ```
    /// use bookshelf_core::StreamId;
    /// let stream = StreamId::for_aggregate("book", "42");
    /// assert_eq!(stream.as_str(), "book-42");
    /// assert_eq!(stream.category(), "book");
    /// ```
    pub fn for_aggregate(category: &str, id: &str) -> Self {
        // Made for every command: short ids are put together on the stack
        // and kept inline, with no allocation.
        let mut buffer = [0u8; 64];
        let length = category.len() + 1 + id.len();
        if let Some(text) = buffer.get_mut(..length) {
            let (head, tail) = text.split_at_mut(category.len());
            head.copy_from_slice(category.as_bytes());
            tail[0] = b'-';
            tail[1..].copy_from_slice(id.as_bytes());
            if let Ok(text) = std::str::from_utf8(text) {
                return StreamId(SmolStr::new(text));
            }
        }
        StreamId(SmolStr::from(format!("{category}-{id}")))
    }

    /// The full text of the id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-`, or the whole id when there is none.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(category, _)| category)
    }

    /// The part after the first `-`: the aggregate's own id (`"42"` in
    /// `"book-42"`), or the whole id when there is no `-`.
    pub fn entity_id(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(_, id)| id)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({:?})", self.0.as_str())
    }
}

impl From<&str> for StreamId {
    fn from(id: &str) -> Self {
        StreamId::new(id)
    }
}

impl From<String> for StreamId {
    fn from(id: String) -> Self {
        StreamId(SmolStr::from(id))
    }
}

/// The name of an event's type, such as `"BookRead"`: the variant of the
/// event enum (see [`crate::codec`]).
///
/// It reads like a `&str` (it dereferences to one and compares equal to
/// one). Cloning and creating one are cheap: a name of up to 23 bytes is
/// kept inline, and the names [`crate::codec::encode`] writes are the
/// enum's own static names, so neither allocates.
///
/// ```
/// use bookshelf_core::EventType;
/// let read = EventType::from("BookRead");
/// assert_eq!(read, "BookRead");
/// assert!(read.starts_with("Book"));
/// assert_eq!(serde_json::to_string(&read)?, r#""BookRead""#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventType(SmolStr);

impl EventType {
    /// An event type from a name known at compile time, without copying it.
    pub const fn from_static(name: &'static str) -> Self {
        EventType(SmolStr::new_static(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(EventType(SmolStr::new(&*text)))
    }
}

impl std::ops::Deref for EventType {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EventType {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for EventType {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl From<&str> for EventType {
    fn from(name: &str) -> Self {
        EventType(SmolStr::new(name))
    }
}

impl From<String> for EventType {
    fn from(name: String) -> Self {
        EventType(SmolStr::from(name))
    }
}

impl From<EventType> for String {
    fn from(name: EventType) -> Self {
        name.0.into()
    }
}

impl PartialEq<str> for EventType {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for EventType {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for EventType {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl PartialEq<EventType> for str {
    fn eq(&self, other: &EventType) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<EventType> for &str {
    fn eq(&self, other: &EventType) -> bool {
        *self == other.as_str()
    }
}

/// How many events a stream holds; the version of its last event.
///
/// An empty (or missing) stream is at [`Version::INITIAL`], 0; its first event
/// has version 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The version of a stream with no events.
    pub const INITIAL: Version = Version(0);

    /// The version after this one.
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A place in a store's global log. The first event is at position 0.
///
/// A position used as a checkpoint names the *next* event to read, so a view
/// that has applied the event at position `p` keeps `p.next()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// The start of the log.
    pub const START: Position = Position(0);

    /// The position after this one.
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The unique id of one event, chosen when the event is created.
///
/// Stores use it to recognise an event they already hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A new random (v4) id.
    pub fn new() -> Self {
        EventId(Uuid::new_v4())
    }
}

impl std::str::FromStr for EventId {
    type Err = uuid::Error;

    /// Parses an id in any of the forms [`Uuid`] reads (hyphenated, simple, …).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text).map(EventId)
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What travels with an event besides its payload: where it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Ties together everything done for one outside request (an HTTP
    /// request's `x-correlation-id`, for example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the command or event that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The W3C `traceparent` of the step that caused this event (see
    /// [`crate::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Free key-value pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    /// The metadata of what `event` causes (the commands a process manager
    /// sends because of it): the event's correlation id, the event as the
    /// cause, and its trace continued in a new span.
    pub fn following<P>(event: &Envelope<P>) -> Metadata {
        Metadata {
            correlation_id: event.metadata.correlation_id.clone(),
            causation_id: Some(event.event_id.to_string()),
            traceparent: event
                .metadata
                .traceparent
                .as_deref()
                .and_then(|t| t.parse::<crate::trace::TraceParent>().ok())
                .map(|t| t.child().to_string()),
            extra: BTreeMap::new(),
        }
    }

    /// Metadata with a correlation id.
    pub fn correlated(correlation_id: impl Into<String>) -> Self {
        Metadata {
            correlation_id: Some(correlation_id.into()),
            ..Metadata::default()
        }
    }

    /// Sets the causation id.
    pub fn caused_by(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    /// Adds a free key-value pair.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The metadata `json` holds (as its serializer writes it, or any other
    /// JSON form of it), for a backend that keeps metadata apart from the
    /// envelope. The serializer's own form is read without a general JSON
    /// parser.
    ///
    /// ```
    /// use bookshelf_core::Metadata;
    ///
    /// let metadata = Metadata::correlated("order-7");
    /// let json = serde_json::to_string(&metadata)?;
    /// assert_eq!(Metadata::from_json(&json)?, metadata);
    /// assert_eq!(Metadata::from_json(r#"{ "correlation_id" : "order-7" }"#)?, metadata);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    ///
    /// # Errors
    /// The parser's error when `json` is not metadata.
    pub fn from_json(json: &str) -> Result<Metadata, serde_json::Error> {
        match crate::canonical::metadata(json) {
            Some((metadata, "")) => Ok(metadata),
            _ => serde_json::from_str(json),
        }
    }
}

/// The fields of an envelope's JSON form, in the order they are written.
pub(crate) const FIELDS: &[&str] = &[
    "event_id",
    "stream_id",
    "version",
    "position",
    "recorded_at",
    "event_type",
    "schema_version",
    "metadata",
    "payload",
];

/// An event about to be appended: everything but what the store assigns
/// (stream, version, position and time).
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The event's id; a store may use it to recognise a retried append.
    pub event_id: EventId,
    /// The event type name, such as `"BookRead"`.
    pub event_type: EventType,
    /// The schema version of `payload`.
    pub schema_version: u32,
    /// Correlation, causation and free key-values.
    pub metadata: Metadata,
    /// The payload as JSON.
    pub payload: Box<RawValue>,
}

impl NewEvent {
    /// `event`, encoded by its type's codec (see [`crate::codec::encode`]),
    /// under a new id, with `metadata`.
    ///
    /// ```
    /// use bookshelf_core::{DomainEvent, Metadata, NewEvent};
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// enum BookEvent { BookRead { title: String } }
    /// impl DomainEvent for BookEvent {}
    ///
    /// let event = NewEvent::encode(&BookEvent::BookRead { title: "Dune".into() }, Metadata::correlated("req-1"))?;
    /// assert_eq!(event.event_type, "BookRead");
    /// assert_eq!(event.payload.get(), r#"{"title":"Dune"}"#);
    /// # Ok::<(), bookshelf_core::EncodeError>(())
    /// ```
    ///
    /// # Errors
    /// [`EncodeError`](crate::EncodeError) when the event is not an enum
    /// variant or does not serialize.
    pub fn encode<E: crate::codec::DomainEvent>(
        event: &E,
        metadata: Metadata,
    ) -> Result<NewEvent, crate::codec::EncodeError> {
        let encoded = crate::codec::encode(event)?;
        Ok(NewEvent {
            event_id: EventId::new(),
            event_type: encoded.event_type,
            schema_version: encoded.schema_version,
            metadata,
            payload: encoded.payload,
        })
    }
}

/// An event with everything around it. `P` is the payload: raw JSON as
/// stored ([`RecordedEvent`]) or a decoded domain event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// The event's unique id.
    pub event_id: EventId,
    /// The stream the event belongs to.
    pub stream_id: StreamId,
    /// The event's version in its stream (1 for the first).
    pub version: Version,
    /// The event's place in the store's global log (0 for the first).
    pub position: Position,
    /// When the store recorded the event.
    #[serde(with = "crate::timestamp")]
    pub recorded_at: DateTime<Utc>,
    /// The event type name, such as `"BookRead"`.
    pub event_type: EventType,
    /// The schema version the payload was written with.
    pub schema_version: u32,
    /// Correlation, causation and free key-values.
    #[serde(default)]
    pub metadata: Metadata,
    /// The event itself.
    pub payload: P,
}

/// An event as a store holds it, with its payload as raw JSON.
pub type RecordedEvent = Envelope<Box<RawValue>>;

impl<P> Envelope<P> {
    /// The same envelope around another payload.
    pub fn with_payload<Q>(&self, payload: Q) -> Envelope<Q> {
        Envelope {
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            version: self.version,
            position: self.position,
            recorded_at: self.recorded_at,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            metadata: self.metadata.clone(),
            payload,
        }
    }
}

impl<P> Envelope<P> {
    /// The header (an envelope around `()`) and the payload, apart.
    pub fn into_parts(self) -> (Envelope<()>, P) {
        let mut payload = None;
        let header = self.map_payload(|p| payload = Some(p));
        (
            header,
            payload.expect("map_payload hands over the payload exactly once"),
        )
    }

    /// The same envelope around `f(payload)`.
    pub fn map_payload<Q>(self, f: impl FnOnce(P) -> Q) -> Envelope<Q> {
        Envelope {
            event_id: self.event_id,
            stream_id: self.stream_id,
            version: self.version,
            position: self.position,
            recorded_at: self.recorded_at,
            event_type: self.event_type,
            schema_version: self.schema_version,
            metadata: self.metadata,
            payload: f(self.payload),
        }
    }
}

impl RecordedEvent {
    /// The stable JSON form of this event (see the [module docs](self)).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a recorded event always serializes: its fields are plain data")
    }

    /// Reads the stable JSON form of an event.
    ///
    /// # Errors
    /// A [`serde_json::Error`] when `json` is not a valid envelope.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordedEvent {
        Envelope {
            event_id: EventId::new(),
            stream_id: StreamId::for_aggregate("book", "42"),
            version: Version(3),
            position: Position(1017),
            recorded_at: Utc::now(),
            event_type: "BookRead".into(),
            schema_version: 1,
            metadata: Metadata::correlated("req-7").caused_by("cmd-9").with("user", "ann"),
            payload: RawValue::from_string(r#"{"book_id":"42"}"#.into()).unwrap(),
        }
    }

    #[test]
    fn json_form_round_trips_and_uses_stable_field_names() {
        let event = sample();
        let json = event.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        for field in FIELDS {
            assert!(value.get(field).is_some(), "missing field {field} in {json}");
        }
        assert_eq!(value["metadata"]["correlation_id"], "req-7");
        assert_eq!(value["metadata"]["extra"]["user"], "ann");
        let back = RecordedEvent::from_json(&json).unwrap();
        assert_eq!(back.event_id, event.event_id);
        assert_eq!(back.stream_id, event.stream_id);
        assert_eq!(back.metadata, event.metadata);
        assert_eq!(back.payload.get(), event.payload.get());
        assert_eq!(back.recorded_at, event.recorded_at);
    }

    #[test]
    fn metadata_may_be_missing_in_stored_json() {
        let json = r#"{"event_id":"6f1c2f3e-7d0a-4a5b-9a55-0c7f2d3a4b5c","stream_id":"book-1",
            "version":1,"position":0,"recorded_at":"2026-11-22T17:00:00Z","event_type":"BookAdded",
            "schema_version":1,"payload":{}}"#;
        let event = RecordedEvent::from_json(json).unwrap();
        assert_eq!(event.metadata, Metadata::default());
    }

    #[test]
    fn stream_category_is_the_part_before_the_first_dash() {
        assert_eq!(StreamId::new("book-1-2").category(), "book");
        assert_eq!(StreamId::new("plain").category(), "plain");
        assert_eq!(StreamId::new("book-1-2").entity_id(), "1-2");
    }

    /// Any text, short (kept inline) or long (shared), and with characters
    /// JSON must escape (read back through an owned string).
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            proptest::string::string_regex("[a-z0-9]{0,30}").expect("a valid pattern"),
            proptest::string::string_regex("(?s).{0,80}").expect("a valid pattern"),
        ]
    }

    fn hash_of<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
        use std::hash::BuildHasher;
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(value)
    }

    proptest::proptest! {
        #[test]
        fn stream_ids_of_any_length_keep_their_text(category in text(), id in text(), other in text()) {
            let whole = format!("{category}-{id}");
            let stream = StreamId::for_aggregate(&category, &id);
            proptest::prop_assert_eq!(stream.as_str(), whole.as_str());
            proptest::prop_assert_eq!(&stream, &StreamId::new(&whole));
            proptest::prop_assert_eq!(&stream, &StreamId::from(whole.clone()));
            let copy = stream.clone();
            proptest::prop_assert_eq!(copy.as_str(), whole.as_str());
            let json = serde_json::to_string(&stream).expect("a stream id serializes");
            proptest::prop_assert_eq!(&json, &serde_json::to_string(&whole).expect("text serializes"));
            proptest::prop_assert_eq!(&serde_json::from_str::<StreamId>(&json).expect("it reads back"), &stream);
            let other = StreamId::new(&other);
            proptest::prop_assert_eq!(stream.cmp(&other), whole.as_str().cmp(other.as_str()));
            proptest::prop_assert_eq!(stream == other, whole == other.as_str());
        }

        #[test]
        fn event_types_of_any_length_behave_as_their_text(name in text(), other in text()) {
            let event_type = EventType::from(name.as_str());
            proptest::prop_assert_eq!(event_type.as_str(), name.as_str());
            proptest::prop_assert_eq!(&event_type, &EventType::from(name.clone()));
            proptest::prop_assert!(event_type == name && event_type == *name.as_str() && name.as_str() == event_type);
            proptest::prop_assert_eq!(String::from(event_type.clone()), name.clone());
            proptest::prop_assert_eq!(event_type.to_string(), name.clone());
            proptest::prop_assert_eq!(format!("{event_type:?}"), format!("{name:?}"));
            // Hashes as its text, so maps keyed by it are looked up by `&str`.
            proptest::prop_assert_eq!(hash_of(&event_type), hash_of(name.as_str()));
            let json = serde_json::to_string(&event_type).expect("an event type serializes");
            proptest::prop_assert_eq!(&json, &serde_json::to_string(&name).expect("text serializes"));
            proptest::prop_assert_eq!(&serde_json::from_str::<EventType>(&json).expect("it reads back"), &event_type);
            let other = EventType::from(other);
            proptest::prop_assert_eq!(event_type.cmp(&other), name.as_str().cmp(other.as_str()));
        }
    }

    #[test]
    fn static_event_types_equal_those_made_from_text() {
        let names: std::collections::HashSet<EventType> = [
            EventType::from_static("BookAdded"),
            EventType::from_static("AnEventTypeNameLongerThanInline"),
        ]
        .into();
        assert!(names.contains("BookAdded"));
        assert!(names.contains(&EventType::from(String::from("AnEventTypeNameLongerThanInline"))));
        assert!(!names.contains("BookRead"));
    }
}
