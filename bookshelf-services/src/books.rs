//! The bookshelf domain shared by the examples and the benches: the `Book`
//! aggregate, its events, and the "last read books" view.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bookshelf::{async_trait, Aggregate, DomainEvent, Envelope, View};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What the books aggregate is asked to do.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum BookCommand {
    /// Put a new book on the shelf.
    Add {
        title: String,
        author: String,
        isbn: String,
    },
    /// Record that the book was read (now).
    MarkRead,
    /// Rate the book, 1 to 5 stars.
    Rate { stars: u8 },
    /// Take the book off the shelf.
    Remove,
}

/// What happened to a book. `BookRead` carries the title and author so that
/// views need not look them up.
// The variant names are the event type names in a log shared with other
// aggregates, so they say what they are about.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BookEvent {
    BookAdded {
        title: String,
        author: String,
        isbn: String,
    },
    BookRead {
        title: String,
        author: String,
        #[serde(with = "bookshelf::timestamp")]
        read_at: DateTime<Utc>,
    },
    BookRated {
        stars: u8,
    },
    BookRemoved,
}

impl DomainEvent for BookEvent {}

/// Why a book command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BookError {
    #[error("{0}")]
    Invalid(String),
    #[error("the book is already on the shelf")]
    AlreadyExists,
    #[error("no such book")]
    NotFound,
    #[error("the book was removed from the shelf")]
    Removed,
}

/// Where the aggregate gets the time from.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Clock(Arc::new(Utc::now))
    }

    pub fn fixed(at: DateTime<Utc>) -> Self {
        Clock(Arc::new(move || at))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

/// One book's state, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub enum Book {
    #[default]
    Unknown,
    OnShelf {
        title: String,
        author: String,
        isbn: String,
        reads: u32,
        stars: Option<u8>,
    },
    Removed,
}

#[async_trait]
impl Aggregate for Book {
    const CATEGORY: &'static str = "book";
    type Command = BookCommand;
    type Event = BookEvent;
    type Error = BookError;
    type Services = Clock;

    async fn handle(&self, command: &BookCommand, clock: &Clock) -> Result<Vec<BookEvent>, BookError> {
        // A rating out of range is wrong whatever the book's state: refused
        // as invalid first, not as "removed" or "not found".
        if let BookCommand::Rate { stars } = command {
            if !(1..=5).contains(stars) {
                return Err(BookError::Invalid(format!("stars must be 1 to 5, got {stars}")));
            }
        }
        match (command, self) {
            (BookCommand::Add { title, author, isbn }, Book::Unknown) => {
                let title = required("title", title)?;
                let author = required("author", author)?;
                let isbn = normalize_isbn(isbn)?;
                Ok(vec![BookEvent::BookAdded { title, author, isbn }])
            }
            (BookCommand::Add { .. }, _) => Err(BookError::AlreadyExists),
            (_, Book::Unknown) => Err(BookError::NotFound),
            (_, Book::Removed) => Err(BookError::Removed),
            (BookCommand::MarkRead, Book::OnShelf { title, author, .. }) => Ok(vec![BookEvent::BookRead {
                title: title.clone(),
                author: author.clone(),
                read_at: clock.now(),
            }]),
            (BookCommand::Rate { stars }, Book::OnShelf { .. }) => Ok(vec![BookEvent::BookRated { stars: *stars }]),
            (BookCommand::Remove, Book::OnShelf { .. }) => Ok(vec![BookEvent::BookRemoved]),
        }
    }

    fn apply(&mut self, event: &BookEvent) {
        match event {
            BookEvent::BookAdded { title, author, isbn } => {
                *self = Book::OnShelf {
                    title: title.clone(),
                    author: author.clone(),
                    isbn: isbn.clone(),
                    reads: 0,
                    stars: None,
                }
            }
            BookEvent::BookRead { .. } => {
                if let Book::OnShelf { reads, .. } = self {
                    *reads += 1;
                }
            }
            BookEvent::BookRated { stars: new } => {
                if let Book::OnShelf { stars, .. } = self {
                    *stars = Some(*new);
                }
            }
            BookEvent::BookRemoved => *self = Book::Removed,
        }
    }
}

fn required(field: &str, value: &str) -> Result<String, BookError> {
    let value = value.trim();
    match value.chars().count() {
        0 => Err(BookError::Invalid(format!("{field} must not be empty"))),
        1..=200 => Ok(value.to_owned()),
        n => Err(BookError::Invalid(format!(
            "{field} is {n} characters long; at most 200"
        ))),
    }
}

