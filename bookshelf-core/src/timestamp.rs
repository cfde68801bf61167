//! Fast RFC 3339 timestamps for serde: the envelope's `recorded_at` uses it,
//! and domain events may too, with `#[serde(with = "bookshelf_core::timestamp")]`.
//!
//! Writing gives the same text as chrono (`2026-11-22T17:00:00.123456Z`), in
//! one piece rather than chrono's character at a time.
//! Reading takes the common form `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` on
//! a fast path, several times quicker than chrono's general parser, and hands
//! anything else to chrono, so it accepts what chrono accepts.
//!
//! ```
//! use chrono::{DateTime, Utc};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Read {
//!     #[serde(with = "bookshelf_core::timestamp")]
//!     at: DateTime<Utc>,
//! }
//! let read: Read = serde_json::from_str(r#"{"at":"2026-11-22T17:00:00.5+01:00"}"#)?;
//! assert_eq!(read.at.to_rfc3339(), "2026-11-22T16:00:00.500+00:00");
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::fmt;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Parses an RFC 3339 timestamp, such as `2026-11-22T17:00:00Z`, into UTC.
///
/// Returns `None` when the text is not a valid timestamp.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    parse_common(text.as_bytes()).or_else(|| DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc)))
}

fn parse_common(b: &[u8]) -> Option<DateTime<Utc>> {
    fn num(b: &[u8]) -> Option<u32> {
        b.iter()
            .try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(num(&b[0..4])? as i32, num(&b[5..7])?, num(&b[8..10])?)?;
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let mut rest = &b[19..];
    let mut nanos = 0;
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(&rest[1..=digits])? * 10u32.pow(9 - digits as u32);
        rest = &rest[1 + digits..];
    }
    let offset_seconds = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let offset = (num(&[*h1, *h2])? * 60 + num(&[*m1, *m2])?) as i64 * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    let local = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    let utc = local.checked_sub_signed(chrono::TimeDelta::seconds(offset_seconds))?;
    Some(Utc.from_utc_datetime(&utc))
}

/// Serializes as chrono does, written in one piece: chrono's own
/// serializer hands the text to the serializer a character at a time, and
/// JSON escapes each (a quarter of a command's instructions went there).
/// Years outside 0 to 9999 and leap seconds go through chrono itself.
///
/// # Errors
/// Those of the serializer.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; 30];
    match write_common(at, &mut buffer) {
        Some(text) => serializer.serialize_str(text),
        None => serde::Serialize::serialize(at, serializer),
    }
}

/// `at` as chrono writes it (`2026-11-22T17:00:00Z`, with `.mmm`, `.uuuuuu`
/// or `.nnnnnnnnn` when there is a fraction), for years 0 to 9999 and no
/// leap second.
fn write_common<'b>(at: &DateTime<Utc>, buffer: &'b mut [u8; 30]) -> Option<&'b str> {
    use chrono::{Datelike, Timelike};
    let year = at.year();
    let nanos = at.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut put = |at: usize, value: u32, width: usize| {
        let mut value = value;
        for slot in buffer[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, at.month(), 2);
    put(8, at.day(), 2);
    put(11, at.hour(), 2);
    put(14, at.minute(), 2);
    put(17, at.second(), 2);
    let digits = match nanos {
        0 => 0,
        n if n % 1_000_000 == 0 => 3,
        n if n % 1_000 == 0 => 6,
        _ => 9,
    };
    if digits > 0 {
        put(20, nanos / 10u32.pow(9 - digits as u32), digits);
    }
    for (at, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')] {
        buffer[at] = separator;
    }
    let end = if digits > 0 { 20 + digits } else { 19 };
    buffer[end] = b'Z';
    std::str::from_utf8(&buffer[..=end]).ok()
}

/// Deserializes an RFC 3339 string.
///
/// # Errors
/// When the value is not a string holding a valid timestamp.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    struct Rfc3339;
    impl Visitor<'_> for Rfc3339 {
        type Value = DateTime<Utc>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
            parse(text).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
        }
    }
    deserializer.deserialize_str(Rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn agrees_with_chrono_on_common_and_odd_forms() {
        for text in [
            "2026-11-22T17:00:00Z",
            "2026-11-22T17:00:00.123456Z",
            "2026-11-22T17:00:00.123456789Z",
            "2026-11-22T17:00:00.1+05:30",
            "2026-11-22T01:00:00-03:00",
            "2026-11-22t17:00:00z",
            "2026-11-22 17:00:00Z",
            "2024-02-29T23:59:59Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
            assert_eq!(parse(text), Some(chrono), "{text}");
        }
    }

    #[test]
    fn writes_the_odd_ones_as_chrono_does() {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap();
        for at in [
            Utc.from_utc_datetime(&leap),
            Utc.with_ymd_and_hms(12_345, 1, 2, 3, 4, 5).unwrap(),
            Utc.with_ymd_and_hms(-44, 3, 15, 12, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
        ] {
            let mut ours = serde_json::Serializer::new(Vec::new());
            serialize(&at, &mut ours).unwrap();
            assert_eq!(
                String::from_utf8(ours.into_inner()).unwrap(),
                serde_json::to_string(&at).unwrap()
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for text in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-22T24:00:01Z",
            "2026-11-22T17:00:00",
            "2026-11-22T17:00:00.Z",
            "2026-11-22T17:00:00+0530",
            "２026-11-22T17:00:00Z",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn writes_what_chrono_writes(
            secs in -62_000_000_000i64..260_000_000_000,
            nanos in prop_oneof![Just(0u32), (0u32..1_000).prop_map(|n| n * 1_000_000),
                (0u32..1_000_000).prop_map(|n| n * 1_000), 0u32..1_000_000_000],
        ) {
            let at = Utc.timestamp_opt(secs, nanos).unwrap();
            let mut ours = serde_json::Serializer::new(Vec::new());
            serialize(&at, &mut ours).unwrap();
            prop_assert_eq!(String::from_utf8(ours.into_inner()).unwrap(), serde_json::to_string(&at).unwrap());
        }

        #[test]
        fn reads_back_what_chrono_writes(secs in 0i64..4_000_000_000, nanos in 0u32..1_000_000_000) {
            let at = Utc.timestamp_opt(secs, nanos).unwrap();
            let json = serde_json::to_string(&at).unwrap();
            let mut de = serde_json::Deserializer::from_str(&json);
            prop_assert_eq!(deserialize(&mut de).unwrap(), at);
        }
    }
}
