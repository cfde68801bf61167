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
    /// When it was set aside (or last put back, when a re-drive failed).
    pub set_aside_at: chrono::DateTime<chrono::Utc>,
    /// Its re-drive ticket, while it waits for its runner to take it: see
    /// [`DeadLetters::redrive`].
    pub ticket: Option<u64>,
    /// The letter.
    pub letter: DeadLetter,
}

impl KeptDeadLetter {
    /// The letter a row of a store's table holds: numbered `id`, set aside
    /// at `set_aside_at`, queued for re-drive with `ticket`, by runner `projection`, found at `location`, for
    /// `reason`, its record in `columns`. Why not, when the columns do not
    /// read.
    pub fn from_row(
        id: u64,
        set_aside_at: chrono::DateTime<chrono::Utc>,
        ticket: Option<u64>,
        projection: String,
        location: String,
        reason: String,
        columns: RecordColumns,
    ) -> Result<Self, String> {
        let record = columns.into_record(&location)?;
        Ok(KeptDeadLetter {
            id,
            set_aside_at,
            ticket,
            letter: DeadLetter {
                projection,
                location,
                record,
                reason,
            },
        })
    }
}

impl KeptDeadLetter {
    /// The letter as its runner takes it back, if it waits in the re-drive
    /// queue with a ticket above `after`.
    pub fn queued_after(self, after: u64) -> Option<Redriven> {
        let ticket = self.ticket.filter(|&ticket| ticket > after)?;
        Some(Redriven {
            ticket,
            id: self.id,
            letter: self.letter,
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

/// Which of a runner's dead letters to re-drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redrive {
    /// The letter with this number.
    Letter(u64),
    /// Every letter of the runner not already waiting to be re-driven.
    All,
}

/// A dead letter its runner takes to apply again.
#[derive(Clone, Debug)]
pub struct Redriven {
    /// Its place in the re-drive order.
    pub ticket: u64,
    /// Its number in the store.
    pub id: u64,
    /// The letter.
    pub letter: DeadLetter,
}

/// Where a runner sets aside what it cannot apply, and, for a sink that
/// keeps a re-drive queue, where it takes back the letters an operator
/// re-drives once the fix is deployed.
///
/// **Re-drive.** [`redrive`](Self::redrive) gives letters a ticket, in
/// increasing order: the order the re-drives were asked, and within one
/// request the order the letters were set aside. The runner polls its
/// letters with tickets above the one its checkpoint has reached
/// ([`queued`](Self::queued)), decodes each with the code now running,
/// applies those that decode, in ticket order, after every event it had
/// applied before, and saves its state with a checkpoint that carries the
/// last ticket ([`crate::Checkpoint::redriven`]); then it
/// [`forget`](Self::forget)s them. So a re-driven event is applied exactly
/// once: a crash before the save applies it again from the queue onto the
/// state saved without it; after the save, the checkpoint passes over it.
/// A letter that still fails is [`put_back`](Self::put_back) with the new
/// reason, out of the queue.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Takes one dead letter.
    ///
    /// # Errors
    /// When it cannot keep the letter; the runner then stops rather than
    /// lose it (a restart reads it again).
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError>;

    /// The letters kept, in the order set aside: every runner's, or
    /// `runner`'s only.
    ///
    /// # Errors
    /// When the sink cannot list them (the default: a sink that only takes
    /// letters), or fails.
    async fn kept_letters(&self, runner: Option<&str>) -> Result<Vec<KeptDeadLetter>, StoreError> {
        let _ = runner;
        Err(StoreError::Backend(
            "these dead letters are kept where they cannot be listed".into(),
        ))
    }

    /// Whether the sink keeps a re-drive queue (false by default): runners
    /// poll only those that do.
    fn redrives(&self) -> bool {
        false
    }

    /// Queues `which` of `runner`'s letters for re-drive and returns how
    /// many it queued (a letter already queued keeps its ticket).
    ///
    /// # Errors
    /// When the sink keeps no queue (the default), when there is no such
    /// letter of the runner, or when the sink fails.
    async fn redrive(&self, runner: &str, which: Redrive) -> Result<usize, StoreError> {
        let _ = which;
        Err(StoreError::Backend(
            format!("the dead letters of {runner} are kept where they cannot be re-driven").into(),
        ))
    }

    /// `runner`'s letters queued with a ticket above `after`, in ticket
    /// order (none by default).
    ///
    /// # Errors
    /// When the sink fails; the runner then stops.
    async fn queued(&self, runner: &str, after: u64) -> Result<Vec<Redriven>, StoreError> {
        let _ = (runner, after);
        Ok(Vec::new())
    }

    /// Letter `id`, re-driven, failed again: it leaves the queue and is
    /// kept with the new `reason`.
    ///
    /// # Errors
    /// When the sink fails; the runner then stops.
    async fn put_back(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        let _ = (id, reason);
        Ok(())
    }

    /// What `runner` no longer needs: with `Some(ticket)`, its letters
    /// re-driven with tickets up to `ticket` (its saved state holds them);
    /// with `None`, all its letters (it starts from the start of the log,
    /// and sets aside again what it still cannot apply).
    ///
    /// # Errors
    /// When the sink fails; the runner then stops.
    async fn forget(&self, runner: &str, through: Option<u64>) -> Result<(), StoreError> {
        let _ = (runner, through);
        Ok(())
    }
}

/// A shared sink is a sink: a store's letters behind an `Arc<dyn
/// DeadLetters>`, say.
#[async_trait]
impl<T: DeadLetters + ?Sized> DeadLetters for Arc<T> {
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError> {
        (**self).put(letter).await
    }

    async fn kept_letters(&self, runner: Option<&str>) -> Result<Vec<KeptDeadLetter>, StoreError> {
        (**self).kept_letters(runner).await
    }

    fn redrives(&self) -> bool {
        (**self).redrives()
    }

    async fn redrive(&self, runner: &str, which: Redrive) -> Result<usize, StoreError> {
        (**self).redrive(runner, which).await
    }

    async fn queued(&self, runner: &str, after: u64) -> Result<Vec<Redriven>, StoreError> {
        (**self).queued(runner, after).await
    }

    async fn put_back(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        (**self).put_back(id, reason).await
    }

    async fn forget(&self, runner: &str, through: Option<u64>) -> Result<(), StoreError> {
        (**self).forget(runner, through).await
    }
}

/// Dead letters kept in memory, for tests and the embedded default, with a
/// re-drive queue. Cloning gives another handle to the same letters.
#[derive(Clone, Debug, Default)]
pub struct InMemoryDeadLetters {
    kept: Arc<Mutex<Kept>>,
}

#[derive(Debug, Default)]
struct Kept {
    letters: Vec<KeptDeadLetter>,
    /// The last number and the last ticket given.
    last_id: u64,
    last_ticket: u64,
}

impl InMemoryDeadLetters {
    /// No letters yet.
    pub fn new() -> Self {
        InMemoryDeadLetters::default()
    }

    /// The letters kept, in the order set aside.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.kept().into_iter().map(|kept| kept.letter).collect()
    }

    /// The letters kept, numbered, in the order set aside.
    pub fn kept(&self) -> Vec<KeptDeadLetter> {
        self.lock().letters.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl DeadLetters for InMemoryDeadLetters {
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError> {
        let mut kept = self.lock();
        kept.last_id += 1;
        let id = kept.last_id;
        kept.letters.push(KeptDeadLetter {
            id,
            set_aside_at: chrono::Utc::now(),
            ticket: None,
            letter,
        });
        Ok(())
    }

    async fn kept_letters(&self, runner: Option<&str>) -> Result<Vec<KeptDeadLetter>, StoreError> {
        let mut kept = self.kept();
        kept.retain(|k| runner.is_none_or(|r| r == k.letter.projection));
        Ok(kept)
    }

    fn redrives(&self) -> bool {
        true
    }

    async fn redrive(&self, runner: &str, which: Redrive) -> Result<usize, StoreError> {
        let mut kept = self.lock();
        let Kept {
            letters, last_ticket, ..
        } = &mut *kept;
        let mut queued = 0;
        for letter in letters.iter_mut() {
            let chosen = match which {
                Redrive::Letter(id) => letter.id == id,
                Redrive::All => true,
            };
            if chosen && letter.letter.projection == runner && letter.ticket.is_none() {
                *last_ticket += 1;
                letter.ticket = Some(*last_ticket);
                queued += 1;
            }
        }
        if let Redrive::Letter(id) = which {
            if !letters.iter().any(|l| l.id == id && l.letter.projection == runner) {
                return Err(StoreError::Backend(format!("no dead letter {id} of {runner}").into()));
            }
        }
        Ok(queued)
    }

    async fn queued(&self, runner: &str, after: u64) -> Result<Vec<Redriven>, StoreError> {
        let mut queued: Vec<Redriven> = self
            .lock()
            .letters
            .iter()
            .filter(|kept| kept.letter.projection == runner)
            .filter_map(|kept| kept.clone().queued_after(after))
            .collect();
        queued.sort_by_key(|redriven| redriven.ticket);
        Ok(queued)
    }

    async fn put_back(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        if let Some(kept) = self.lock().letters.iter_mut().find(|kept| kept.id == id) {
            kept.ticket = None;
            kept.set_aside_at = chrono::Utc::now();
            reason.clone_into(&mut kept.letter.reason);
        }
        Ok(())
    }

    async fn forget(&self, runner: &str, through: Option<u64>) -> Result<(), StoreError> {
        self.lock().letters.retain(|kept| {
            let forgotten = match through {
                Some(through) => kept.ticket.is_some_and(|ticket| ticket <= through),
                None => true,
            };
            !(kept.letter.projection == runner && forgotten)
        });
        Ok(())
    }
}
