//! The query routes: the last read books, and the authors (from the view
//! in memory or from SQL tables).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bookshelf::ViewState;
use serde::Serialize;

use crate::books::{AuthorSummary, Authors, LastRead, ReadBook, ShelvedBook};
use crate::docs::{Api, ErrorBody};

use super::*;

/// `GET /` and `GET /last-read`: the last read books as a JSON list, most
/// recent first.
pub fn last_read_routes(view: bookshelf::versions::Versions<LastRead>) -> Api {
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
async fn last_read_root(view: State<bookshelf::versions::Versions<LastRead>>) -> Response {
    last_read(view).await
}

/// The last read books.
#[utoipa::path(
    get, path = "/last-read", tag = "last-read",
    responses((status = 200, description = "Up to five books, most recently read first", body = Vec<ReadBook>))
)]
async fn last_read(State(view): State<bookshelf::versions::Versions<LastRead>>) -> Response {
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

/// The view's versions, rebuilt side by side: the version serving answers.
impl AuthorsQuery for bookshelf::versions::Versions<Authors> {
    fn list(&self) -> Vec<crate::books::AuthorSummary> {
        self.read(Authors::list)
    }

    fn books_of(&self, author: &str) -> Option<Vec<crate::books::ShelvedBook>> {
        self.read(|authors| authors.books_of(author))
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
