//! The books command API: add, read, rate and remove a book, with
//! `If-Match`, and read a book and its event log.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bookshelf::{EventStore, Position, RecordedEvent, Repository, Version};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

use crate::books::{Book, BookCommand};
use crate::docs::{Api, ErrorBody};

use super::*;

/// The state of the books routes.
pub struct BooksApi<S: EventStore> {
    pub books: Repository<Book, S>,
    /// A command's response waits (up to a second) until these views have
    /// applied its events, so that a following query sees them.
    pub read_your_writes: Vec<Settle>,
    /// Picks the id of a new book (default: a random UUID).
    pub new_id: Option<NewId>,
}

/// Picks the id of a new book.
pub type NewId = Arc<dyn Fn() -> String + Send + Sync>;

/// Waits until a view has applied every event before a position.
pub type Settle =
    Arc<dyn Fn(Position) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync>;

/// Read-your-writes on an in-process view.
pub fn settle_on<R: Clone + Send + Sync + 'static>(view: bookshelf::Handle<R>) -> Settle {
    Arc::new(move |position| {
        let view = view.clone();
        Box::pin(async move { view.wait_for(position).await.is_ok() })
    })
}

/// [`settle_on`] the version of a view serving when a command is answered.
pub fn settle_on_versions<T: ?Sized + Send + Sync + 'static>(view: bookshelf::versions::Versions<T>) -> Settle {
    Arc::new(move |position| {
        let view = view.clone();
        Box::pin(async move { view.wait_for(position).await.is_ok() })
    })
}

/// A book to put on the shelf.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewBook {
    /// Not blank.
    #[schema(min_length = 1, example = "Dune")]
    title: String,
    /// Not blank.
    #[schema(min_length = 1, example = "Frank Herbert")]
    author: String,
    /// An ISBN-10 or ISBN-13 with a right check digit; hyphens and spaces
    /// allowed.
    #[schema(min_length = 10, example = "978-0441013593")]
    isbn: String,
}

/// What a command wrote: the book and its version now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Written {
    id: String,
    version: u64,
}

/// A link to a resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Link {
    href: String,
}

/// A book on the shelf.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BookBody {
    id: String,
    title: String,
    author: String,
    isbn: String,
    /// How often it was read.
    reads: u32,
    /// Its rating, 1 to 5, once rated.
    stars: Option<u8>,
    /// Its version, also the `ETag`.
    version: u64,
    _links: BookLinks,
}

/// Links from a book.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BookLinks {
    #[serde(rename = "self")]
    this: Link,
    events: Link,
}

/// Links from an event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EventLinks {
    #[serde(rename = "self")]
    this: Link,
    book: Link,
}

/// One event of a book's log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EventBody {
    version: u64,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    #[schema(value_type = String, format = DateTime)]
    recorded_at: Value,
    /// Correlation and causation ids, trace context, and more.
    #[schema(value_type = Object)]
    metadata: Value,
    /// The event's data, as its type defines it (any JSON).
    #[schema(value_type = Value)]
    payload: Value,
    _links: EventLinks,
}

/// A book's event log, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EventsBody {
    _links: EventLinks,
    events: Vec<EventBody>,
}

/// The books API:
///
/// * `POST /books` `{"title","author","isbn"}`: 201, `Location: /books/{id}`;
/// * `GET /books/{id}`: the book, its version as an `ETag`, and links;
/// * `POST /books/{id}/read`, `PUT /books/{id}/rating` `{"stars":1-5}`,
///   `DELETE /books/{id}`: with an optional `If-Match: "<version>"`, a 409 when
///   the book has moved on;
/// * `GET /books/{id}/events` and `GET /books/{id}/events/{version}`: the
///   book's event log, with links to the book and to each event.
pub fn books_routes<S: EventStore>(api: Arc<BooksApi<S>>) -> Api {
    Api::new()
        .route(__path_add_book, add_book::<S>)
        .route(__path_get_book, get_book::<S>)
        .route(__path_remove_book, remove_book::<S>)
        .route(__path_mark_read, mark_read::<S>)
        .route(__path_rate_book, rate_book::<S>)
        .route(__path_book_events, book_events::<S>)
        .route(__path_book_event, book_event::<S>)
        .with_state(api)
}

