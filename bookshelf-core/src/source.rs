//! Following a log from a checkpoint: how process runners and change feeds
//! read, whether the log is one global sequence (the in-memory store) or a
//! topic of several partitions (Kafka).
//!
//! An [`EventSource`] hands out a [`Follower`] that starts at a
//! [`Checkpoint`]: the next offset of every partition, with a token the
//! source keeps there (core stores it without reading it; the Kafka source
//! keeps its fencing epoch in it). Each record comes with the [`Mark`] to
//! save after it, so that a reader that saves its state with its checkpoint
//! resumes after a crash exactly where its state stands: no record applied
//! twice, none passed over. Records that are not events for readers (a
//! partition's ownership claims, events of a fenced writer) come through as
//! [`Record::Skip`], and records that should be events and cannot be read
//! as [`Record::Unreadable`], so that the checkpoint moves past them too;
//! every runner dead-letters the unreadable ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::envelope::{Position, RecordedEvent};
use crate::store::{EventStore, StoreError, Subscription};

/// The name of the one partition of a log with a global order.
pub const GLOBAL: &str = "";

/// The suffix of the keys under which a partition's token is kept beside
/// its offset in a saved checkpoint (`NAME:token`).
const TOKEN_SUFFIX: &str = ":token";

/// The suffix under which checkpoints saved before tokens were opaque kept
/// them (`NAME:epoch`): still read, never written.
const LEGACY_TOKEN_SUFFIX: &str = ":epoch";

/// The key under which a saved checkpoint keeps the last re-drive ticket
/// applied (no partition's name starts with `@`).
const REDRIVEN_KEY: &str = "@redriven";

/// Where a reader stands in one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    /// The next offset to read.
    pub next: u64,
    /// What the source needs, besides the offset, to read on from `next`
    /// as it would have (0 when it needs nothing). Opaque here: saved and
    /// handed back unread. The Kafka source keeps the epoch of the
    /// partition's last ownership claim in it.
    pub token: u64,
}

/// A reader's checkpoint as its store keeps it, for tools that list them
/// (`bookshelf projections`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedCheckpoint {
    /// The reader's name.
    pub name: String,
    /// What saved it: `"view"` (a view's state with its checkpoint) or
    /// `"table"` (a table view's checkpoint, beside its rows).
    pub kind: &'static str,
    /// Where it stands.
    pub checkpoint: Checkpoint,
}

/// Where a reader stands in every partition of a log, and in its queue of
/// re-driven dead letters. Partitions not named are read from their start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    marks: BTreeMap<String, Mark>,
    redriven: u64,
}

impl Checkpoint {
    /// The start of every partition.
    pub fn new() -> Self {
        Checkpoint::default()
    }

    /// Position `position` of a log with one global order.
    pub fn global(position: Position) -> Self {
        let mut checkpoint = Checkpoint::new();
        checkpoint.set(
            GLOBAL,
            Mark {
                next: position.0,
                token: 0,
            },
        );
        checkpoint
    }

    /// The mark of `partition` (its start when not named).
    pub fn get(&self, partition: &str) -> Mark {
        self.marks.get(partition).copied().unwrap_or_default()
    }

    /// Moves `partition` to `mark`.
    pub fn set(&mut self, partition: &str, mark: Mark) {
        match self.marks.get_mut(partition) {
            Some(slot) => *slot = mark,
            None => {
                self.marks.insert(partition.to_owned(), mark);
            }
        }
    }

    /// The last re-drive ticket the reader has applied (0 for none): see
    /// [`DeadLetters`](crate::DeadLetters).
    pub fn redriven(&self) -> u64 {
        self.redriven
    }

    /// Moves the reader past re-drive ticket `ticket`.
    pub fn set_redriven(&mut self, ticket: u64) {
        self.redriven = ticket;
    }

