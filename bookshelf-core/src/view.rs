//! Views: the read side. A view folds events into a read model and answers
//! queries from it.

use crate::codec::DomainEvent;
use crate::envelope::Envelope;

/// A read model built by folding events.
///
/// `apply` is a plain, synchronous fold that takes each event by value, so a
/// view keeps what it needs without copying; queries are the view's own methods,
/// read through the runner's [`crate::Handle`] while a
/// [`crate::ProjectionRunner`] keeps the view up to date.
///
/// A view applies each event once, in log order, so `apply` need not guard
/// against repeats: the runner skips events at or before the view's
/// checkpoint.
///
/// ```
/// use bookshelf_core::{DomainEvent, Envelope, View};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// enum BookEvent { BookAdded { title: String }, BookRemoved }
/// impl DomainEvent for BookEvent {}
///
/// /// How many books are on the shelf.
/// #[derive(Default, Serialize, Deserialize)]
/// struct ShelfSize { books: u64 }
///
/// impl View for ShelfSize {
///     type Event = BookEvent;
///     fn apply(&mut self, event: Envelope<BookEvent>) {
///         match event.payload {
///             BookEvent::BookAdded { .. } => self.books += 1,
///             BookEvent::BookRemoved => self.books = self.books.saturating_sub(1),
///         }
///     }
/// }
/// ```
pub trait View: Default + Send + Sync + 'static {
    /// The events the view folds. Events of other types in the log are
    /// skipped (see [`crate::UnknownEvents`]).
    type Event: DomainEvent;

    /// Folds one event into the view.
    fn apply(&mut self, event: Envelope<Self::Event>);
}
