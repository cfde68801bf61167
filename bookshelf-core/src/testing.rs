//! A test kit for aggregates: given these events, when this command, then
//! these events (or this error).
//!
//! ```
//! # use bookshelf_core::*;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default)] struct Counter { value: u64 }
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] enum CounterEvent { Added { by: u64 } }
//! # impl DomainEvent for CounterEvent {}
//! # #[derive(Debug, thiserror::Error)] #[error("the counter would overflow")] struct Overflow;
//! # #[async_trait::async_trait]
//! # impl Aggregate for Counter {
//! #     const CATEGORY: &'static str = "counter";
//! #     type Command = u64; type Event = CounterEvent; type Error = Overflow; type Services = ();
//! #     async fn handle(&self, by: &u64, _: &()) -> Result<Vec<CounterEvent>, Overflow> {
//! #         self.value.checked_add(*by).ok_or(Overflow)?;
//! #         Ok(vec![CounterEvent::Added { by: *by }])
//! #     }
//! #     fn apply(&mut self, CounterEvent::Added { by }: &CounterEvent) { self.value += by; }
//! # }
//! use bookshelf_core::testing::AggregateTest;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! AggregateTest::<Counter>::new()
//!     .given([CounterEvent::Added { by: 2 }])
//!     .when(3)
//!     .await
//!     .then_expect_events([CounterEvent::Added { by: 3 }]);
//!
//! AggregateTest::<Counter>::new()
//!     .given([CounterEvent::Added { by: u64::MAX }])
//!     .when(1)
//!     .await
//!     .then_expect_error_message("the counter would overflow");
//! # }
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;
use crate::codec::{self, EventCodec};

/// A test of one command against an aggregate built from given events.
pub struct AggregateTest<A: Aggregate> {
    services: A::Services,
    state: A,
}

impl<A: Aggregate> AggregateTest<A>
where
    A::Services: Default,
{
    /// A test with default services.
    pub fn new() -> Self {
        AggregateTest::with_services(A::Services::default())
    }
}

impl<A: Aggregate> Default for AggregateTest<A>
where
    A::Services: Default,
{
    fn default() -> Self {
        AggregateTest::new()
    }
}

impl<A: Aggregate> AggregateTest<A> {
    /// A test whose handler gets `services` (a fixed clock, a stub, …).
    pub fn with_services(services: A::Services) -> Self {
        AggregateTest {
            services,
            state: A::default(),
        }
    }

    /// Applies these events, as if they were in the aggregate's stream.
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        for event in events {
            self.state.apply(&event);
        }
        self
    }

    /// Handles `command` against the state built so far.
    pub async fn when(self, command: A::Command) -> Outcome<A> {
        let result = self.state.handle(&command, &self.services).await;
        Outcome {
            result,
            state: self.state,
        }
    }
}

/// What a command did, to check with the `then_*` methods.
pub struct Outcome<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Error>,
    state: A,
}

impl<A: Aggregate> Outcome<A> {
    /// The produced events, or the error.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }

    /// Asserts that the command produced exactly `expected`, in order, and
    /// that each event survives the trip through the store's JSON form.
    /// Returns the state with the events applied, for further checks.
    ///
    /// # Panics
    /// When the command failed or produced other events.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        let events = match self.result {
            Ok(events) => events,
            Err(error) => panic!("expected events {expected:?}, but the command was rejected: {error}"),
        };
        assert_eq!(events, expected, "the command produced other events than expected");
        let codec = EventCodec::<A::Event>::new();
        for event in &events {
            let encoded = codec::encode(event).unwrap_or_else(|e| panic!("event {event:?} does not encode: {e}"));
            let back = codec
                .decode(&encoded.event_type, encoded.schema_version, &encoded.payload)
                .unwrap_or_else(|e| panic!("event {event:?} does not decode from its own JSON: {e}"));
            assert_eq!(&back, event, "event changes on its way through JSON");
        }
        let mut state = self.state;
        for event in &events {
            state.apply(event);
        }
        state
    }

    /// Asserts that the command was rejected with an error for which
    /// `check` holds.
    ///
    /// # Panics
    /// When the command succeeded or `check` fails.
    #[track_caller]
    pub fn then_expect_error(self, check: impl FnOnce(&A::Error) -> bool) -> A::Error {
        match self.result {
            Ok(events) => panic!("expected an error, but the command produced {events:?}"),
            Err(error) if check(&error) => error,
            Err(error) => panic!("the command was rejected with an unexpected error: {error:?}"),
        }
    }

    /// Asserts that the command was rejected with an error that displays as
    /// `message`.
    ///
    /// # Panics
    /// When the command succeeded or failed otherwise.
    #[track_caller]
    pub fn then_expect_error_message(self, message: &str) -> A::Error
    where
        A::Error: Debug,
    {
        self.then_expect_error(|error| error.to_string() == message)
    }
}