    /// The furthest of the two in each partition, and in the re-drive
    /// queue.
    pub fn furthest(&self, other: &Checkpoint) -> Checkpoint {
        let mut furthest = self.clone();
        for (partition, mark) in other.iter() {
            if mark.next > furthest.get(partition).next {
                furthest.set(partition, mark);
            }
        }
        furthest.redriven = self.redriven.max(other.redriven);
        furthest
    }

    /// Whether the checkpoint is at the start of everything: no partition
    /// read, no dead letter re-driven.
    pub fn is_start(&self) -> bool {
        self.redriven == 0 && self.marks.values().all(|mark| mark.next == 0)
    }

    /// The partitions named, with their marks.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Mark)> {
        self.marks.iter().map(|(partition, mark)| (partition.as_str(), *mark))
    }

    /// Whether every partition of `ends` (next offsets, as
    /// [`Follower::ends`] gives) is reached.
    pub fn reached(&self, ends: &BTreeMap<String, u64>) -> bool {
        ends.iter().all(|(partition, &end)| self.get(partition).next >= end)
    }

    /// The checkpoint as saved in a [`StoredView`](crate::StoredView): the
    /// global position in `checkpoint`, or each partition's offset under its
    /// name in `offsets` with its token, when not 0, under `NAME:token`,
    /// and the last re-drive ticket, when not 0, under `@redriven`.
    pub fn to_saved(&self) -> (Position, BTreeMap<String, u64>) {
        let mut offsets = BTreeMap::new();
        if self.redriven > 0 {
            offsets.insert(REDRIVEN_KEY.to_owned(), self.redriven);
        }
        let mut position = Position(0);
        for (partition, mark) in &self.marks {
            if partition == GLOBAL {
                position = Position(mark.next);
                continue;
            }
            offsets.insert(partition.clone(), mark.next);
            if mark.token > 0 {
                offsets.insert(format!("{partition}{TOKEN_SUFFIX}"), mark.token);
            }
        }
        (position, offsets)
    }

    /// The checkpoint saved by [`to_saved`](Self::to_saved), or by earlier
    /// versions (which named tokens `NAME:epoch`).
    pub fn from_saved(position: Position, offsets: &BTreeMap<String, u64>) -> Self {
        let redriven = offsets.get(REDRIVEN_KEY).copied().unwrap_or(0);
        let mut partitions = offsets.iter().filter(|(key, _)| *key != REDRIVEN_KEY).peekable();
        if partitions.peek().is_none() {
            let mut checkpoint = Checkpoint::global(position);
            checkpoint.redriven = redriven;
            return checkpoint;
        }
        let mut checkpoint = Checkpoint::new();
        checkpoint.redriven = redriven;
        for (key, &value) in partitions {
            let token = key
                .strip_suffix(TOKEN_SUFFIX)
                .or_else(|| key.strip_suffix(LEGACY_TOKEN_SUFFIX));
            match token {
                Some(partition) => checkpoint.marks.entry(partition.to_owned()).or_default().token = value,
                None => checkpoint.marks.entry(key.clone()).or_default().next = value,
            }
        }
        checkpoint
    }

    /// The checkpoint a backend keeps as a table's columns: the global
    /// position (a signed SQL integer; below 0 read as 0) and the offsets as
    /// the JSON text of [`to_saved`](Self::to_saved)'s map.
    ///
    /// # Errors
    /// When `offsets` is not that JSON.
    pub fn from_saved_columns(position: i64, offsets: &str) -> Result<Self, serde_json::Error> {
        let offsets: BTreeMap<String, u64> = serde_json::from_str(offsets)?;
        Ok(Checkpoint::from_saved(Position(position.max(0) as u64), &offsets))
    }
}

/// One record read by a [`Follower`].
#[derive(Clone, Debug)]
pub struct Followed {
    /// The partition it was read from.
    pub partition: Arc<str>,
    /// Where the partition's reader stands after it: save this with a state
    /// that reflects the record.
    pub mark: Mark,
    /// What the record is to readers.
    pub record: Record,
}

