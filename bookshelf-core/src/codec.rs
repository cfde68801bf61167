//! Turning domain events into stored JSON and back, with schema evolution.
//!
//! A domain event type is a Rust enum with serde's default (externally
//! tagged) representation. Each variant is one event type: its name becomes
//! the envelope's `event_type`, and its content becomes the `payload`.
//!
//! ```
//! use bookshelf_core::codec::{DomainEvent, EventCodec};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum BookEvent {
//!     BookAdded { title: String },
//!     BookRemoved,
//! }
//! impl DomainEvent for BookEvent {}
//!
//! let encoded = bookshelf_core::codec::encode(&BookEvent::BookAdded { title: "Dune".into() })?;
//! assert_eq!(encoded.event_type, "BookAdded");
//! assert_eq!(encoded.payload.get(), r#"{"title":"Dune"}"#);
//!
//! let codec = EventCodec::<BookEvent>::new();
//! let decoded = codec.decode(&encoded.event_type, encoded.schema_version, &encoded.payload)?;
//! assert_eq!(decoded, BookEvent::BookAdded { title: "Dune".into() });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Schema evolution
//!
//! When an event's shape changes, raise its [`DomainEvent::schema_version`]
//! and register an [`Upcasters`] step that turns the old JSON into the new.
//! Old events stay in the store as they were written; they are upcast on read,
//! one version at a time, and then decoded into the current type. An upcaster
//! may also rename the event type.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, VariantAccess, Visitor};
use serde::{ser, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::envelope::{Envelope, EventType, Metadata, Position, RecordedEvent, StreamId, Version};

/// A domain event type: a serde enum whose variants are the event types.
///
/// Both methods have defaults; most event types implement the trait with an
/// empty block.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The current schema version of the given event type. Defaults to 1.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// The steps that turn older schema versions into current ones. Called
    /// once when an [`EventCodec`] is built. Defaults to none.
    fn upcasters() -> Upcasters {
        Upcasters::new()
    }
}

/// Why an event could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The event did not serialize as an externally tagged enum variant.
    #[error("an event must serialize as an enum variant (serde's default representation), got {0}")]
    NotAnEnum(String),
    /// serde_json failed.
    #[error("event could not be serialized: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why a stored event could not be decoded into a domain event.
///
/// Projections treat these as poison events: they report them, set them aside
/// and go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The event type is not a variant of the domain event enum.
    #[error("unknown event type {event_type:?}")]
    UnknownEventType {
        /// The stored type name.
        event_type: String,
    },
    /// The event was written by a newer schema than this code knows.
    #[error("event type {event_type:?} has schema version {found}, newer than the {current} this code knows")]
    SchemaTooNew {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        found: u32,
        /// The newest version this code knows.
        current: u32,
    },
    /// No upcaster takes this event type from this version.
    #[error("no upcaster for event type {event_type:?} from schema version {from}")]
    MissingUpcaster {
        /// The type name at this step.
        event_type: String,
        /// The schema version at this step.
        from: u32,
    },
    /// An upcaster refused the stored JSON.
    #[error("upcasting {event_type:?} from schema version {from} failed: {message}")]
    Upcast {
        /// The type name at this step.
        event_type: String,
        /// The schema version at this step.
        from: u32,
        /// What the upcaster said.
        message: String,
    },
    /// The text is not an event envelope (see [`crate::envelope`]).
    #[error("not an event envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// The payload did not match the event type's fields.
    #[error("payload of {event_type:?} does not match the event: {source}")]
    Payload {
        /// The type name.
        event_type: String,
        /// serde_json's account.
        #[source]
        source: serde_json::Error,
    },
}

/// An encoded domain event: the parts of a [`crate::NewEvent`] that come from
/// the event itself.
#[derive(Debug)]
pub struct EncodedEvent {
    /// The variant name.
    pub event_type: EventType,
    /// The current schema version of that type.
    pub schema_version: u32,
    /// The variant's content as JSON (`null` for a unit variant).
    pub payload: Box<RawValue>,
}

