//! Reading an envelope's header in the exact form Bookshelf writes it.
//!
//! [`RecordedEvent::to_json`](crate::RecordedEvent::to_json) writes every
//! envelope the same way: the fields in one order, no whitespace, and
//! (nearly always) strings that need no escaping. [`header`] reads the
//! fields before `metadata` from that form by comparing the fixed text
//! between them, without a general JSON parser's field matching; it gives up
//! (`None`) at the first byte that differs from that form, and the caller then
//! reads the envelope with serde_json, which accepts every valid envelope and
//! explains every invalid one. So this path may decline anything, and must
//! accept only what serde_json would read to the same values.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::envelope::{EventId, Metadata};

/// The fields of an envelope before its metadata, and the text from the
/// metadata's value on.
#[derive(Debug, PartialEq)]
pub(crate) struct Header<'a> {
    pub event_id: EventId,
    pub stream_id: &'a str,
    pub version: u64,
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
    pub event_type: &'a str,
    pub schema_version: u32,
    /// What follows `"metadata":`.
    pub rest: &'a str,
}

/// The header of `json` when it starts in Bookshelf's own form; `None` at
/// anything else (the caller then reads it the general way).
pub(crate) fn header(json: &str) -> Option<Header<'_>> {
    let mut at = Cursor(json);
    at.expect(r#"{"event_id":""#)?;
    let event_id = EventId(Uuid::try_parse(at.plain_string()?).ok()?);
    at.expect(r#","stream_id":""#)?;
    let stream_id = at.plain_string()?;
    at.expect(r#","version":"#)?;
    let version = at.number()?;
    at.expect(r#","position":"#)?;
    let position = at.number()?;
    at.expect(r#","recorded_at":""#)?;
    let recorded_at = crate::timestamp::parse(at.plain_string()?)?;
    at.expect(r#","event_type":""#)?;
    let event_type = at.plain_string()?;
    at.expect(r#","schema_version":"#)?;
    let schema_version = u32::try_from(at.number()?).ok()?;
    at.expect(r#","metadata":"#)?;
    Some(Header {
        event_id,
        stream_id,
        version,
        position,
        recorded_at,
        event_type,
        schema_version,
        rest: at.0,
    })
}

/// The metadata at the start of `rest` (what follows `"metadata":`), when it
/// is in the form [`Metadata`]'s serializer writes it: its fields in their
/// order, each only when set, strings without escapes, and no `extra`; and
/// the text after it. `None` for anything else (the caller then reads the
/// metadata with serde_json).
pub(crate) fn metadata(rest: &str) -> Option<(Metadata, &str)> {
    let mut at = Cursor(rest);
    at.expect("{")?;
    let mut metadata = Metadata::default();
    let mut separator = "";
    for (name, slot) in [
        (r#""correlation_id":""#, &mut metadata.correlation_id),
        (r#""causation_id":""#, &mut metadata.causation_id),
        (r#""traceparent":""#, &mut metadata.traceparent),
    ] {
        let mut ahead = Cursor(at.0);
        if ahead.expect(separator).is_some() && ahead.expect(name).is_some() {
            *slot = Some(ahead.plain_string()?.to_owned());
            at = ahead;
            separator = ",";
        }
    }
    at.expect("}")?;
    Some((metadata, at.0))
}

/// The text not read yet.
struct Cursor<'a>(&'a str);

impl<'a> Cursor<'a> {
    /// Steps over `literal`, if the text goes on with it. Compared a byte
    /// at a time, not with `strip_prefix`: that called the C library's
    /// `memcmp` for each of these short literals (empty ones too), which
    /// was 6% of a PostgreSQL catch-up's time (perf, `postgres_catch_up`).
    #[inline(always)]
    fn expect(&mut self, literal: &str) -> Option<()> {
        let head = self.0.as_bytes().get(..literal.len())?;
        if head.iter().zip(literal.as_bytes()).any(|(a, b)| a != b) {
            return None;
        }
        // The literal is whole characters: the text goes on at a boundary.
        self.0 = self.0.get(literal.len()..)?;
        Some(())
    }

    /// A string's content and its closing quote, when it holds no escape
    /// and no control character (which JSON does not allow unescaped).
    fn plain_string(&mut self) -> Option<&'a str> {
        let end = self.0.bytes().position(|b| b == b'"' || b == b'\\' || b < 0x20)?;
        let (content, rest) = self.0.split_at(end);
        self.0 = rest.strip_prefix('"')?;
        Some(content)
    }

    /// A non-negative integer as JSON writes it: digits, no leading zero.
    fn number(&mut self) -> Option<u64> {
        let digits = self.0.bytes().take_while(u8::is_ascii_digit).count();
        let (text, rest) = self.0.split_at(digits);
        if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
            return None;
        }
        let value = text.parse().ok()?;
        self.0 = rest;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = r#"{"event_id":"6f1c2f3e-7d0a-4a5b-9a55-0c7f2d3a4b5c","stream_id":"book-1","version":2,"position":7,"recorded_at":"2026-11-22T17:00:00Z","event_type":"BookRead","schema_version":1,"metadata":{},"payload":null}"#;

    #[test]
    fn reads_the_form_bookshelf_writes() {
        let header = header(PLAIN).unwrap();
        assert_eq!(
            (header.stream_id, header.version, header.position, header.event_type),
            ("book-1", 2, 7, "BookRead")
        );
        assert_eq!(header.schema_version, 1);
        assert_eq!(header.recorded_at.to_rfc3339(), "2026-11-22T17:00:00+00:00");
        assert_eq!(header.rest, r#"{},"payload":null}"#);
    }

    #[test]
    fn reads_metadata_as_its_serializer_writes_it() {
        let full = Metadata::correlated("req-7").caused_by("cmd-9");
        let full = Metadata {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..full
        };
        let partial = Metadata {
            causation_id: Some(String::new()),
            ..Metadata::default()
        };
        for each in [Metadata::default(), Metadata::correlated("req-7"), partial, full] {
            let written = format!("{},\"payload\":null}}", serde_json::to_string(&each).unwrap());
            assert_eq!(metadata(&written), Some((each, r#","payload":null}"#)), "{written}");
        }
    }

    #[test]
    fn declines_metadata_in_any_other_form() {
        for written in [
            r#"{"correlation_id":"a","extra":{"user":"ann"}}"#, // extra: left to serde_json
            r#"{"causation_id":"b","correlation_id":"a"}"#,     // order
            r#"{"correlation_id":"a","correlation_id":"b"}"#,   // twice
            r#"{"correlation_id":null}"#,                       // null
            r#"{"correlation_id":"a\"b"}"#,                     // an escape
            r#"{ "correlation_id":"a"}"#,                       // whitespace
            r#"{"correlation_id":"a",}"#,                       // a trailing comma
            r#"{"other":"a"}"#,                                 // a field it does not know
            r#"null"#,
        ] {
            assert_eq!(metadata(written), None, "{written}");
        }
    }

    #[test]
    fn declines_anything_else() {
        for (from, to) in [
            (r#""book-1""#, r#""book-\u0031""#),                         // an escape
            ("\"book-1\"", "\"book\t1\""),                               // a control character
            (r#""version":2"#, r#""version":02"#),                       // a leading zero
            (r#""version":2"#, r#""version":2.0"#),                      // not an integer
            (r#""version":2"#, r#""version":-2"#),                       // negative
            (r#""version":2"#, r#""version": 2"#),                       // whitespace
            (r#""schema_version":1"#, r#""schema_version":4294967296"#), // over u32
            (r#""position":7"#, r#""position":99999999999999999999"#),   // over u64
            (r#""recorded_at":"2026"#, r#""recorded_at":"2O26"#),        // not a time
            (r#""6f1c2f3e"#, r#""6f1c2f3x"#),                            // not a uuid
            (
                r#""event_type":"BookRead","schema_version":1"#,
                r#""schema_version":1,"event_type":"BookRead""#,
            ), // order
        ] {
            let changed = PLAIN.replacen(from, to, 1);
            assert_ne!(changed, PLAIN, "{from} is in the sample");
            assert_eq!(header(&changed), None, "{changed}");
        }
    }
}
