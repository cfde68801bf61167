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

/// A dead letter as a store that keeps them lists it.
#[derive(Clone, Debug)]
pub struct KeptDeadLetter {
    /// Its number in the store, in the order letters were set aside.
    pub id: u64,
    /// When it was set aside.
    pub set_aside_at: chrono::DateTime<chrono::Utc>,
    /// The letter.
    pub letter: DeadLetter,
}

impl KeptDeadLetter {
    /// The letter a row of a store's table holds: numbered `id`, set aside
    /// at `set_aside_at` by runner `projection`, found at `location`, for
    /// `reason`, its record in `columns`. Why not, when the columns do not
    /// read.
    pub fn from_row(
        id: u64,
        set_aside_at: chrono::DateTime<chrono::Utc>,
        projection: String,
        location: String,
        reason: String,
        columns: RecordColumns,
    ) -> Result<Self, String> {
        let record = columns.into_record(&location)?;
        Ok(KeptDeadLetter {
            id,
            set_aside_at,
            letter: DeadLetter {
                projection,
                location,
                record,
                reason,
            },
        })
    }
}

/// A dead letter's record as a table keeps it, the one form every store
/// that keeps letters in columns writes and reads: an event as its
/// envelope's JSON; a record that was no event as its key, body and headers
/// (a JSON list of `[name, value in hex]` pairs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordColumns {
    /// The event's envelope, when it was an event.
    pub event: Option<String>,
    /// Else the record's key,
    pub key: Option<Vec<u8>>,
    /// its body,
    pub body: Option<Vec<u8>>,
    /// and its headers.
    pub headers: Option<String>,
}

impl RecordColumns {
    /// The columns of `record`.
    pub fn of(record: &Poison) -> Self {
        match record {
            Poison::Event(event) => RecordColumns {
                event: Some(event.to_json()),
                ..RecordColumns::default()
            },
            Poison::Raw(raw) => {
                let headers: Vec<(&str, String)> = raw
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.iter().map(|b| format!("{b:02x}")).collect()))
                    .collect();
                RecordColumns {
                    event: None,
                    key: raw.key.clone(),
                    body: raw.body.clone(),
                    headers: Some(serde_json::to_string(&headers).expect("pairs of strings always serialize")),
                }
            }
        }
    }

    /// The record the columns hold, found at `location`; why not, when they
    /// do not read.
    pub fn into_record(self, location: &str) -> Result<Poison, String> {
        if let Some(event) = self.event {
            let event = RecordedEvent::from_json(&event).map_err(|e| format!("its event does not read: {e}"))?;
            return Ok(Poison::Event(Arc::new(event)));
        }
        let pairs: Vec<(String, String)> = match &self.headers {
            Some(headers) => serde_json::from_str(headers).map_err(|e| format!("its headers do not read: {e}"))?,
            None => Vec::new(),
        };
        let headers = pairs
            .into_iter()
            .map(|(name, hex)| match from_hex(&hex) {
                Some(value) => Ok((name, value)),
                None => Err(format!("its header {name} is not hex")),
            })
            .collect::<Result<_, String>>()?;
        Ok(Poison::Raw(Box::new(RawRecord {
            location: location.to_owned(),
            key: self.key,
            body: self.body,
            headers,
        })))
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
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

/// A shared sink is a sink: a store's letters behind an `Arc<dyn
/// DeadLetters>`, say.
#[async_trait]
impl<T: DeadLetters + ?Sized> DeadLetters for Arc<T> {
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError> {
        (**self).put(letter).await
    }
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