/// Encodes a domain event into its type name, schema version and payload.
///
/// # Errors
/// [`EncodeError::NotAnEnum`] when `event` is not an enum variant in serde's
/// default representation; [`EncodeError::Json`] when serialization fails.
pub fn encode<E: DomainEvent>(event: &E) -> Result<EncodedEvent, EncodeError> {
    // Serialized once, straight to text, and only the variant's content:
    // `VariantContent` takes the variant's name as serde hands it over and
    // writes its content alone, so the payload needs no cutting out and no
    // second parse to become a `RawValue`.
    let name = std::cell::Cell::new(None);
    let written = serde_json::value::to_raw_value(&ContentOf { event, name: &name });
    let event_type = match (written, name.get()) {
        (Ok(payload), Some(event_type)) if variant_names::<E>().contains(&event_type) => {
            return Ok(EncodedEvent {
                event_type: EventType::from_static(event_type),
                schema_version: E::schema_version(event_type),
                payload,
            })
        }
        (Ok(_), Some(event_type)) => event_type,
        (Err(error), Some(_)) => return Err(EncodeError::Json(error)),
        (Ok(_), None) => return Err(EncodeError::NotAnEnum("no variant".to_owned())),
        (Err(error), None) => return Err(EncodeError::NotAnEnum(error.to_string())),
    };
    Err(EncodeError::NotAnEnum(format!(
        "a variant {event_type:?} of another enum"
    )))
}

/// An event seen through [`VariantContent`]: serializes as its variant's
/// content, and leaves the variant's name in `name`.
struct ContentOf<'e, 'n, E> {
    event: &'e E,
    name: &'n std::cell::Cell<Option<&'static str>>,
}

impl<E: Serialize> Serialize for ContentOf<'_, '_, E> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.event.serialize(VariantContent {
            inner: serializer,
            name: self.name,
        })
    }
}

/// A serializer that takes one enum variant in serde's default
/// representation and writes only its content (`null` for a unit variant)
/// to `inner`; anything but an enum variant is an error.
struct VariantContent<'n, S> {
    inner: S,
    name: &'n std::cell::Cell<Option<&'static str>>,
}

impl<S: ser::Serializer> VariantContent<'_, S> {
    fn not_a_variant<T>(found: &str) -> Result<T, S::Error> {
        Err(ser::Error::custom(format_args!("{found}, not an enum variant")))
    }
}

/// Declares the `Serializer` methods that refuse anything but a variant.
macro_rules! refuse {
    ($($method:ident($($arg:ty),*) -> $ok:ty: $what:literal;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ok, S::Error> {
            Self::not_a_variant($what)
        })*
    };
}

