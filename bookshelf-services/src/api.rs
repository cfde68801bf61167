//! HTTP for the bookshelf services: the books command API, the last-read
//! query, typed JSON errors, and graceful shutdown.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bookshelf::{CommandError, EventStore, Metadata, Position, RecordedEvent, Repository, Version, ViewState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

use crate::books::{AuthorSummary, Authors, Book, BookCommand, BookError, LastRead, ReadBook, ShelvedBook};
use crate::docs::{Api, ErrorBody};
use crate::logs;

/// The header that carries a request's correlation id into event metadata.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The header on an answer to a command this instance could not take because
/// its book's partition has (now) another owner, or the command was fenced
/// off: nothing was stored, and the same request may go to the owner.
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

/// `GET /` and `GET /last-read`: the last read books as a JSON list, most
/// recent first.
pub fn last_read_routes(view: ViewState<LastRead>) -> Api {
    Api::new()
        .route(__path_last_read_root, last_read_root)
        .route(__path_last_read, last_read)
        .with_state(view)
}

/// The last read books (the same as `GET /last-read`).
#[utoipa::path(
    get, path = "/", tag = "last-read",
    responses((status = 200, description = "Up to five books, most recently read first", body = Vec<ReadBook>))
)]
async fn last_read_root(view: State<ViewState<LastRead>>) -> Response {
    last_read(view).await
}

/// The last read books.
#[utoipa::path(
    get, path = "/last-read", tag = "last-read",
    responses((status = 200, description = "Up to five books, most recently read first", body = Vec<ReadBook>))
)]
async fn last_read(State(view): State<ViewState<LastRead>>) -> Response {
    axum::Json(view.read(LastRead::books)).into_response()
}

/// What the authors routes ask, of the in-memory view or of a table.
pub trait AuthorsQuery: Clone + Send + Sync + 'static {
    /// Every author, by name, with their number of books and reads.
    fn list(&self) -> Vec<crate::books::AuthorSummary>;
    /// The books of `author`, by title, or `None` for an author with none.
    fn books_of(&self, author: &str) -> Option<Vec<crate::books::ShelvedBook>>;
}

/// The in-memory view, wherever it runs.
#[derive(Clone)]
pub struct AuthorsView(pub ViewState<Authors>);

impl AuthorsQuery for AuthorsView {
    fn list(&self) -> Vec<crate::books::AuthorSummary> {
        self.0.read(Authors::list)
    }

    fn books_of(&self, author: &str) -> Option<Vec<crate::books::ShelvedBook>> {
        self.0.read(|authors| authors.books_of(author))
    }
}

/// `GET /authors`: every author with their number of books and reads;
/// `GET /authors/{author}`: that author's books.
pub fn authors_routes<Q: AuthorsQuery>(view: Q) -> Api {
    Api::new()
        .route(__path_authors, authors::<Q>)
        .route(__path_books_of, books_of::<Q>)
        .with_state(view)
}

/// One author's books.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AuthorBooks {
    author: String,
    /// By title.
    books: Vec<ShelvedBook>,
}

/// Every author on the shelf.
#[utoipa::path(
    get, path = "/authors", tag = "authors",
    responses((status = 200, description = "Every author, by name, with their number of books and reads",
        body = Vec<AuthorSummary>))
)]
async fn authors<Q: AuthorsQuery>(State(view): State<Q>) -> Response {
    axum::Json(view.list()).into_response()
}

/// One author's books.
#[utoipa::path(
    get, path = "/authors/{author}", tag = "authors",
    params(("author" = String, Path, description = "The author's name, as written on the books")),
    responses(
        (status = 200, description = "The author's books, by title", body = AuthorBooks),
        (status = 404, description = "No book by this author is on the shelf", body = ErrorBody),
    )
)]
async fn books_of<Q: AuthorsQuery>(State(view): State<Q>, Path(author): Path<String>) -> Result<Response, ApiError> {
    match view.books_of(&author) {
        Some(books) => Ok(axum::Json(AuthorBooks { author, books }).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no book by {author:?} on the shelf"),
        )),
    }
}