/// What a command on one book answers.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // describes the answers; never built
enum CommandAnswers {
    /// Done
    #[response(status = 200, headers(("ETag" = String, description = "The book's version now")))]
    Done(Written),
    /// Not a valid command or If-Match
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// No such book
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The book is not at the If-Match version
    #[response(status = 409)]
    Moved(ErrorBody),
    /// The book was removed
    #[response(status = 410)]
    Removed(ErrorBody),
    /// The store cannot take it now; nothing was stored
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// What a request with a JSON body may answer besides.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // describes the answers; never built
pub enum BodyAnswers {
    /// The body is too large
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body is not declared as JSON
    #[response(status = 415)]
    NotJson(ErrorBody),
}

/// The request headers every command takes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(non_snake_case)]
#[allow(dead_code, reason = "describes the headers to the OpenAPI document; never built")]
struct CommandHeaders {
    /// Recorded in the events' metadata (1 to 128 characters); a new one
    /// when absent.
    #[param(rename = "x-correlation-id", nullable = false)]
    correlation: Option<String>,
    /// A W3C trace context; the events record its continuation.
    #[param(nullable = false)]
    traceparent: Option<String>,
}

/// The `If-Match` of the commands on one book.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "describes the header to the OpenAPI document; never built")]
struct Expected {
    /// Carry the command out only at this version of the book, such as
    /// `"3"`; a 409 when the book has moved on.
    #[param(rename = "If-Match", nullable = false, pattern = r#"^ *"?[0-9]{1,19}"? *$"#)]
    if_match: Option<String>,
}

/// Puts a book on the shelf.
#[utoipa::path(
    post, path = "/books", tag = "books",
    params(CommandHeaders),
    request_body = NewBook,
    responses(
        (status = 201, description = "On the shelf", body = Written,
            headers(("Location" = String, description = "The book's resource")),
            links(
                ("GetBook" = (operation_id = "get_book", parameters(("id" = "$response.body#/id")))),
                ("MarkRead" = (operation_id = "mark_read", parameters(("id" = "$response.body#/id")))),
                ("RateBook" = (operation_id = "rate_book", parameters(("id" = "$response.body#/id")))),
                ("BookEvents" = (operation_id = "book_events", parameters(("id" = "$response.body#/id")))),
                ("RemoveBook" = (operation_id = "remove_book", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, description = "Not a valid book, or not JSON", body = ErrorBody),
        (status = 409, description = "A book with this id exists", body = ErrorBody),
        (status = 503, description = "The store cannot take it now; nothing was stored", body = ErrorBody),
        BodyAnswers,
    )
)]
async fn add_book<S: EventStore>(
    State(api): State<Arc<BooksApi<S>>>,
    headers: HeaderMap,
    Json(book): Json<NewBook>,
) -> Result<Response, ApiError> {
    let id = match &api.new_id {
        Some(pick) => pick(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let command = BookCommand::Add {
        title: book.title,
        author: book.author,
        isbn: book.isbn,
    };
    let committed = api.books.execute(&id, &command, metadata_from(&headers)).await?;
    api.settle(committed.position).await;
    let location = format!("/books/{id}");
    let body = Written {
        id,
        version: committed.version.0,
    };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], axum::Json(body)).into_response())
}

/// The version an `If-Match` header names, if any: `"3"` or `3`.
fn if_match(headers: &HeaderMap) -> Result<Option<Version>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "If-Match must be a book version, such as \"3\"",
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim().trim_matches('"');
    text.parse::<u64>().map(|v| Some(Version(v))).map_err(|_| bad())
}

impl<S: EventStore> BooksApi<S> {
    /// Carries out a command on book `id`, under the request's `If-Match`,
    /// and answers 200 with the new version (also as the `ETag`).
    async fn command(&self, id: String, command: BookCommand, headers: &HeaderMap) -> Result<Response, ApiError> {
        let metadata = metadata_from(headers);
        let committed = match if_match(headers)? {
            Some(expected) => self.books.execute_at(&id, expected, &command, metadata).await?,
            None => self.books.execute(&id, &command, metadata).await?,
        };
        self.settle(committed.position).await;
        let etag = format!("\"{}\"", committed.version);
        let body = Written {
            id,
            version: committed.version.0,
        };
        Ok(([(header::ETAG, etag)], axum::Json(body)).into_response())
    }
}

/// Records a reading of the book.
#[utoipa::path(
    post, path = "/books/{id}/read", tag = "books",
    params(("id" = String, Path, description = "The book"), CommandHeaders, Expected),
    responses(CommandAnswers)
)]
async fn mark_read<S: EventStore>(
    State(api): State<Arc<BooksApi<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api.command(id, BookCommand::MarkRead, &headers).await
}

/// A rating.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Rating {
    /// 1 to 5.
    #[schema(minimum = 1, maximum = 5)]
    stars: u8,
}

/// Rates the book.
#[utoipa::path(
    put, path = "/books/{id}/rating", tag = "books",
    params(("id" = String, Path, description = "The book"), CommandHeaders, Expected),
    request_body = Rating,
    responses(CommandAnswers, BodyAnswers)
)]
async fn rate_book<S: EventStore>(
    State(api): State<Arc<BooksApi<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(rating): Json<Rating>,
) -> Result<Response, ApiError> {
    api.command(id, BookCommand::Rate { stars: rating.stars }, &headers)
        .await
}

