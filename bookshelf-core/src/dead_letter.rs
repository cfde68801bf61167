//! Dead letters: the events a runner could not decode, and the records of a
//! log it could not read as events, set aside with the reason instead of
//! being dropped or stopping the runner.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::envelope::RecordedEvent;
use crate::source::RawRecord;
use crate::store::StoreError;

/// What a dead letter holds.
#[derive(Clone, Debug)]
pub enum Poison {
    /// An event as stored, which its reader could not decode (bad payload,
    /// a schema version newer than the code, an unknown type).
    Event(Arc<RecordedEvent>),
    /// A record that is not an event at all, as the log held it.
    Raw(Box<RawRecord>),
}

impl Poison {
    /// The event, when the letter holds one.
    pub fn event(&self) -> Option<&RecordedEvent> {
        match self {
            Poison::Event(event) => Some(event),
            Poison::Raw(_) => None,
        }
    }
}

/// An event or record a runner could not apply, set aside.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The runner's name.
    pub projection: String,
    /// Where it was in the log: `position N` in a log with one global order,
    /// `PARTITION@OFFSET` (`topic/partition@offset` on Kafka) otherwise.
    pub location: String,
    /// What was set aside.
    pub record: Poison,
    /// Why it was set aside.
    pub reason: String,
}

/// Where a runner sets aside what it cannot apply.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Takes one dead letter.
    ///
    /// # Errors
    /// When it cannot keep the letter; the runner then stops rather than
    /// lose it (a restart reads it again).
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError>;
}

/// Dead letters kept in memory, for tests and the embedded default. Cloning
/// gives another handle to the same letters.
#[derive(Clone, Debug, Default)]
pub struct InMemoryDeadLetters {
    letters: Arc<Mutex<Vec<DeadLetter>>>,
}

impl InMemoryDeadLetters {
    /// No letters yet.
    pub fn new() -> Self {
        InMemoryDeadLetters::default()
    }

    /// The letters so far.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl DeadLetters for InMemoryDeadLetters {
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.letters.lock().unwrap_or_else(|p| p.into_inner()).push(letter);
        Ok(())
    }
}
