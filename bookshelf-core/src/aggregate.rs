//! Aggregates: the write side. An aggregate takes a command, checks it against
//! its state, and answers with the events that record what happened.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::codec::DomainEvent;

/// A consistency boundary whose state is the fold of its events.
///
/// * [`handle`](Aggregate::handle) decides: it checks a command against the
///   current state and returns the events to record, or a domain error. It
///   never changes the state, and it may be async and call the injected
///   [`Services`](Aggregate::Services) (a clock, a pricing service, …).
/// * [`apply`](Aggregate::apply) evolves: it folds one event into the state.
///   It must not fail: events are facts.
///
/// The [`crate::Repository`] loads an aggregate by applying its stream's
/// events to `Default::default()`, calls `handle`, and appends the new events
/// with optimistic concurrency.
///
/// ```
/// use async_trait::async_trait;
/// use bookshelf_core::{Aggregate, DomainEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default)]
/// struct Counter { value: u64 }
///
/// enum CounterCommand { Add(u64) }
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum CounterEvent { Added { by: u64 } }
/// impl DomainEvent for CounterEvent {}
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter would overflow")]
/// struct Overflow;
///
/// #[async_trait]
/// impl Aggregate for Counter {
///     const CATEGORY: &'static str = "counter";
///     type Command = CounterCommand;
///     type Event = CounterEvent;
///     type Error = Overflow;
///     type Services = ();
///
///     async fn handle(&self, command: &CounterCommand, _: &()) -> Result<Vec<CounterEvent>, Overflow> {
///         let CounterCommand::Add(by) = command;
///         self.value.checked_add(*by).ok_or(Overflow)?;
///         Ok(vec![CounterEvent::Added { by: *by }])
///     }
///
///     fn apply(&mut self, event: &CounterEvent) {
///         let CounterEvent::Added { by } = event;
///         self.value += by;
///     }
/// }
/// ```
#[async_trait]
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The stream category: an aggregate with id `42` lives in the stream
    /// `"<CATEGORY>-42"`.
    const CATEGORY: &'static str;
    /// What the aggregate is asked to do.
    type Command: Send + Sync;
    /// What the aggregate records.
    type Event: DomainEvent + Clone + Debug;
    /// Why the aggregate refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;
    /// What `handle` may call: clocks, other services, configuration. Use `()`
    /// for none.
    type Services: Send + Sync + 'static;

    /// Decides which events a command produces, given the current state.
    ///
    /// # Errors
    /// The aggregate's own error when the command is not allowed in this state.
    async fn handle(&self, command: &Self::Command, services: &Self::Services)
        -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);
}