/// Checks an ISBN-10 or ISBN-13 (hyphens and spaces allowed) and returns
/// its digits.
pub fn normalize_isbn(isbn: &str) -> Result<String, BookError> {
    let digits: String = isbn.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
    let invalid = || BookError::Invalid(format!("{isbn:?} is not a valid ISBN-10 or ISBN-13"));
    let value = |c: char| c.to_digit(10);
    let valid = match digits.len() {
        10 => {
            let mut sum = 0;
            for (i, c) in digits.chars().enumerate() {
                let d = match (i, c) {
                    (9, 'X' | 'x') => 10,
                    _ => value(c).ok_or_else(invalid)?,
                };
                sum += d * (10 - i as u32);
            }
            sum % 11 == 0
        }
        13 => {
            let mut sum = 0;
            for (i, c) in digits.chars().enumerate() {
                sum += value(c).ok_or_else(invalid)? * if i % 2 == 0 { 1 } else { 3 };
            }
            sum % 10 == 0
        }
        _ => false,
    };
    if valid {
        Ok(digits.to_uppercase())
    } else {
        Err(invalid())
    }
}

/// One entry of the last-read list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadBook {
    pub id: String,
    pub title: String,
    pub author: String,
    #[serde(with = "bookshelf::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub read_at: DateTime<Utc>,
}

/// The five most recently read books, most recent first by `read_at`; a book
/// read again moves up rather than appearing twice.
///
/// It orders by the time of reading, not by the order events arrive in: on a
/// topic of several partitions, reads of different books arrive interleaved
/// by partition, not in the order they happened.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRead {
    books: VecDeque<ReadBook>,
}

impl LastRead {
    pub const LIMIT: usize = 5;

    pub fn books(&self) -> Vec<ReadBook> {
        self.books.iter().cloned().collect()
    }
}

impl View for LastRead {
    type Event = BookEvent;

    fn apply(&mut self, event: Envelope<BookEvent>) {
        if let BookEvent::BookRead { title, author, read_at } = event.payload {
            let id = event.stream_id.entity_id();
            if let Some(at) = self.books.iter().position(|book| book.id == id) {
                if self.books[at].read_at >= read_at {
                    return;
                }
                self.books.remove(at);
            }
            let slot = self
                .books
                .iter()
                .position(|book| book.read_at < read_at)
                .unwrap_or(self.books.len());
            if slot >= Self::LIMIT {
                return; // older than the five kept
            }
            self.books.insert(
                slot,
                ReadBook {
                    id: id.to_owned(),
                    title,
                    author,
                    read_at,
                },
            );
            self.books.truncate(Self::LIMIT);
        }
    }
}

/// A book as the authors view lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShelvedBook {
    pub id: String,
    pub title: String,
    pub isbn: String,
    pub reads: u32,
    pub stars: Option<u8>,
}

/// One author's line in the list of authors.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuthorSummary {
    pub author: String,
    pub books: usize,
    pub reads: u32,
}

/// Books by author: the books on the shelf (removed ones leave), grouped by
/// author, with how often each was read and its rating.
///
/// Only `BookAdded` and `BookRead` name the author; for the other events the
/// view keeps which author each book is under.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Authors {
    shelves: BTreeMap<String, BTreeMap<String, ShelvedBook>>,
    author_of: HashMap<String, String>,
}

impl Authors {
    /// Every author, by name, with their number of books and reads.
    pub fn list(&self) -> Vec<AuthorSummary> {
        self.shelves
            .iter()
            .map(|(author, books)| AuthorSummary {
                author: author.clone(),
                books: books.len(),
                reads: books.values().map(|book| book.reads).sum(),
            })
            .collect()
    }

    /// The books of `author`, by title, or `None` for an author with none.
    pub fn books_of(&self, author: &str) -> Option<Vec<ShelvedBook>> {
        let mut books: Vec<ShelvedBook> = self.shelves.get(author)?.values().cloned().collect();
        books.sort_by(|a, b| a.title.cmp(&b.title).then_with(|| a.id.cmp(&b.id)));
        Some(books)
    }

    fn book_mut(&mut self, id: &str) -> Option<&mut ShelvedBook> {
        let author = self.author_of.get(id)?;
        self.shelves.get_mut(author)?.get_mut(id)
    }
}

impl View for Authors {
    type Event = BookEvent;