impl<S: ser::Serializer> ser::Serializer for VariantContent<'_, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = ser::Impossible<S::Ok, S::Error>;
    type SerializeTuple = ser::Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = ser::Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = TupleContent<S::SerializeTuple>;
    type SerializeMap = ser::Impossible<S::Ok, S::Error>;
    type SerializeStruct = ser::Impossible<S::Ok, S::Error>;
    type SerializeStructVariant = StructContent<S::SerializeStruct>;

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<S::Ok, S::Error> {
        self.name.set(Some(variant));
        self.inner.serialize_unit()
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.name.set(Some(variant));
        value.serialize(self.inner)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.name.set(Some(variant));
        self.inner.serialize_tuple(len).map(TupleContent)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.name.set(Some(variant));
        self.inner.serialize_struct(name, len).map(StructContent)
    }

    refuse! {
        serialize_bool(bool) -> S::Ok: "a boolean";
        serialize_i8(i8) -> S::Ok: "a number";
        serialize_i16(i16) -> S::Ok: "a number";
        serialize_i32(i32) -> S::Ok: "a number";
        serialize_i64(i64) -> S::Ok: "a number";
        serialize_u8(u8) -> S::Ok: "a number";
        serialize_u16(u16) -> S::Ok: "a number";
        serialize_u32(u32) -> S::Ok: "a number";
        serialize_u64(u64) -> S::Ok: "a number";
        serialize_f32(f32) -> S::Ok: "a number";
        serialize_f64(f64) -> S::Ok: "a number";
        serialize_char(char) -> S::Ok: "a character";
        serialize_str(&str) -> S::Ok: "a string";
        serialize_bytes(&[u8]) -> S::Ok: "bytes";
        serialize_none() -> S::Ok: "an option";
        serialize_unit() -> S::Ok: "a unit";
        serialize_unit_struct(&'static str) -> S::Ok: "a unit struct";
        serialize_seq(Option<usize>) -> Self::SerializeSeq: "a sequence";
        serialize_tuple(usize) -> Self::SerializeTuple: "a tuple";
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct: "a tuple struct";
        serialize_map(Option<usize>) -> Self::SerializeMap: "a map";
        serialize_struct(&'static str, usize) -> Self::SerializeStruct: "a struct";
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<S::Ok, S::Error> {
        Self::not_a_variant("an option")
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, _: &T) -> Result<S::Ok, S::Error> {
        Self::not_a_variant("a newtype struct")
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A tuple variant's fields, written as a plain tuple.
struct TupleContent<T>(T);

impl<T: ser::SerializeTuple> ser::SerializeTupleVariant for TupleContent<T> {
    type Ok = T::Ok;
    type Error = T::Error;
    fn serialize_field<F: ?Sized + Serialize>(&mut self, value: &F) -> Result<(), T::Error> {
        self.0.serialize_element(value)
    }
    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

/// A struct variant's fields, written as a plain struct.
struct StructContent<T>(T);

impl<T: ser::SerializeStruct> ser::SerializeStructVariant for StructContent<T> {
    type Ok = T::Ok;
    type Error = T::Error;
    fn serialize_field<F: ?Sized + Serialize>(&mut self, key: &'static str, value: &F) -> Result<(), T::Error> {
        self.0.serialize_field(key, value)
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), T::Error> {
        self.0.skip_field(key)
    }
    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

/// The variant names of a serde enum, read from its `Deserialize` impl.
///
/// Returns an empty list for a type that is not an enum.
pub fn variant_names<E: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(variants);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }
    let mut probe = Probe(None);
    let _ = E::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// One upcasting step's view of an event: its type name and payload, both of
/// which the step may change.
#[derive(Debug, Clone, PartialEq)]
pub struct UpcastEvent {
    /// The event type name; a step may rename it.
    pub event_type: String,
    /// The payload as a JSON value.
    pub payload: Value,
}

type UpcastFn = dyn Fn(&mut UpcastEvent) -> Result<(), String> + Send + Sync;

/// A chain of upcasting steps, each taking one event type from schema version
/// `n` to `n + 1`.
///
/// ```
/// use bookshelf_core::codec::Upcasters;
/// // Version 1 of BookAdded had "name"; version 2 calls it "title".
/// let upcasters = Upcasters::new().add("BookAdded", 1, |event| {
///     let name = event.payload.get_mut("name").map(serde_json::Value::take);
///     let name = name.ok_or("BookAdded v1 without a name")?;
///     event.payload["title"] = name;
///     Ok(())
/// });
/// # let _ = upcasters;
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Arc<UpcastFn>>,
}

impl Upcasters {
    /// No steps.
    pub fn new() -> Self {
        Upcasters::default()
    }

    /// Adds the step that takes `event_type` from schema version
    /// `from_version` to `from_version + 1`. The step may rename the type;
    /// the next step is then looked up under the new name.
    pub fn add(
        mut self,
        event_type: impl Into<String>,
        from_version: u32,
        step: impl Fn(&mut UpcastEvent) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.steps.insert((event_type.into(), from_version), Arc::new(step));
        self
    }

    fn step(&self, event_type: &str, version: u32) -> Option<&Arc<UpcastFn>> {
        self.steps.get(&(event_type.to_owned(), version))
    }
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.steps.keys()).finish()
    }
}

/// Decodes stored events into one domain event type, upcasting old schema
/// versions on the way.
///
/// Build one per projection or repository and reuse it: building reads the
/// enum's variant names and the upcasters once.
pub struct EventCodec<E> {
    names: &'static [&'static str],
    upcasters: Upcasters,
    _event: PhantomData<fn() -> E>,
}

impl<E> Clone for EventCodec<E> {
    fn clone(&self) -> Self {
        EventCodec {
            names: self.names,
            upcasters: self.upcasters.clone(),
            _event: PhantomData,
        }
    }
}

impl<E> fmt::Debug for EventCodec<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventCodec")
            .field("event_types", &self.names)
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

impl<E: DomainEvent> Default for EventCodec<E> {
    fn default() -> Self {
        EventCodec::new()
    }
}

impl<E: DomainEvent> EventCodec<E> {
    /// A codec with `E`'s own upcasters.
    pub fn new() -> Self {
        EventCodec {
            names: variant_names::<E>(),
            upcasters: E::upcasters(),
            _event: PhantomData,
        }
    }

    /// Whether `event_type` is one of `E`'s types, or an older name that an
    /// upcaster renames.
    pub fn knows(&self, event_type: &str) -> bool {
        self.names.contains(&event_type) || self.upcasters.steps.keys().any(|(name, _)| name == event_type)
    }

    /// Decodes one payload.
    ///
    /// # Errors
    /// A [`DecodeError`] saying which part did not fit.
    pub fn decode(&self, event_type: &str, schema_version: u32, payload: &RawValue) -> Result<E, DecodeError> {
        if self.is_current(event_type, schema_version)? {
            return decode_variant(event_type, payload.get());
        }
        let payload = serde_json::from_str(payload.get()).map_err(|source| payload_error(event_type, source))?;
        let mut event = UpcastEvent {
            event_type: event_type.to_owned(),
            payload,
        };
        // Each step raises the version by one and the steps are finite, so
        // this ends.
        let mut version = schema_version;
        while !self.is_current(&event.event_type, version)? {
            let Some(step) = self.upcasters.step(&event.event_type, version) else {
                return Err(if self.names.contains(&event.event_type.as_str()) {
                    DecodeError::MissingUpcaster {
                        event_type: event.event_type,
                        from: version,
                    }
                } else {
                    DecodeError::UnknownEventType {
                        event_type: event.event_type,
                    }
                });
            };
            let before = event.event_type.clone();
            step(&mut event).map_err(|message| DecodeError::Upcast {
                event_type: before,
                from: version,
                message,
            })?;
            version += 1;
        }
        E::deserialize(Tagged {
            tag: &event.event_type,
            content: event.payload,
        })
        .map_err(|source| payload_error(&event.event_type, source))
    }

    /// Whether `(event_type, version)` is a current variant of `E`; an error
    /// when it is a variant of `E` at a version newer than the code.
    fn is_current(&self, event_type: &str, version: u32) -> Result<bool, DecodeError> {
        if !self.names.contains(&event_type) {
            return Ok(false);
        }
        let current = E::schema_version(event_type);
        if version > current {
            return Err(DecodeError::SchemaTooNew {
                event_type: event_type.to_owned(),
                found: version,
                current,
            });
        }
        Ok(version == current)
    }

    /// Decodes an event from its JSON envelope in one pass, without copying
    /// the payload: what a consumer of a topic or a file of events wants.
    ///
    /// An envelope in the exact form [`RecordedEvent::to_json`] writes (and
    /// whose event needs no upcasting) is read on a fast path that compares
    /// the fixed text between the header's fields; anything else, in any
    /// field order, goes through serde_json. When `event_type` and
    /// `schema_version` come before `payload`, the payload is decoded while
    /// the envelope is read; otherwise it is kept as borrowed raw JSON and
    /// decoded afterwards.
    ///
    /// # Errors
    /// [`DecodeError::Envelope`] when `json` is not an envelope, and the
    /// other [`DecodeError`]s for its payload.
    pub fn decode_json(&self, json: &str) -> Result<Envelope<E>, DecodeError> {
        match self.decode_canonical(json) {
            Some(envelope) => Ok(envelope),
            None => self.decode_json_general(json),
        }
    }

    /// The envelope, when it is in the form Bookshelf writes (see
    /// [`crate::canonical`]) and its event needs no upcasting; `None` for
    /// anything else, errors included, which the general path reads and
    /// explains.
    fn decode_canonical(&self, json: &str) -> Option<Envelope<E>> {
        let header = crate::canonical::header(json)?;
        if !self.is_current(header.event_type, header.schema_version).ok()? {
            return None;
        }
        let (read, after) = match crate::canonical::metadata(header.rest) {
            Some(read) => read,
            None => {
                let mut metadata = serde_json::Deserializer::from_str(header.rest).into_iter::<Metadata>();
                let read = metadata.next()?.ok()?;
                (read, &header.rest[metadata.byte_offset()..])
            }
        };
        let payload = after
            .strip_prefix(r#","payload":"#)?
            .trim_end_matches([' ', '\t', '\n', '\r'])
            .strip_suffix('}')?;
        let event = decode_variant::<E>(header.event_type, payload).ok()?;
        Some(Envelope {
            event_id: header.event_id,
            stream_id: StreamId::new(header.stream_id),
            version: Version(header.version),
            position: Position(header.position),
            recorded_at: header.recorded_at,
            event_type: header.event_type.into(),
            schema_version: header.schema_version,
            metadata: read,
            payload: event,
        })
    }

    /// [`decode_json`](Self::decode_json) for an envelope in any form.
    fn decode_json_general(&self, json: &str) -> Result<Envelope<E>, DecodeError> {
        let failure = RefCell::new(None);
        let mut reader = serde_json::Deserializer::from_str(json);
        let read = EnvelopeSeed {
            codec: self,
            failure: &failure,
        }
        .deserialize(&mut reader)
        .and_then(|envelope| reader.end().map(|()| envelope));
        let envelope = match (read, failure.into_inner()) {
            (Ok(envelope), _) => envelope,
            (Err(_), Some(Failure::Decode(error))) => return Err(error),
            (Err(source), Some(Failure::Payload(event_type))) => return Err(payload_error(&event_type, source)),
            (Err(source), None) => return Err(DecodeError::Envelope(source)),
        };
        let (header, slot) = envelope.into_parts();
        let payload = match slot {
            Slot::Decoded(event) => event,
            Slot::Raw(raw) => self.decode(&header.event_type, header.schema_version, raw)?,
        };
        Ok(header.map_payload(|()| payload))
    }

    /// Decodes a recorded event it owns, moving its header into the result.
    ///
    /// # Errors
    /// A [`DecodeError`] saying which part did not fit.
    pub fn decode_record(&self, record: RecordedEvent) -> Result<Envelope<E>, DecodeError> {
        let payload = self.decode(&record.event_type, record.schema_version, &record.payload)?;
        Ok(record.map_payload(|_| payload))
    }

    /// Decodes a recorded event into an envelope around the domain event.
    ///
    /// # Errors
    /// A [`DecodeError`] saying which part did not fit.
    pub fn decode_envelope(&self, record: &RecordedEvent) -> Result<Envelope<E>, DecodeError> {
        let event = self.decode(&record.event_type, record.schema_version, &record.payload)?;
        Ok(record.with_payload(event))
    }
}

fn payload_error(event_type: &str, source: serde_json::Error) -> DecodeError {
    DecodeError::Payload {
        event_type: event_type.to_owned(),
        source,
    }
}

/// A payload read with its envelope: decoded on the way, or kept raw.
enum Slot<'de, E> {
    Decoded(E),
    Raw(&'de RawValue),
}

/// What went wrong inside the envelope, beyond a JSON error.
enum Failure {
    Decode(DecodeError),
    Payload(String),
}

/// Reads an envelope, decoding its payload on the way when it can.
struct EnvelopeSeed<'c, 'f, E> {
    codec: &'c EventCodec<E>,
    failure: &'f RefCell<Option<Failure>>,
}

impl<'de, E: DomainEvent> DeserializeSeed<'de> for EnvelopeSeed<'_, '_, E> {
    type Value = Envelope<Slot<'de, E>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_struct("Envelope", crate::envelope::FIELDS, self)
    }
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    EventId,
    StreamId,
    Version,
    Position,
    RecordedAt,
    EventType,
    SchemaVersion,
    Metadata,
    Payload,
    #[serde(other)]
    Other,
}

struct Timestamp(chrono::DateTime<chrono::Utc>);

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::timestamp::deserialize(deserializer).map(Timestamp)
    }
}

