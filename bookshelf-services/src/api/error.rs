//! Typed JSON errors: what every answer that is not a success carries, and
//! how store and command failures map onto statuses.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bookshelf::CommandError;
use serde_json::json;

use crate::books::BookError;

/// The header that carries a request's correlation id into event metadata.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The header on an answer to a command this instance could not take because
/// its book's partition has (now) another owner, the command was fenced
/// off, or the owner does not answer this instance: nothing was stored, and
/// the same request may go to another instance (the gateway sends it to one
/// it has not tried).
pub const NOT_OWNER_HEADER: &str = "x-bookshelf-not-owner";

/// An error answered as `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    not_owner: bool,
    closes: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            not_owner: false,
            closes: false,
        }
    }

    /// The answer to a request whose body was not read whole (too large,
    /// too slow): it says `Connection: close`, because what is left of the
    /// body would be read as the next request, and a client must not send
    /// another on this connection.
    pub fn closing(self) -> Self {
        ApiError { closes: true, ..self }
    }

    /// A 503 saying that this instance could not take the request because
    /// another owns (or is taking over) the book's partition: nothing was
    /// stored, and the request may go to the owner.
    pub fn not_owner(message: impl Into<String>) -> Self {
        ApiError {
            not_owner: true,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if self.not_owner {
            response
                .headers_mut()
                .insert(NOT_OWNER_HEADER, header::HeaderValue::from_static("true"));
        }
        if self.closes {
            response
                .headers_mut()
                .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        response
    }
}

/// Whether a store error says that another instance owns the stream's
/// partition, or fenced the append off: nothing was stored.
fn not_owner(error: &CommandError<BookError>) -> bool {
    matches!(error, CommandError::Store(store) if store.is_retryable())
}

impl From<CommandError<BookError>> for ApiError {
    fn from(error: CommandError<BookError>) -> Self {
        let status = match &error {
            CommandError::Rejected(BookError::Invalid(_)) => StatusCode::BAD_REQUEST,
            CommandError::Rejected(BookError::NotFound) => StatusCode::NOT_FOUND,
            CommandError::Rejected(BookError::AlreadyExists) => StatusCode::CONFLICT,
            CommandError::Rejected(BookError::Removed) => StatusCode::GONE,
            CommandError::Conflict { .. } => StatusCode::CONFLICT,
            // The store could not take it now (not the owner, fenced off,
            // unreachable): nothing was stored, and a retry may succeed.
            CommandError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let not_owner = not_owner(&error);
        if not_owner {
            tracing::info!(%error, "command not taken here");
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(%error, "command not taken");
        } else if status.is_server_error() {
            tracing::error!(%error, "command failed");
        }
        let message = match error {
            CommandError::Rejected(inner) => inner.to_string(),
            other => other.to_string(),
        };
        if not_owner {
            ApiError::not_owner(message)
        } else {
            ApiError::new(status, message)
        }
    }
}
