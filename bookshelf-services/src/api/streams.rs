//! Any stream of a service's store over HTTP, whatever its category, for
//! tools that browse a store (the gateway's console): `GET /streams` lists
//! the streams with their versions, `GET /streams/{stream}/events` reads
//! one. A store that keeps no index of its streams (a Kafka topic of
//! several partitions, which would be read whole) serves the second only;
//! an instance on Kafka reads the streams of the partitions it keeps, and
//! answers 404 for the others (their owner has them).

use axum::extract::State;
use axum::http::StatusCode;
use bookshelf::{EventStore, RecordedEvent, StreamId, Version};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::docs::{Api, ErrorBody};

use super::*;

/// The most streams one answer lists, and the default.
const MOST: usize = 10_000;
const DEFAULT_LIMIT: usize = 1_000;

/// `GET /streams` and `GET /streams/{stream}/events` on `store`, which
/// lists its streams from an index (SQLite, PostgreSQL, memory).
pub fn stream_routes<S: EventStore + Clone>(store: S) -> Api {
    Api::new()
        .route(__path_streams, streams::<S>)
        .route(__path_stream_events, stream_events::<S>)
        .with_state(store)
}

/// `GET /streams/{stream}/events` alone, on a store with no index of its
/// streams (a Kafka topic).
pub fn stream_event_routes<S: EventStore + Clone>(store: S) -> Api {
    Api::new()
        .route(__path_stream_events, stream_events::<S>)
        .with_state(store)
}

/// What `GET /streams` is asked.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamsAsked {
    /// Only the streams of this category (the id's part before its first
    /// `-`, such as `book`).
    category: Option<String>,
    /// At most this many (1,000 unless said; 10,000 at most), in the order
    /// of their ids.
    limit: Option<usize>,
}

/// A stream and its version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamBody {
    /// Its id.
    pub stream: String,
    /// Its version: the number of its events.
    pub version: u64,
}

/// The streams, in the order of their ids.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamsBody {
    /// The streams listed.
    pub streams: Vec<StreamBody>,
    /// Whether more were left out by the limit.
    pub more: bool,
}

/// One event of a stream, as it is stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamEventBody {
    /// Its version in its stream, from 1.
    pub version: u64,
    /// Its position in the store's log.
    pub position: u64,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The version of its payload's schema.
    pub schema_version: u32,
    /// When it was stored (RFC 3339).
    pub recorded_at: String,
    /// Correlation and causation ids, trace context, and more.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The event's data, as its type defines it (any JSON).
    #[schema(value_type = Value)]
    pub payload: Value,
}

impl From<&RecordedEvent> for StreamEventBody {
    fn from(event: &RecordedEvent) -> Self {
        StreamEventBody {
            version: event.version.0,
            position: event.position.0,
            event_type: event.event_type.to_string(),
            schema_version: event.schema_version,
            recorded_at: event.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            metadata: serde_json::to_value(&event.metadata).unwrap_or(Value::Null),
            payload: serde_json::from_str(event.payload.get()).unwrap_or(Value::Null),
        }
    }
}

/// A stream's events, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamEventsBody {
    /// The stream.
    pub stream: String,
    /// Its events.
    pub events: Vec<StreamEventBody>,
}

/// The streams of the store, with their versions.
#[utoipa::path(
    get, path = "/streams", tag = "meta",
    params(StreamsAsked),
    responses(
        (status = 200, description = "The streams, in the order of their ids", body = StreamsBody),
        (status = 400, description = "A query that does not parse", body = ErrorBody),
        (status = 503, description = "The store cannot be read now", body = ErrorBody),
    )
)]
async fn streams<S: EventStore>(
    State(store): State<S>,
    Query(asked): Query<StreamsAsked>,
) -> Result<axum::Json<StreamsBody>, ApiError> {
    let limit = asked.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MOST);
    let all = store.streams().await.map_err(|error| {
        tracing::warn!(%error, "the store did not list its streams");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store did not list its streams: {error}"),
        )
    })?;
    let mut chosen = all
        .into_iter()
        .filter(|(stream, _)| asked.category.as_deref().is_none_or(|c| stream.category() == c));
    let streams = chosen
        .by_ref()
        .take(limit)
        .map(|(stream, version)| StreamBody {
            stream: stream.as_str().to_owned(),
            version: version.0,
        })
        .collect();
    let more = chosen.next().is_some();
    Ok(axum::Json(StreamsBody { streams, more }))
}

/// The events of one stream, oldest first.
#[utoipa::path(
    get, path = "/streams/{stream}/events", tag = "meta",
    params(("stream" = String, Path, description = "The stream's id, such as `book-6f1c…`")),
    responses(
        (status = 200, description = "Its events, oldest first", body = StreamEventsBody),
        (status = 404, description = "No such stream here", body = ErrorBody),
        (status = 503, description = "The store cannot be read now", body = ErrorBody),
    )
)]
async fn stream_events<S: EventStore>(
    State(store): State<S>,
    Path(stream): Path<String>,
) -> Result<axum::Json<StreamEventsBody>, ApiError> {
    let id = StreamId::new(stream);
    let events = store.read_stream(&id, Version(1)).await.map_err(|error| {
        tracing::warn!(%error, stream = %id, "the store did not read a stream");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the store did not read {id}"))
    })?;
    if events.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no stream {id} here")));
    }
    Ok(axum::Json(StreamEventsBody {
        stream: id.as_str().to_owned(),
        events: events.iter().map(|event| StreamEventBody::from(&**event)).collect(),
    }))
}
