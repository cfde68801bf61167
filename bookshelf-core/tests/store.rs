//! The behaviour every event store must have (see `bookshelf-testkit`), run
//! over the in-memory store and its snapshots.

use bookshelf_core::{InMemorySnapshots, InMemoryStore};

bookshelf_testkit::store_suite!(async || ((), InMemoryStore::new()), async || (
    (),
    InMemorySnapshots::new()
));

/// [`EventStore::streams`]'s default, which reads the log: a store that
/// keeps it (the in-memory store answers from its index).
mod default_streams {
    use std::sync::Arc;

    use bookshelf_core::store::{AppendOutcome, ExpectedVersion, MemorySubscription, StoreError};
    use bookshelf_core::{EventStore, InMemoryStore, NewEvent, Position, RecordedEvent, StreamId, Version};

    struct LogOnly(InMemoryStore);

    #[bookshelf_core::async_trait]
    impl EventStore for LogOnly {
        type Subscription = MemorySubscription;

        async fn append(
            &self,
            stream: &StreamId,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
        ) -> Result<AppendOutcome, StoreError> {
            self.0.append(stream, expected, events).await
        }

        async fn read_stream(&self, stream: &StreamId, from: Version) -> Result<Vec<Arc<RecordedEvent>>, StoreError> {
            self.0.read_stream(stream, from).await
        }

        async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
            self.0.stream_version(stream).await
        }

        async fn head(&self) -> Result<Position, StoreError> {
            self.0.head().await
        }

        async fn subscribe(&self, from: Position) -> Result<MemorySubscription, StoreError> {
            self.0.subscribe(from).await
        }
    }

    #[tokio::test]
    async fn streams_are_listed_with_their_versions_in_order() {
        bookshelf_testkit::store_suite::streams_are_listed_with_their_versions_in_order(LogOnly(InMemoryStore::new()))
            .await;
    }
}