    fn apply(&mut self, event: Envelope<BookEvent>) {
        let id = event.stream_id.entity_id();
        match event.payload {
            BookEvent::BookAdded { title, author, isbn } => {
                let book = ShelvedBook {
                    id: id.to_owned(),
                    title,
                    isbn,
                    reads: 0,
                    stars: None,
                };
                self.shelves
                    .entry(author.clone())
                    .or_default()
                    .insert(id.to_owned(), book);
                self.author_of.insert(id.to_owned(), author);
            }
            BookEvent::BookRead { .. } => {
                if let Some(book) = self.book_mut(id) {
                    book.reads += 1;
                }
            }
            BookEvent::BookRated { stars } => {
                if let Some(book) = self.book_mut(id) {
                    book.stars = Some(stars);
                }
            }
            BookEvent::BookRemoved => {
                if let Some(author) = self.author_of.remove(id) {
                    if let Some(books) = self.shelves.get_mut(&author) {
                        books.remove(id);
                        if books.is_empty() {
                            self.shelves.remove(&author);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bookshelf::{EventId, Metadata, Position, StreamId, Version};
    use chrono::TimeZone;

    fn read(book: u32, second: i64) -> Envelope<BookEvent> {
        Envelope {
            event_id: EventId::new(),
            stream_id: StreamId::for_aggregate("book", &book.to_string()),
            version: Version(1),
            position: Position(0),
            recorded_at: Utc::now(),
            event_type: "BookRead".into(),
            schema_version: 1,
            metadata: Metadata::default(),
            payload: BookEvent::BookRead {
                title: format!("Book {book}"),
                author: "Somebody".into(),
                read_at: Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap(),
            },
        }
    }

    #[test]
    fn last_read_does_not_depend_on_the_order_streams_interleave() {
        // Eight reads of six books, book 2 twice; then the same reads as
        // three partitions might deliver them.
        let reads = [(1, 1), (2, 2), (3, 3), (4, 4), (2, 5), (5, 6), (6, 7), (7, 8)];
        let mut in_time_order = LastRead::default();
        for (book, second) in reads {
            in_time_order.apply(read(book, second));
        }
        let mut interleaved = LastRead::default();
        for (book, second) in [(3, 3), (6, 7), (1, 1), (4, 4), (7, 8), (2, 2), (5, 6), (2, 5)] {
            interleaved.apply(read(book, second));
        }
        assert_eq!(interleaved, in_time_order);
        let ids: Vec<String> = in_time_order.books().into_iter().map(|b| b.id).collect();
        assert_eq!(ids, ["7", "6", "5", "2", "4"]);
    }

    #[tokio::test]
    async fn a_rating_out_of_range_is_invalid_whatever_the_book() {
        let on_shelf = Book::OnShelf {
            title: "Dune".into(),
            author: "Frank Herbert".into(),
            isbn: "9780441013593".into(),
            reads: 0,
            stars: None,
        };
        for book in [Book::Unknown, on_shelf, Book::Removed] {
            let answer = book.handle(&BookCommand::Rate { stars: 152 }, &Clock::system()).await;
            assert!(matches!(answer, Err(BookError::Invalid(_))), "{book:?}: {answer:?}");
        }
    }

    fn event(book: u32, payload: BookEvent) -> Envelope<BookEvent> {
        Envelope {
            payload,
            ..read(book, 0)
        }
    }

    #[test]
    fn authors_group_books_and_follow_reads_ratings_and_removals() {
        let added = |title: &str, author: &str| BookEvent::BookAdded {
            title: title.into(),
            author: author.into(),
            isbn: "9780441013593".into(),
        };
        let mut authors = Authors::default();
        authors.apply(event(1, added("Emma", "Jane Austen")));
        authors.apply(event(2, added("Dune", "Frank Herbert")));
        authors.apply(event(3, added("Persuasion", "Jane Austen")));
        authors.apply(read(3, 1));
        authors.apply(read(3, 2));
        authors.apply(event(1, BookEvent::BookRated { stars: 4 }));
        authors.apply(read(9, 3)); // a book this view never saw added: ignored

        let list = authors.list();
        let names: Vec<(&str, usize, u32)> = list.iter().map(|a| (a.author.as_str(), a.books, a.reads)).collect();
        assert_eq!(names, [("Frank Herbert", 1, 0), ("Jane Austen", 2, 2)]);
        let austen = authors.books_of("Jane Austen").unwrap();
        let austen: Vec<(&str, u32, Option<u8>)> =
            austen.iter().map(|b| (b.title.as_str(), b.reads, b.stars)).collect();
        assert_eq!(austen, [("Emma", 0, Some(4)), ("Persuasion", 2, None)]);

        authors.apply(event(2, BookEvent::BookRemoved));
        assert_eq!(
            authors.books_of("Frank Herbert"),
            None,
            "an author with no book left leaves"
        );
        assert_eq!(authors.list().len(), 1);
    }
}