/// `GET /health`, and `GET /metrics`: the process's metrics in Prometheus's
/// text format (see `bookshelf::telemetry` for the library's own).
pub fn health_routes() -> Api {
    Api::new().route(__path_health, health).route(__path_metrics, metrics)
}

/// What `GET /health` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Healthy {
    /// `ok`.
    status: String,
}

/// Whether the service serves.
#[utoipa::path(
    get, path = "/health", tag = "meta",
    responses((status = 200, description = "The service serves", body = Healthy))
)]
async fn health() -> axum::Json<Healthy> {
    axum::Json(Healthy { status: "ok".into() })
}

/// The Prometheus recorder of this process, installed on first use.
fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Latency buckets from half a millisecond to ten seconds.
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ];
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|builder| builder.install_recorder())
                .map_err(|error| tracing::error!(%error, "no Prometheus recorder: /metrics stays empty"))
                .ok()
        })
        .as_ref()
}

/// Installs the Prometheus recorder, so that what happens before the first
/// scrape is counted: call at start.
pub fn record_metrics() {
    let _ = prometheus();
}

/// The process's metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus's text format, version 0.0.4", body = String,
        content_type = "text/plain"))
)]
pub async fn metrics() -> Response {
    let text = prometheus().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// A JSON 404 for every path no route takes.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such resource")
}

/// The flags the bookshelf services share; each adds `--port` and `--name`
/// with its own defaults.
#[derive(Debug, clap::Args)]
pub struct ServiceFlags {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub addr: std::net::IpAddr,
    /// Kafka bootstrap servers: run on Kafka instead of the in-memory store.
    #[arg(long)]
    pub broker: Option<String>,
    /// The Kafka topic of the book events.
    #[arg(long, default_value = "books")]
    pub topic: String,
    /// The Consul agent to register with, such as http://127.0.0.1:8500 or
    /// 127.0.0.1:8500; taken from CONSUL_HTTP_ADDR when not given, as
    /// Consul's own tools do.
    #[arg(long, env = "CONSUL_HTTP_ADDR")]
    pub consul: Option<String>,
    /// The instance id to register under (default: NAME-PORT).
    #[arg(long)]
    pub id: Option<String>,
    /// Tags to register with: `--tags a b`, `--tags a,b`, or `--tags a --tags b`.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub tags: Vec<String>,
    /// The TTL of the instance's Consul check, in milliseconds: how long a
    /// stopped or cut-off instance stays listed as healthy.
    #[arg(long, default_value_t = 10_000)]
    pub check_ttl_ms: u64,
    /// Without `--broker`: keep events and views in memory only (lost when
    /// the process stops) instead of in the data directory.
    #[arg(long)]
    pub in_memory: bool,
}

impl ServiceFlags {
    /// Listens on `--addr` and `port` (0 picks a free one).
    pub async fn listen(&self, port: u16) -> std::io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(std::net::SocketAddr::new(self.addr, port)).await
    }

    /// Registers as `name` at `local` when `--consul` is given.
    pub async fn register(
        &self,
        name: &str,
        local: std::net::SocketAddr,
    ) -> Result<Option<Registration>, bookshelf::DiscoveryError> {
        Registration::register(self.consul_config(), name, self.id.as_deref(), &self.tags, local).await
    }

    /// How to reach Consul, when `--consul` is given.
    pub fn consul_config(&self) -> Option<bookshelf_consul::ConsulConfig> {
        let ttl = std::time::Duration::from_millis(self.check_ttl_ms.max(100));
        self.consul
            .as_deref()
            .map(|url| bookshelf_consul::ConsulConfig::new(url).check(bookshelf_consul::Check::Ttl { ttl }))
    }
}

/// A service's registration in Consul, made once it listens.
pub struct Registration {
    discovery: bookshelf_consul::ConsulDiscovery,
    id: String,
}

