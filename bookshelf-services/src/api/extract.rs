//! Reading requests: JSON bodies and path parameters that answer a typed
//! 400 when they do not parse, and the metadata a request gives its events.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use bookshelf::Metadata;

use super::*;

/// `axum::Json`, but a body that is not the expected JSON is a 400 (or 415)
/// with a JSON error saying why.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => {
                match rejection {
                    JsonRejection::MissingJsonContentType(_) => {
                        Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, rejection.body_text()))
                    }
                    // Read only up to the limit: the rest is still on the wire.
                    JsonRejection::BytesRejection(_) => {
                        Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, rejection.body_text()).closing())
                    }
                    _ => Err(ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text())),
                }
            }
        }
    }
}

/// `axum::extract::Path`, but a path segment that does not parse (a
/// version that is not a number, say) is a 400 with a JSON error.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text())),
        }
    }
}

/// `axum::extract::Query`, but a query string that does not parse (a
/// limit that is not a number, a parameter not known) is a 400 with a
/// JSON error.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text())),
        }
    }
}

/// The metadata of the events a request causes.
pub fn metadata_from(headers: &HeaderMap) -> Metadata {
    let correlation = headers
        .get(CORRELATION_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty() && value.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut metadata = Metadata::correlated(correlation);
    // The caller's W3C trace, continued in this service's span.
    metadata.traceparent = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<bookshelf::trace::TraceParent>().ok())
        .map(|parent| parent.child().to_string());
    metadata
}