/// Decodes a payload as the variant `tag`, in place.
struct VariantSeed<'t, E> {
    tag: &'t str,
    _event: PhantomData<fn() -> E>,
}

impl<'de, E: DeserializeOwned> DeserializeSeed<'de> for VariantSeed<'_, E> {
    type Value = E;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<E, D::Error> {
        E::deserialize(Tagged {
            tag: self.tag,
            content: deserializer,
        })
    }
}

impl<'de, E: DomainEvent> Visitor<'de> for EnvelopeSeed<'_, '_, E> {
    type Value = Envelope<Slot<'de, E>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event envelope")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        fn once<T, Err: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), Err> {
            match slot.replace(value) {
                None => Ok(()),
                Some(_) => Err(Err::duplicate_field(name)),
            }
        }
        let (mut event_id, mut stream_id, mut version, mut position) = (None, None, None, None);
        let (mut recorded_at, mut event_type, mut schema_version) = (None, None::<EventType>, None);
        let (mut metadata, mut payload) = (None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::EventId => once(&mut event_id, map.next_value()?, "event_id")?,
                Field::StreamId => once(&mut stream_id, map.next_value()?, "stream_id")?,
                Field::Version => once(&mut version, map.next_value()?, "version")?,
                Field::Position => once(&mut position, map.next_value()?, "position")?,
                Field::RecordedAt => once(&mut recorded_at, map.next_value::<Timestamp>()?.0, "recorded_at")?,
                Field::EventType => once(&mut event_type, map.next_value()?, "event_type")?,
                Field::SchemaVersion => once(&mut schema_version, map.next_value()?, "schema_version")?,
                Field::Metadata => once(&mut metadata, map.next_value()?, "metadata")?,
                Field::Payload => {
                    let current = match (&event_type, schema_version) {
                        (Some(tag), Some(version)) => match self.codec.is_current(tag, version) {
                            Ok(current) => current.then_some(tag.as_str()),
                            Err(error) => {
                                *self.failure.borrow_mut() = Some(Failure::Decode(error));
                                return Err(de::Error::custom("undecodable payload"));
                            }
                        },
                        _ => None,
                    };
                    let slot = match current {
                        Some(tag) => {
                            let seed = VariantSeed {
                                tag,
                                _event: PhantomData,
                            };
                            match map.next_value_seed(seed) {
                                Ok(event) => Slot::Decoded(event),
                                Err(error) => {
                                    *self.failure.borrow_mut() = Some(Failure::Payload(tag.to_owned()));
                                    return Err(error);
                                }
                            }
                        }
                        None => Slot::Raw(map.next_value()?),
                    };
                    once(&mut payload, slot, "payload")?;
                }
                Field::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(Envelope {
            event_id: event_id.ok_or_else(|| de::Error::missing_field("event_id"))?,
            stream_id: stream_id.ok_or_else(|| de::Error::missing_field("stream_id"))?,
            version: version.ok_or_else(|| de::Error::missing_field("version"))?,
            position: position.ok_or_else(|| de::Error::missing_field("position"))?,
            recorded_at: recorded_at.ok_or_else(|| de::Error::missing_field("recorded_at"))?,
            event_type: event_type.ok_or_else(|| de::Error::missing_field("event_type"))?,
            schema_version: schema_version.ok_or_else(|| de::Error::missing_field("schema_version"))?,
            metadata: metadata.unwrap_or_default(),
            payload: payload.ok_or_else(|| de::Error::missing_field("payload"))?,
        })
    }
}

