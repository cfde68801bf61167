//! W3C trace context (`traceparent`), carried from a request through the
//! events it causes to the commands that follow from them, so that every
//! step joins one distributed trace.
//!
//! A request's `traceparent` goes into the [`Metadata`] of the events its
//! command stores. A process runner continues the trace from the event:
//! the commands it sends carry [`Metadata::following`](crate::Metadata::following) the event, with the
//! same trace id, a new span id, the event's correlation id, and the event
//! as their cause.
//!
//! Every reader (projections, table projections, process runners, change
//! feeds, Kafka projections) handles each event inside [`event_span`]: a
//! span named `bookshelf.event` with the reader, the event type and the
//! event's trace id. With the `opentelemetry` feature the span is made a
//! child of the span the event's `traceparent` names, so that an
//! OpenTelemetry exporter (through `tracing-opentelemetry`) shows the
//! projection's and the runner's work inside the request's trace; the span
//! is at INFO level then, and at DEBUG without the feature.
//!
//! ```
//! use bookshelf_core::trace::TraceParent;
//!
//! let incoming: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
//! let next = incoming.child();
//! assert_eq!(next.trace_id(), incoming.trace_id());
//! assert_ne!(next.span_id(), incoming.span_id());
//! assert!("00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse::<TraceParent>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use crate::Metadata;

/// The level of [`event_span`]'s spans: INFO when they go to OpenTelemetry,
/// DEBUG (off under the usual INFO filter, and nearly free) otherwise.
#[cfg(feature = "opentelemetry")]
const EVENT_SPAN_LEVEL: tracing::Level = tracing::Level::INFO;
#[cfg(not(feature = "opentelemetry"))]
const EVENT_SPAN_LEVEL: tracing::Level = tracing::Level::DEBUG;

/// The span in which reader `reader` handles an event of type `event_type`
/// with `metadata`: enter it around the handling. It records the event's
/// trace id; with the `opentelemetry` feature its parent is the span the
/// event's `traceparent` names. A span no subscriber wants costs a check.
pub fn event_span(reader: &str, event_type: &str, metadata: &Metadata) -> tracing::Span {
    let span = tracing::span!(
        EVENT_SPAN_LEVEL,
        "bookshelf.event",
        otel.name = %format_args!("{reader} {event_type}"),
        reader,
        event_type,
        trace_id = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let Some(parent) = metadata
        .traceparent
        .as_deref()
        .and_then(|t| t.parse::<TraceParent>().ok())
    else {
        return span;
    };
    span.record("trace_id", tracing::field::display(parent.trace_id()));
    #[cfg(feature = "opentelemetry")]
    parent.adopt(&span);
    span
}

/// The `traceparent` of W3C Trace Context (version 00): a trace id, the
/// id of the span that is the parent of what comes next, and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

/// Why a `traceparent` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a W3C traceparent: {0}")]
pub struct TraceParentError(String);

impl TraceParent {
    /// A new trace, sampled, with random ids.
    pub fn start() -> Self {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        let trace_id = (u128::from(high) << 64) | u128::from(low);
        TraceParent {
            trace_id: trace_id.max(1),
            span_id: new_span_id(),
            flags: 1,
        }
    }

    /// The next step of the same trace: the same trace id and flags, a new
    /// span id.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The parent span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

#[cfg(feature = "opentelemetry")]
impl TraceParent {
    /// Makes `span` a child of the remote span this names.
    fn adopt(&self, span: &tracing::Span) {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        // Only fails when no OpenTelemetry layer is installed: then there is
        // nothing to join.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

fn new_span_id() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0.max(1)
}

impl fmt::Display for TraceParent {
    /// `00-<trace id>-<span id>-<flags>`, in lowercase hex. (Written digit by
    /// digit: a proxy writes one for every request it forwards, and
    /// `{:032x}` took about 1,900 instructions of it.)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn hex(out: &mut [u8], mut value: u128) {
            for digit in out.iter_mut().rev() {
                *digit = b"0123456789abcdef"[(value & 0xf) as usize];
                value >>= 4;
            }
        }
        let mut text = *b"00-________________________________-________________-__";
        hex(&mut text[3..35], self.trace_id);
        hex(&mut text[36..52], u128::from(self.span_id));
        hex(&mut text[53..55], u128::from(self.flags));
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    /// Version 00 exactly: four dash-separated lowercase hex fields, ids not
    /// all zeros. (Later versions may add fields; their first four are read.)
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |why: &str| TraceParentError(format!("{text:?}: {why}"));
        let mut fields = text.trim().split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(refuse("it needs four fields"));
        };
        let hex = |field: &str, len: usize| {
            field.len() == len && field.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" {
            return Err(refuse("bad version"));
        }
        if version == "00" && fields.next().is_some() {
            return Err(refuse("version 00 has four fields"));
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return Err(refuse("fields of the wrong length or not lowercase hex"));
        }
        let parse = |field: &str| u128::from_str_radix(field, 16).map_err(|_| refuse("not hex"));
        let (trace_id, span_id, flags) = (parse(trace)?, parse(span)? as u64, parse(flags)? as u8);
        if trace_id == 0 || span_id == 0 {
            return Err(refuse("an id of all zeros"));
        }
        Ok(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed: TraceParent = text.parse().unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?}");
        }
        let started = TraceParent::start();
        assert_eq!(started.to_string().parse::<TraceParent>().unwrap(), started);
        assert_eq!(started.child().trace_id(), started.trace_id());
    }
}