/// What a record of a log is to its readers.
#[derive(Clone, Debug)]
pub enum Record {
    /// An event of the log.
    Event(Arc<RecordedEvent>),
    /// Part of the log's own protocol, not an event (an ownership claim, an
    /// event of a writer that had been fenced off): passed over by every
    /// reader. The source has reported why.
    Skip,
    /// A record that should be an event and cannot be read as one (not an
    /// envelope, not UTF-8, breaking the log's protocol): every runner sets
    /// it aside in its dead letters.
    Unreadable {
        /// The record as it was read.
        raw: Box<RawRecord>,
        /// Why it is not an event.
        reason: String,
    },
}

impl Record {
    /// The event, if the record is one.
    pub fn event(&self) -> Option<&Arc<RecordedEvent>> {
        match self {
            Record::Event(event) => Some(event),
            _ => None,
        }
    }
}

/// A record as a log holds it, for the records that cannot be read as
/// events: what a dead letter keeps of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawRecord {
    /// Where it is, as the source names places (`topic/partition@offset`
    /// on Kafka).
    pub location: String,
    /// Its key, if it has one.
    pub key: Option<Vec<u8>>,
    /// Its body, if it has one.
    pub body: Option<Vec<u8>>,
    /// Its headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// How far a reader is in one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The next offset the reader will take.
    pub position: u64,
    /// The partition's end (its next offset) as last seen, if seen.
    pub end: Option<u64>,
}

impl PartitionProgress {
    /// How many records the reader is behind the end last seen.
    pub fn lag(&self) -> Option<u64> {
        self.end.map(|end| end.saturating_sub(self.position))
    }
}

/// A log that readers can follow from a checkpoint.
#[async_trait]
pub trait EventSource: Send + Sync + 'static {
    /// Starts reading at `from`.
    ///
    /// # Errors
    /// When the log cannot be reached.
    async fn follow(&self, from: &Checkpoint) -> Result<Box<dyn Follower>, StoreError>;
}

/// A reader of an [`EventSource`], handing out records in each partition's
/// order, every one once.
#[async_trait]
pub trait Follower: Send + 'static {
    /// Waits until `batch` holds at least one record, adding the records
    /// read, up to `max` in all.
    ///
    /// Cancel-safe: a record read is in `batch` before anything else is
    /// awaited, so dropping the future loses nothing if the caller keeps
    /// `batch` (and drains it itself).
    ///
    /// # Errors
    /// Backend failures and [`StoreError::Closed`].
    async fn next_batch(&mut self, batch: &mut Vec<Followed>, max: usize) -> Result<(), StoreError>;

    /// The end (next offset) of each partition as last seen.
    fn ends(&self) -> BTreeMap<String, u64>;
}

/// Follows an [`EventStore`] through its global subscription
/// ([`EventStore::subscribe`]): the partition [`GLOBAL`].
pub struct GlobalLog<S>(pub S);

#[async_trait]
impl<S: EventStore + Clone> EventSource for GlobalLog<S> {
    async fn follow(&self, from: &Checkpoint) -> Result<Box<dyn Follower>, StoreError> {
        let subscription = self.0.subscribe(Position(from.get(GLOBAL).next)).await?;
        Ok(Box::new(GlobalFollower {
            store: self.0.clone(),
            subscription,
            partition: Arc::from(GLOBAL),
            events: Vec::new(),
            end: None,
        }))
    }
}

struct GlobalFollower<S: EventStore> {
    store: S,
    subscription: S::Subscription,
    partition: Arc<str>,
    events: Vec<Arc<RecordedEvent>>,
    end: Option<u64>,
}