impl Registration {
    /// Registers `name` (`id`, default `NAME-PORT`; `tags`) at `local` with
    /// the Consul agent `consul` describes, if one is given.
    pub async fn register(
        consul: Option<bookshelf_consul::ConsulConfig>,
        name: &str,
        id: Option<&str>,
        tags: &[String],
        local: std::net::SocketAddr,
    ) -> Result<Option<Registration>, bookshelf::DiscoveryError> {
        use bookshelf::Discovery;
        let Some(consul) = consul else {
            return Ok(None);
        };
        let url = consul.base_url().to_owned();
        let discovery = bookshelf_consul::ConsulDiscovery::new(consul)?;
        let id = id.map_or_else(|| format!("{name}-{}", local.port()), str::to_owned);
        let me = bookshelf::ServiceInstance::new(&id, name, local.ip().to_string(), local.port()).with_tags(tags);
        discovery.register(&me).await?;
        tracing::info!(%id, consul = %url, "registered");
        Ok(Some(Registration { discovery, id }))
    }

    /// Deregisters, on shutdown.
    pub async fn deregister(self) -> Result<(), bookshelf::DiscoveryError> {
        use bookshelf::Discovery;
        self.discovery.deregister(&self.id).await?;
        tracing::info!(id = %self.id, "deregistered");
        Ok(())
    }
}

/// Structured logs on standard error, filtered by `RUST_LOG` (default `info`);
/// built with feature `opentelemetry` and given `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// spans go to that OpenTelemetry collector too, as this program's name.
///
/// Lines are written by a thread of their own, in batches (see
/// [`logs`]), so that a request never waits for standard error; none is
/// dropped. Keep what this returns until the end of `main`: dropping it
/// writes what is queued.
#[must_use = "dropping it stops the logs"]
pub fn init_tracing() -> Logging {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    record_metrics();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = logs::batched(std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .fmt_fields(logs::Fields)
        .with_timer(logs::Time)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "opentelemetry")]
    {
        let program = std::env::current_exe()
            .ok()
            .and_then(|path| path.file_stem().map(|stem| stem.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "bookshelf".to_owned());
        match bookshelf::otlp::OtlpExport::from_env(&program) {
            Ok(export) => {
                registry.with(export.as_ref().map(|export| export.layer())).init();
                if let Some(export) = export {
                    tracing::info!("exporting spans over OTLP");
                    *EXPORT.lock().unwrap_or_else(|p| p.into_inner()) = Some(export);
                }
            }
            Err(error) => {
                registry.init();
                tracing::error!(%error, "spans are not exported");
            }
        }
    }
    #[cfg(not(feature = "opentelemetry"))]
    registry.init();
    Logging(guard)
}

/// The log writer's thread: dropped, it writes what is queued and ends.
pub struct Logging(#[allow(dead_code)] logs::Flush);

/// The OTLP export, to finish at shutdown.
#[cfg(feature = "opentelemetry")]
static EXPORT: std::sync::Mutex<Option<bookshelf::otlp::OtlpExport>> = std::sync::Mutex::new(None);

/// Sends the spans not exported yet, if spans are exported.
pub fn finish_tracing() {
    #[cfg(feature = "opentelemetry")]
    if let Some(export) = EXPORT.lock().unwrap_or_else(|p| p.into_inner()).take() {
        export.shutdown();
    }
}

/// Serves `app` until SIGINT or SIGTERM, lets requests in flight finish,
/// then deregisters.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    registration: Option<Registration>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Answers go out as soon as they are written, not held for more.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        traced(app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    finish(registration).await
}

/// `app` with a span for each request, and server errors logged.
pub fn traced(app: Router) -> Router {
    // A 503 is an answer this service gives on purpose (not the owner, the
    // store unavailable; said with Retry-After and logged where it is
    // decided): not an error of the server. Other 5xx are.
    let on_failure = |class: tower_http::classify::ServerErrorsFailureClass, latency: Duration, _: &tracing::Span| {
        use tower_http::classify::ServerErrorsFailureClass::StatusCode as Status;
        match class {
            Status(StatusCode::SERVICE_UNAVAILABLE) => {}
            class => tracing::error!(%class, latency_ms = latency.as_millis(), "response failed"),
        }
    };
    app.layer(tower_http::trace::TraceLayer::new_for_http().on_failure(on_failure))
}

/// After serving: deregisters, and sends the spans not exported yet.
pub async fn finish(registration: Option<Registration>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(registration) = registration {
        registration.deregister().await?;
    }
    finish_tracing();
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