/// Takes the book off the shelf.
#[utoipa::path(
    delete, path = "/books/{id}", tag = "books",
    params(("id" = String, Path, description = "The book"), CommandHeaders, Expected),
    responses(CommandAnswers)
)]
async fn remove_book<S: EventStore>(
    State(api): State<Arc<BooksApi<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api.command(id, BookCommand::Remove, &headers).await
}

/// The book as it is now.
#[utoipa::path(
    get, path = "/books/{id}", tag = "books",
    params(("id" = String, Path, description = "The book")),
    responses(
        (status = 200, description = "The book", body = BookBody,
            headers(("ETag" = String, description = "The book's version"))),
        (status = 404, description = "No such book", body = ErrorBody),
        (status = 410, description = "The book was removed", body = ErrorBody),
        (status = 503, description = "The store cannot be read now", body = ErrorBody),
    )
)]
async fn get_book<S: EventStore>(
    State(api): State<Arc<BooksApi<S>>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let loaded = api.books.load(&id).await?;
    let body = match loaded.state {
        Book::Unknown => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such book")),
        Book::Removed => return Err(ApiError::new(StatusCode::GONE, "the book was removed from the shelf")),
        Book::OnShelf {
            title,
            author,
            isbn,
            reads,
            stars,
        } => BookBody {
            _links: BookLinks {
                this: Link::to(format!("/books/{id}")),
                events: Link::to(format!("/books/{id}/events")),
            },
            id,
            title,
            author,
            isbn,
            reads,
            stars,
            version: loaded.version.0,
        },
    };
    let etag = format!("\"{}\"", loaded.version);
    Ok(([(header::ETAG, etag)], axum::Json(body)).into_response())
}

fn event_resource(id: &str, event: &RecordedEvent) -> EventBody {
    EventBody {
        version: event.version.0,
        event_type: event.event_type.to_string(),
        schema_version: event.schema_version,
        recorded_at: json!(event.recorded_at),
        metadata: json!(event.metadata),
        payload: serde_json::from_str(event.payload.get()).unwrap_or(Value::Null),
        _links: EventLinks {
            this: Link::to(format!("/books/{id}/events/{}", event.version)),
            book: Link::to(format!("/books/{id}")),
        },
    }
}

impl Link {
    fn to(href: String) -> Link {
        Link { href }
    }
}

/// The book's event log.
#[utoipa::path(
    get, path = "/books/{id}/events", tag = "books",
    params(("id" = String, Path, description = "The book")),
    responses(
        (status = 200, description = "Every event of the book, oldest first", body = EventsBody),
        (status = 404, description = "No such book", body = ErrorBody),
        (status = 503, description = "The store cannot be read now", body = ErrorBody),
    )
)]
async fn book_events<S: EventStore>(
    State(api): State<Arc<BooksApi<S>>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let stream = api.books.stream_of(&id);
    let events = api
        .books
        .store()
        .read_stream(&stream, Version(1))
        .await
        .map_err(store_error)?;
    if events.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such book"));
    }
    let body = EventsBody {
        _links: EventLinks {
            this: Link::to(format!("/books/{id}/events")),
            book: Link::to(format!("/books/{id}")),
        },
        events: events.iter().map(|event| event_resource(&id, event)).collect(),
    };
    Ok(axum::Json(body).into_response())
}

/// One event of the book's log.
#[utoipa::path(
    get, path = "/books/{id}/events/{version}", tag = "books",
    params(
        ("id" = String, Path, description = "The book"),
        ("version" = u64, Path, description = "The event's version, from 1"),
    ),
    responses(
        (status = 200, description = "The event", body = EventBody),
        (status = 400, description = "The version is not a number", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 503, description = "The store cannot be read now", body = ErrorBody),
    )
)]
async fn book_event<S: EventStore>(
    State(api): State<Arc<BooksApi<S>>>,
    Path((id, version)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let stream = api.books.stream_of(&id);
    let events = api
        .books
        .store()
        .read_stream(&stream, Version(version.max(1)))
        .await
        .map_err(store_error)?;
    match events.first().filter(|event| event.version.0 == version) {
        Some(event) => Ok(axum::Json(event_resource(&id, event)).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such event")),
    }
}

fn store_error(error: bookshelf::StoreError) -> ApiError {
    tracing::error!(%error, "event store failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the event store is unavailable")
}

impl<S: EventStore> BooksApi<S> {
    async fn settle(&self, position: Option<Position>) {
        let Some(position) = position else { return };
        for view in &self.read_your_writes {
            let _ = tokio::time::timeout(Duration::from_secs(1), view(position.next())).await;
        }
    }
}