#[async_trait]
impl<S: EventStore + Clone> Follower for GlobalFollower<S> {
    async fn next_batch(&mut self, batch: &mut Vec<Followed>, max: usize) -> Result<(), StoreError> {
        let mut full = true;
        if batch.is_empty() {
            self.subscription.next_batch(&mut self.events, max).await?;
            full = self.events.len() >= max;
            batch.extend(self.events.drain(..).map(|event| Followed {
                partition: Arc::clone(&self.partition),
                mark: Mark {
                    next: event.position.0 + 1,
                    token: 0,
                },
                record: Record::Event(event),
            }));
        }
        if !full {
            // Fewer than asked for: the subscription read to the end of
            // the log as it stood, which is the end to report.
            self.end = Some(self.subscription.position().0);
            return Ok(());
        }
        // Behind: the store's head, for the lag; a head that cannot be
        // read now leaves the last one seen.
        if let Ok(head) = self.store.head().await {
            self.end = Some(head.0);
        }
        Ok(())
    }

    fn ends(&self) -> BTreeMap<String, u64> {
        let at = self.subscription.position().0;
        BTreeMap::from([(GLOBAL.to_owned(), self.end.unwrap_or(at).max(at))])
    }
}

#[async_trait]
impl EventSource for crate::store::InMemoryStore {
    async fn follow(&self, from: &Checkpoint) -> Result<Box<dyn Follower>, StoreError> {
        GlobalLog(self.clone()).follow(from).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_saves_and_restores_offsets_and_tokens() {
        let mut checkpoint = Checkpoint::new();
        checkpoint.set("books/0", Mark { next: 12, token: 3 });
        checkpoint.set("books/1", Mark { next: 7, token: 0 });
        let (position, offsets) = checkpoint.to_saved();
        assert_eq!(position, Position(0));
        assert_eq!(offsets.get("books/0:token"), Some(&3));
        assert!(!offsets.contains_key("books/1:token"));
        let restored = Checkpoint::from_saved(position, &offsets);
        assert_eq!(restored.get("books/0"), Mark { next: 12, token: 3 });
        assert_eq!(restored.get("books/1"), Mark { next: 7, token: 0 });
        assert_eq!(restored.get("books/2"), Mark::default());
    }

    #[test]
    fn a_checkpoint_saved_with_epochs_by_earlier_versions_still_loads() {
        let offsets = BTreeMap::from([
            ("books/0".to_owned(), 12),
            ("books/0:epoch".to_owned(), 3),
            ("books/1".to_owned(), 7),
        ]);
        let restored = Checkpoint::from_saved(Position(19), &offsets);
        assert_eq!(restored.get("books/0"), Mark { next: 12, token: 3 });
        assert_eq!(restored.get("books/1"), Mark { next: 7, token: 0 });
    }

    #[test]
    fn a_global_checkpoint_is_its_position() {
        let checkpoint = Checkpoint::global(Position(42));
        assert_eq!(checkpoint.to_saved(), (Position(42), BTreeMap::new()));
        assert_eq!(
            Checkpoint::from_saved(Position(42), &BTreeMap::new()).get(GLOBAL).next,
            42
        );
        assert!(checkpoint.reached(&BTreeMap::from([(GLOBAL.to_owned(), 42)])));
        assert!(!checkpoint.reached(&BTreeMap::from([(GLOBAL.to_owned(), 43)])));
    }

    #[test]
    fn the_last_redrive_ticket_is_saved_beside_the_partitions() {
        let mut global = Checkpoint::global(Position(42));
        global.set_redriven(7);
        let (position, offsets) = global.to_saved();
        assert_eq!(offsets, BTreeMap::from([("@redriven".to_owned(), 7)]));
        assert_eq!(Checkpoint::from_saved(position, &offsets), global);
        let mut topic = Checkpoint::new();
        topic.set("books/0", Mark { next: 12, token: 3 });
        topic.set_redriven(2);
        let (position, offsets) = topic.to_saved();
        assert_eq!(Checkpoint::from_saved(position, &offsets), topic);
        assert!(!topic.is_start());
        assert!(Checkpoint::new().is_start() && !global.is_start());
    }
}