/// Decodes the variant `tag` of `E` from its content's JSON text in one pass,
/// without building an intermediate map.
fn decode_variant<E: DeserializeOwned>(tag: &str, content: &str) -> Result<E, DecodeError> {
    let mut json = serde_json::Deserializer::from_str(content);
    let event = E::deserialize(Tagged {
        tag,
        content: &mut json,
    })
    .map_err(|source| payload_error(tag, source))?;
    json.end().map_err(|source| payload_error(tag, source))?;
    Ok(event)
}

/// Presents `(tag, content)` as an externally tagged enum to an enum's
/// `Deserialize`: the variant is `tag`, its fields come from `content`.
struct Tagged<'t, D> {
    tag: &'t str,
    content: D,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tagged<'_, D> {
    type Error = D::Error;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> EnumAccess<'de> for Tagged<'_, D> {
    type Error = D::Error;
    type Variant = Content<D>;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Content<D>), D::Error> {
        let tag = seed.deserialize(de::value::StrDeserializer::<D::Error>::new(self.tag))?;
        Ok((tag, Content(self.content)))
    }
}

/// Lets any deserializer stand for a variant's content.
struct Content<D>(D);

impl<'de, D: Deserializer<'de>> VariantAccess<'de> for Content<D> {
    type Error = D::Error;
    fn unit_variant(self) -> Result<(), D::Error> {
        // A unit variant is written with a `null` payload; accept `{}` too.
        struct Unit;
        impl<'de> Visitor<'de> for Unit {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null or an empty object")
            }
            fn visit_unit<E: de::Error>(self) -> Result<(), E> {
                Ok(())
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                match map.next_key::<de::IgnoredAny>()? {
                    None => Ok(()),
                    Some(_) => Err(de::Error::custom("a unit event carries no fields")),
                }
            }
        }
        self.0.deserialize_any(Unit)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, D::Error> {
        seed.deserialize(self.0)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Ev {
        Added { title: String, pages: u32 },
        Renamed(String),
        Moved(u32, u32),
        Removed,
    }

    impl DomainEvent for Ev {
        fn schema_version(event_type: &str) -> u32 {
            match event_type {
                "Added" => 3,
                _ => 1,
            }
        }
        fn upcasters() -> Upcasters {
            Upcasters::new()
                // v1 was called "Created" and had "name".
                .add("Created", 1, |e| {
                    e.event_type = "Added".into();
                    let name = e.payload.get_mut("name").map(Value::take).ok_or("no name")?;
                    e.payload["title"] = name;
                    Ok(())
                })
                // v2 had no page count.
                .add("Added", 2, |e| {
                    e.payload["pages"] = Value::from(0);
                    Ok(())
                })
        }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn every_variant_shape_round_trips() {
        let codec = EventCodec::<Ev>::new();
        for event in [
            Ev::Added {
                title: "Dune".into(),
                pages: 412,
            },
            Ev::Renamed("Dune Messiah".into()),
            Ev::Moved(1, 2),
            Ev::Removed,
        ] {
            let encoded = encode(&event).unwrap();
            let back = codec
                .decode(&encoded.event_type, encoded.schema_version, &encoded.payload)
                .unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn payloads_are_the_variants_content_as_serde_json_writes_it() {
        for (event, event_type, payload) in [
            (
                Ev::Added {
                    title: "Dune".into(),
                    pages: 412,
                },
                "Added",
                r#"{"title":"Dune","pages":412}"#,
            ),
            (
                Ev::Renamed("Dune \"Messiah\"".into()),
                "Renamed",
                r#""Dune \"Messiah\"""#,
            ),
            (Ev::Moved(1, 2), "Moved", "[1,2]"),
            (Ev::Removed, "Removed", "null"),
        ] {
            let encoded = encode(&event).unwrap();
            assert_eq!(
                (encoded.event_type.as_str(), encoded.payload.get()),
                (event_type, payload)
            );
        }
    }

    #[test]
    fn variant_names_come_from_serde() {
        assert_eq!(variant_names::<Ev>(), &["Added", "Renamed", "Moved", "Removed"]);
        assert!(variant_names::<String>().is_empty());
    }

    #[test]
    fn stored_old_forms_are_upcast_through_the_chain() {
        let codec = EventCodec::<Ev>::new();
        // As written by version 1 of the code, under its old name.
        let v1 = codec.decode("Created", 1, &raw(r#"{"name":"Dune"}"#)).unwrap();
        assert_eq!(
            v1,
            Ev::Added {
                title: "Dune".into(),
                pages: 0
            }
        );
        // As written by version 2.
        let v2 = codec.decode("Added", 2, &raw(r#"{"title":"Emma"}"#)).unwrap();
        assert_eq!(
            v2,
            Ev::Added {
                title: "Emma".into(),
                pages: 0
            }
        );
        assert!(codec.knows("Created"));
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        let codec = EventCodec::<Ev>::new();
        assert!(matches!(
            codec.decode("Exploded", 1, &raw("{}")),
            Err(DecodeError::UnknownEventType { event_type }) if event_type == "Exploded"
        ));
        assert!(matches!(
            codec.decode("Added", 4, &raw("{}")),
            Err(DecodeError::SchemaTooNew {
                found: 4,
                current: 3,
                ..
            })
        ));
        assert!(matches!(
            codec.decode("Added", 1, &raw("{}")),
            Err(DecodeError::MissingUpcaster { from: 1, .. })
        ));
        assert!(matches!(
            codec.decode("Created", 1, &raw("{}")),
            Err(DecodeError::Upcast { message, .. }) if message == "no name"
        ));
        assert!(matches!(
            codec.decode("Added", 3, &raw(r#"{"title":5}"#)),
            Err(DecodeError::Payload { .. })
        ));
        assert!(matches!(
            codec.decode("Removed", 1, &raw(r#"{"x":1}"#)),
            Err(DecodeError::Payload { .. })
        ));
    }

    #[test]
    fn decode_json_reads_envelopes_with_and_without_escapes() {
        let codec = EventCodec::<Ev>::new();
        let plain = r#"{"event_id":"6f1c2f3e-7d0a-4a5b-9a55-0c7f2d3a4b5c","stream_id":"book-1","version":2,
            "position":7,"recorded_at":"2026-11-22T17:00:00Z","event_type":"Renamed","schema_version":1,
            "payload":"Dune"}"#;
        let event = codec.decode_json(plain).unwrap();
        assert_eq!(event.payload, Ev::Renamed("Dune".into()));
        assert_eq!((event.version.0, event.position.0), (2, 7));
        // Escapes force the owned path for strings.
        let escaped = plain
            .replace(r#""Renamed""#, r#""Renam\u0065d""#)
            .replace(r#""book-1""#, r#""book-\u0031""#);
        let event = codec.decode_json(&escaped).unwrap();
        assert_eq!(
            (event.event_type.as_str(), event.stream_id.as_str()),
            ("Renamed", "book-1")
        );
        // Old forms are upcast here too.
        let old = plain
            .replace(r#""Renamed","schema_version":1"#, r#""Created","schema_version":1"#)
            .replace(r#""payload":"Dune""#, r#""payload":{"name":"Dune"}"#);
        assert_eq!(
            codec.decode_json(&old).unwrap().payload,
            Ev::Added {
                title: "Dune".into(),
                pages: 0
            }
        );
        // Payload before its type: decoded afterwards from the borrowed raw JSON.
        let reordered = r#"{"payload":"Dune","event_type":"Renamed","schema_version":1,
            "event_id":"6f1c2f3e-7d0a-4a5b-9a55-0c7f2d3a4b5c","stream_id":"book-1","version":2,
            "position":7,"recorded_at":"2026-11-22T17:00:00Z"}"#;
        assert_eq!(
            codec.decode_json(reordered).unwrap().payload,
            Ev::Renamed("Dune".into())
        );
        // Errors keep their kind whichever path found them.
        let bad_payload = plain.replace(r#""payload":"Dune""#, r#""payload":42"#);
        assert!(matches!(
            codec.decode_json(&bad_payload),
            Err(DecodeError::Payload { event_type, .. }) if event_type == "Renamed"
        ));
        let too_new = plain.replace(r#""schema_version":1"#, r#""schema_version":7"#);
        assert!(matches!(
            codec.decode_json(&too_new),
            Err(DecodeError::SchemaTooNew { found: 7, .. })
        ));
        let twice = plain.replace(r#""version":2,"#, r#""version":2,"version":3,"#);
        assert!(matches!(codec.decode_json(&twice), Err(DecodeError::Envelope(_))));
        let trailing = format!("{plain} x");
        assert!(matches!(codec.decode_json(&trailing), Err(DecodeError::Envelope(_))));
        assert!(matches!(
            codec.decode_json("{\"event_id\":1}"),
            Err(DecodeError::Envelope(_))
        ));
        assert!(matches!(codec.decode_json("not json"), Err(DecodeError::Envelope(_))));
    }

    #[test]
    fn encoding_a_non_enum_is_an_error() {
        #[derive(Serialize, Deserialize)]
        struct NotAnEnum {
            a: u32,
        }
        impl DomainEvent for NotAnEnum {}
        assert!(
            matches!(encode(&NotAnEnum { a: 1 }), Err(EncodeError::NotAnEnum(found)) if found.contains("a struct"))
        );
        #[derive(Serialize, Deserialize)]
        #[serde(tag = "type")]
        enum InternallyTagged {
            A { a: u32 },
        }
        impl DomainEvent for InternallyTagged {}
        assert!(matches!(
            encode(&InternallyTagged::A { a: 1 }),
            Err(EncodeError::NotAnEnum(_))
        ));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn any_event() -> impl Strategy<Value = Ev> {
            prop_oneof![
                (".*", any::<u32>()).prop_map(|(title, pages)| Ev::Added { title, pages }),
                ".*".prop_map(Ev::Renamed),
                (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Ev::Moved(a, b)),
                Just(Ev::Removed),
            ]
        }

        proptest! {
            #[test]
            fn decode_of_encode_is_identity(event in any_event()) {
                let codec = EventCodec::<Ev>::new();
                let encoded = encode(&event).unwrap();
                let back = codec.decode(&encoded.event_type, encoded.schema_version, &encoded.payload).unwrap();
                prop_assert_eq!(back, event);
            }

            #[test]
            fn the_fast_path_reads_what_the_general_path_reads(
                stream in "\\PC{0,12}",
                correlation in proptest::option::of("\\PC{0,8}"),
                (causation, traceparent) in (proptest::option::of("\\PC{0,8}"), proptest::option::of("[0-9a-f-]{0,8}")),
                extra in proptest::collection::btree_map("\\PC{0,4}", "\\PC{0,4}", 0..2),
                event in any_event(),
                (version, position) in (any::<u64>(), any::<u64>()),
                nanos in 0u32..1_000_000_000,
                (at, change) in (any::<prop::sample::Index>(), 0usize..10),
            ) {
                let codec = EventCodec::<Ev>::new();
                let encoded = encode(&event).unwrap();
                let record = RecordedEvent {
                    event_id: crate::EventId::new(),
                    stream_id: StreamId::new(&stream),
                    version: Version(version),
                    position: Position(position),
                    recorded_at: chrono::DateTime::from_timestamp(1_700_000_000, nanos).unwrap(),
                    event_type: encoded.event_type,
                    schema_version: encoded.schema_version,
                    metadata: Metadata {
                        correlation_id: correlation,
                        causation_id: causation,
                        traceparent,
                        extra,
                    },
                    payload: encoded.payload,
                };
                let json = record.to_json();
                let general = codec.decode_json_general(&json).unwrap();
                prop_assert_eq!(&general, &codec.decode_record(record).unwrap());
                // Taken whenever the header needs no escapes.
                let plain = !stream.contains(|c: char| c == '"' || c == '\\' || c < ' ');
                let fast = codec.decode_canonical(&json);
                prop_assert_eq!(fast.is_some(), plain);
                if let Some(fast) = fast {
                    prop_assert_eq!(fast, general);
                }
                // One character put in or taken out anywhere: the fast path
                // declines, or reads what the general path reads.
                let mut changed = json.clone();
                let at = changed
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(at.index(json.chars().count()))
                    .unwrap_or(0);
                match change {
                    0 => {
                        changed.remove(at);
                    }
                    n => changed.insert(at, [' ', '"', '\\', '}', ',', '0', '{', 'x', '\u{1}'][n - 1]),
                }
                if let Some(fast) = codec.decode_canonical(&changed) {
                    prop_assert_eq!(Some(fast), codec.decode_json_general(&changed).ok(), "{}", changed);
                }
            }

            #[test]
            fn the_payload_is_what_serde_json_writes_inside_the_variant(event in any_event()) {
                let encoded = encode(&event).unwrap();
                // The whole enum as serde_json writes it: `"Name"` or `{"Name":content}`.
                let whole = serde_json::to_string(&event).unwrap();
                let content = match whole.strip_prefix(&format!("{{\"{}\":", encoded.event_type)) {
                    Some(rest) => rest.strip_suffix('}').unwrap().to_owned(),
                    None => {
                        prop_assert_eq!(whole, format!("\"{}\"", encoded.event_type));
                        "null".to_owned()
                    }
                };
                prop_assert_eq!(encoded.payload.get(), content);
            }
        }
    }
}
