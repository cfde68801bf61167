//! The one follow loop that every reader of a log runs on, and the one
//! handle to what it folds.
//!
//! A [`Runner`] reads an [`EventSource`] from a saved [`Checkpoint`], in
//! batches, and hands the events of each batch to a [`Fold`]: a view in
//! memory ([`ProjectionRunner`](crate::ProjectionRunner)), rows of SQL
//! tables (`TableProjection`, in `bookshelf-sqlite`), a process manager
//! ([`ProcessRunner`](crate::ProcessRunner)) or a change feed
//! ([`ChangeFeed`](crate::change::ChangeFeed)). What every reader must do
//! lives here, once:
//!
//! * **Which records count.** A record at or before the checkpoint of its
//!   partition is passed over, so a source that delivers a record twice
//!   cannot have it applied twice. Records the source marks
//!   [`Record::Skip`] move the checkpoint and nothing else.
//! * **Which events a fold sees.** Events of other categories (see
//!   [`Runner::only_categories`]) and of types the fold's codec does not
//!   know are passed over ([`UnknownEvents`]); events that do not decode,
//!   and records the source could not read as events, are set aside in the
//!   runner's [`DeadLetters`] with the reason, and the runner goes on. The
//!   checkpoint moves past a dead letter only once the sink has taken it.
//! * **The checkpoint goes with the state.** A fold saves its state together
//!   with the checkpoint it reflects, so that after a crash every event is
//!   reflected exactly once.
//! * **Dead letters come back once.** Letters an operator re-drives (see
//!   [`DeadLetters`]) are taken between batches, polled every second (see
//!   [`Runner::redrive_every`]), decoded with the code now running, and
//!   handed to the fold as one batch after every event it had applied, in
//!   the order the re-drives were asked; the fold saves that batch at once,
//!   with a checkpoint that carries the last ticket, so each is applied
//!   exactly once. One that still does not decode is put back with the new
//!   reason. A runner that starts from the start of the log forgets its
//!   letters first: it reads, and sets aside again, what they held.
//! * **Progress and waiting.** The runner reports its position and each
//!   partition's end after every batch, to its [`Handle`] and to the
//!   metrics ([`crate::telemetry`]).
//!
//! Every runner hands out the same [`Handle`]: [`progress`](Handle::progress),
//! [`wait_for`](Handle::wait_for), [`failure`](Handle::failure), and what it
//! folds (a view to [`read`](ViewState::read), tables to query).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::codec::{DecodeError, DomainEvent, EventCodec};
use crate::dead_letter::{DeadLetter, DeadLetters, InMemoryDeadLetters, Poison, Redriven};
use crate::envelope::{Envelope, Position, RecordedEvent};
use crate::projection::ProjectionError;
use crate::source::{Checkpoint, EventSource, Mark, PartitionProgress, Record, GLOBAL};

/// An event decoded for a [`Fold`], with where its partition's reader
/// stands after it.
#[derive(Debug)]
pub struct Decoded<E> {
    /// The event.
    pub event: Envelope<E>,
    /// The event as stored (its payload as JSON).
    pub record: Arc<RecordedEvent>,
    /// The partition it was read from (for a re-driven dead letter, the
    /// log's global partition, whatever it was read from).
    pub partition: Arc<str>,
    /// The partition's mark after it (for a re-driven dead letter, the
    /// default: it moves no partition). Move a checkpoint past the event
    /// with [`advance`](Self::advance), which knows both kinds.
    pub mark: Mark,
    /// The re-drive ticket of a dead letter re-driven; `None` for an event
    /// read from the log.
    pub ticket: Option<u64>,
}

impl<E> Decoded<E> {
    /// Moves `at` past this event: its partition to its mark, or, for a
    /// re-driven dead letter, the re-drive queue past its ticket.
    pub fn advance(&self, at: &mut Checkpoint) {
        match self.ticket {
            Some(ticket) => at.set_redriven(ticket),
            None => at.set(&self.partition, self.mark),
        }
    }

    /// Whether `at` is already past this event (the rule
    /// [`advance`](Self::advance) moves by).
    pub fn is_before(&self, at: &Checkpoint) -> bool {
        match self.ticket {
            Some(ticket) => ticket <= at.redriven(),
            None => self.mark.next <= at.get(&self.partition).next,
        }
    }
}

/// One batch for a [`Fold`].
#[derive(Debug)]
pub struct Batch<'a, E> {
    /// The events of the batch that are for the fold, in the order read;
    /// the fold takes them (drains the vector).
    pub events: &'a mut Vec<Decoded<E>>,
    /// The checkpoint after the whole batch, past the records that were
    /// not for the fold too.
    pub to: &'a Checkpoint,
    /// How many records the batch moved the checkpoint over.
    pub records: usize,
    /// Whether the runner has read every partition to its end as last seen.
    pub caught_up: bool,
    /// Whether the fold must save its state with `to` before it returns
    /// (and fail if it cannot): set for a batch of re-driven dead letters,
    /// which leave their queue once it returns.
    pub save: bool,
}

/// What a [`Runner`] folds a log into, and how it saves what it folded
/// together with its checkpoint.
#[async_trait]
pub trait Fold: Send + 'static {
    /// The events it takes; other types in the log are passed over (or
    /// dead-lettered, see [`UnknownEvents`]).
    type Event: DomainEvent;
    /// What its [`Handle`] gives readers: the state to query.
    type Reads: Clone + Send + Sync + 'static;

    /// The read side, for handles.
    fn reads(&self) -> Self::Reads;

    /// Loads what was saved, once, before the runner reads anything, and
    /// returns the checkpoint it reflects ([`Checkpoint::new`] for nothing).
    ///
    /// # Errors
    /// What stops the runner before it starts: a store that fails, a saved
    /// state that no longer decodes.
    async fn restore(&mut self) -> Result<Checkpoint, ProjectionError>;

    /// Takes one batch. When it returns, its state reflects every event of
    /// the batch; it saves that state with `batch.to` as its policy says.
    ///
    /// # Errors
    /// What stops the runner; the events not saved are read again after a
    /// restart.
    async fn apply(&mut self, batch: Batch<'_, Self::Event>) -> Result<(), ProjectionError>;

    /// Called at every tick of the runner (see [`Runner::tick_every`]), with
    /// the checkpoint its state reflects.
    ///
    /// # Errors
    /// What stops the runner.
    async fn tick(&mut self, at: &Checkpoint) -> Result<(), ProjectionError> {
        let _ = at;
        Ok(())
    }

    /// Called once when the runner is asked to stop: saves the state with
    /// `at`, the checkpoint it reflects.
    ///
    /// # Errors
    /// What failed the last save.
    async fn stop(&mut self, at: &Checkpoint) -> Result<(), ProjectionError>;
}

/// What a runner does with events of types its fold does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownEvents {
    /// Pass over them: the log is shared with other aggregates' events.
    #[default]
    Skip,
    /// Treat them as poison: dead-letter them. For a source that should
    /// carry only the fold's events.
    DeadLetter,
}

/// Follows an [`EventSource`] into a [`Fold`]. See the [module docs](self).
pub struct Runner<F: Fold, S> {
    source: S,
    pub(crate) fold: F,
    rules: Rules<F::Event>,
    batch_size: usize,
    tick: Option<Duration>,
    redrive_every: Duration,
}

/// Which records a runner hands its fold, and where it sets the others
/// aside: apart from the fold, so that a fold need not be shared across
/// threads.
struct Rules<E> {
    name: String,
    codec: EventCodec<E>,
    dead_letters: Arc<dyn DeadLetters>,
    unknown: UnknownEvents,
    categories: Vec<String>,
}

impl<F: Fold, S: EventSource> Runner<F, S> {
    /// Runner `name` (in logs, metrics and dead letters) of `fold` over
    /// `source`: batches of up to 512 records, unknown event types passed
    /// over, dead letters kept in memory, no tick.
    pub fn folding(name: impl Into<String>, source: S, fold: F) -> Self {
        Runner {
            source,
            fold,
            rules: Rules {
                name: name.into(),
                codec: EventCodec::new(),
                dead_letters: Arc::new(InMemoryDeadLetters::new()),
                unknown: UnknownEvents::Skip,
                categories: Vec::new(),
            },
            batch_size: 512,
            tick: None,
            redrive_every: Duration::from_secs(1),
        }
    }

    /// The runner's name.
    pub fn name(&self) -> &str {
        &self.rules.name
    }

    /// Reads up to this many records at a time (default 512).
    #[must_use]
    pub fn batch_size(mut self, records: usize) -> Self {
        self.batch_size = records.max(1);
        self
    }

    /// Sets aside the events that do not decode, and the records that are
    /// not events, here (default: in memory).
    #[must_use]
    pub fn dead_letters(mut self, sink: impl DeadLetters) -> Self {
        self.rules.dead_letters = Arc::new(sink);
        self
    }

    /// What to do with events of types the fold does not know.
    #[must_use]
    pub fn unknown_events(mut self, policy: UnknownEvents) -> Self {
        self.rules.unknown = policy;
        self
    }

    /// Only events of streams in these categories (see
    /// [`crate::StreamId::category`]); by default, every category.
    #[must_use]
    pub fn only_categories<T: Into<String>>(mut self, categories: impl IntoIterator<Item = T>) -> Self {
        self.rules.categories = categories.into_iter().map(Into::into).collect();
        self
    }

    /// Only events of streams in this category.
    #[must_use]
    pub fn only_category(self, category: impl Into<String>) -> Self {
        self.only_categories([category.into()])
    }

    /// Calls [`Fold::tick`] this often.
    #[must_use]
    pub fn tick_every(mut self, every: Duration) -> Self {
        self.tick = Some(every);
        self
    }

    /// Looks for re-driven dead letters this often (default every second),
    /// when its dead letters keep a re-drive queue.
    #[must_use]
    pub fn redrive_every(mut self, every: Duration) -> Self {
        self.redrive_every = every.max(Duration::from_millis(1));
        self
    }

    /// Starts the runner as a task on the current tokio runtime.
    #[must_use = "dropping the running runner leaves its task running with no way to stop it"]
    pub fn start(self) -> Running<F::Reads> {
        let (progress, watched) = watch::channel(Status::default());
        let (stop, stopped) = watch::channel(false);
        let (status, name) = (watched.clone(), self.rules.name.clone());
        crate::report::register(
            &self.rules.name,
            Box::new(move || {
                // A runner whose task has ended leaves the list, unless it failed.
                let ended = status.has_changed().is_err();
                let status = status.borrow();
                (!ended || matches!(status.state, State::Failed(_))).then(|| status.report(&name))
            }),
            Arc::clone(&self.rules.dead_letters),
        );
        let handle = Handle {
            reads: self.fold.reads(),
            status: watched,
        };
        Running {
            handle,
            stop,
            task: tokio::spawn(self.run(progress, stopped)),
        }
    }

    async fn run(
        mut self,
        progress: watch::Sender<Status>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let result = self.follow(&progress, &mut stop).await;
        tracing::info!(runner = %self.rules.name, ok = result.is_ok(), "runner stopped");
        progress.send_modify(|status| {
            status.state = match &result {
                Ok(()) => State::Stopped,
                Err(error) => State::Failed(error.to_string()),
            }
        });
        result
    }

    async fn follow(
        &mut self,
        progress: &watch::Sender<Status>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let mut checkpoint = self.fold.restore().await?;
        let mut follower = self.source.follow(&checkpoint).await?;
        tracing::info!(runner = %self.rules.name, checkpoint = ?checkpoint, "runner started");
        crate::telemetry::dead_letters_known(&self.rules.name);
        let redrives = self.rules.dead_letters.redrives();
        if redrives {
            // From the start, every letter is read again; else those
            // re-driven into the saved state are done with.
            let through = (!checkpoint.is_start()).then(|| checkpoint.redriven());
            self.rules.dead_letters.forget(&self.rules.name, through).await?;
        }
        self.report(progress, &checkpoint, follower.ends());
        let mut ticks = self.tick.map(interval);
        let mut redrive_polls = redrives.then(|| interval(self.redrive_every));
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut decoded = Vec::with_capacity(self.batch_size);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                () = tick(&mut ticks) => {
                    self.fold.tick(&checkpoint).await?;
                    continue;
                }
                () = tick(&mut redrive_polls) => {
                    self.redrive(progress, &mut checkpoint, follower.ends()).await?;
                    // A whole period for the log before the next look, however
                    // long this one took.
                    if let Some(polls) = &mut redrive_polls {
                        polls.reset();
                    }
                    continue;
                }
                next = follower.next_batch(&mut batch, self.batch_size) => next?,
            }
            let mut to = Advance::from(checkpoint.clone());
            let mut records = 0;
            for followed in batch.drain(..) {
                if followed.mark.next <= to.next(&followed.partition) {
                    continue; // read before the checkpoint: never twice
                }
                to.set(followed.mark);
                records += 1;
                match followed.record {
                    Record::Event(record) => match self.rules.decode(&record) {
                        Ok(Some(event)) => decoded.push(Decoded {
                            event,
                            record,
                            partition: followed.partition,
                            mark: followed.mark,
                            ticket: None,
                        }),
                        Ok(None) => {}
                        Err(error) => {
                            let reason = error.to_string();
                            self.rules.set_aside_event(&followed.partition, record, error).await?;
                            Self::set_aside(progress, reason);
                        }
                    },
                    Record::Skip => {}
                    Record::Unreadable { raw, reason } => {
                        tracing::warn!(runner = %self.rules.name, at = %raw.location, %reason, "unreadable record set aside");
                        self.rules
                            .set_aside(raw.location.clone(), Poison::Raw(raw), reason.clone())
                            .await?;
                        Self::set_aside(progress, reason);
                    }
                }
            }
            let to = to.done();
            let ends = follower.ends();
            let caught_up = to.reached(&ends);
            self.fold
                .apply(Batch {
                    events: &mut decoded,
                    to: &to,
                    records,
                    caught_up,
                    save: false,
                })
                .await?;
            decoded.clear();
            checkpoint = to;
            self.report(progress, &checkpoint, ends);
        }
        self.fold.stop(&checkpoint).await
    }

    /// Applies the letters re-driven since the checkpoint, if any, as one
    /// batch saved at once; puts back those that still fail.
    async fn redrive(
        &mut self,
        progress: &watch::Sender<Status>,
        checkpoint: &mut Checkpoint,
        ends: BTreeMap<String, u64>,
    ) -> Result<(), ProjectionError> {
        let sink = Arc::clone(&self.rules.dead_letters);
        let queued = match sink.queued(&self.rules.name, checkpoint.redriven()).await {
            Ok(queued) => queued,
            // Nothing taken, nothing lost: the next look asks again.
            Err(error) => {
                tracing::warn!(runner = %self.rules.name, %error, "cannot look at the re-drive queue now");
                return Ok(());
            }
        };
        let Some(last) = queued.last().map(|redriven| redriven.ticket) else {
            return Ok(());
        };
        let mut decoded = Vec::with_capacity(queued.len());
        for Redriven { ticket, id, letter } in queued {
            let reason = match letter.record {
                Poison::Event(record) => match self.rules.decode(&record) {
                    Ok(Some(event)) => {
                        decoded.push(Decoded {
                            event,
                            record,
                            partition: Arc::from(GLOBAL),
                            mark: Mark::default(),
                            ticket: Some(ticket),
                        });
                        continue;
                    }
                    // No longer for the fold (its codec skips the type now).
                    Ok(None) => continue,
                    Err(error) => error.to_string(),
                },
                Poison::Raw(_) => format!("a record that is not an event is not re-driven; {}", letter.reason),
            };
            tracing::warn!(runner = %self.rules.name, letter = id, %reason, "re-driven dead letter put back");
            crate::telemetry::dead_letter(&self.rules.name);
            sink.put_back(id, &reason).await?;
            Self::set_aside(progress, reason);
        }
        let applied = decoded.len() as u64;
        let mut to = checkpoint.clone();
        to.set_redriven(last);
        self.fold
            .apply(Batch {
                events: &mut decoded,
                to: &to,
                records: 0,
                caught_up: to.reached(&ends),
                save: true,
            })
            .await?;
        // Saved with the state: the queue is done with them.
        sink.forget(&self.rules.name, Some(last)).await?;
        tracing::info!(runner = %self.rules.name, applied, through = last, "dead letters re-driven");
        *checkpoint = to;
        progress.send_modify(|status| status.redriven += applied);
        self.report(progress, checkpoint, ends);
        Ok(())
    }

    fn report(&self, to: &watch::Sender<Status>, checkpoint: &Checkpoint, ends: BTreeMap<String, u64>) {
        to.send_modify(|status| {
            if status.checkpoint != *checkpoint {
                // Restored at the start is not moving.
                if status.state != State::Starting {
                    status.moved_at = Some(chrono::Utc::now());
                }
                status.checkpoint = checkpoint.clone();
            }
            status.ends = ends;
            status.state = State::Running;
            crate::telemetry::progress(&self.rules.name, &status.partitions());
        });
    }

    /// Counts a record set aside, for [`Status`].
    fn set_aside(to: &watch::Sender<Status>, reason: String) {
        to.send_modify(|status| {
            status.set_aside += 1;
            status.last_set_aside = Some(reason);
        });
    }
}

impl<E: DomainEvent> Rules<E> {
    /// The event for the fold, `None` when it is not for it, or set aside.
    /// The event for the fold; `Ok(None)` when it is not for it (another
    /// category, a type it does not know and skips); `Err` when it is
    /// poison: the caller sets it aside. Not async, so that the common case
    /// costs no future per event.
    fn decode(&self, record: &RecordedEvent) -> Result<Option<Envelope<E>>, DecodeError> {
        if !self.categories.is_empty() && !self.categories.iter().any(|c| c == record.stream_id.category()) {
            return Ok(None);
        }
        match self.codec.decode_envelope(record) {
            Ok(event) => Ok(Some(event)),
            Err(DecodeError::UnknownEventType { .. })
                if self.unknown == UnknownEvents::Skip && !self.codec.knows(&record.event_type) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Sets aside `record`, an event of `partition` that [`decode`](Self::decode)
    /// found poison.
    async fn set_aside_event(
        &self,
        partition: &str,
        record: Arc<RecordedEvent>,
        error: DecodeError,
    ) -> Result<(), ProjectionError> {
        let at = location(partition, record.position);
        tracing::warn!(
            runner = %self.name,
            stream = %record.stream_id,
            version = %record.version,
            %at,
            event_type = %record.event_type,
            %error,
            "poison event set aside"
        );
        self.set_aside(at, Poison::Event(record), error.to_string()).await
    }

    async fn set_aside(&self, location: String, record: Poison, reason: String) -> Result<(), ProjectionError> {
        crate::telemetry::dead_letter(&self.name);
        self.dead_letters
            .put(DeadLetter {
                projection: self.name.clone(),
                location,
                record,
                reason,
            })
            .await?;
        Ok(())
    }
}

/// A checkpoint moving over a batch, with the mark of the partition in hand
/// kept aside: the records of a batch mostly come from one partition in a
/// row (always, from a log with one global order), so the map is looked up
/// and written only when the partition changes.
struct Advance {
    checkpoint: Checkpoint,
    /// The partition in hand and its mark, not yet written to `checkpoint`.
    in_hand: Option<(Arc<str>, Mark)>,
}

impl From<Checkpoint> for Advance {
    fn from(checkpoint: Checkpoint) -> Self {
        Advance {
            checkpoint,
            in_hand: None,
        }
    }
}

impl Advance {
    /// The next offset of `partition`, which becomes the partition in hand.
    fn next(&mut self, partition: &Arc<str>) -> u64 {
        match &self.in_hand {
            Some((hand, mark)) if Arc::ptr_eq(hand, partition) || **hand == **partition => mark.next,
            _ => {
                if let Some((hand, mark)) = self.in_hand.take() {
                    self.checkpoint.set(&hand, mark);
                }
                let mark = self.checkpoint.get(partition);
                self.in_hand = Some((Arc::clone(partition), mark));
                mark.next
            }
        }
    }

    /// Moves the partition in hand (the one [`next`](Self::next) last
    /// named) to `mark`.
    fn set(&mut self, mark: Mark) {
        if let Some((_, at)) = &mut self.in_hand {
            *at = mark;
        }
    }

    /// The checkpoint after the batch.
    fn done(mut self) -> Checkpoint {
        if let Some((hand, mark)) = self.in_hand.take() {
            self.checkpoint.set(&hand, mark);
        }
        self.checkpoint
    }
}

/// Where an event of `partition` at `position` is, for reports.
fn location(partition: &str, position: Position) -> String {
    if partition == GLOBAL {
        format!("position {position}")
    } else {
        format!("{partition}@{position}")
    }
}

/// Ticks every `every`, later when a tick is late.
fn interval(every: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// The next tick, or never without ticks.
async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// How far a runner has read, and whether it still runs.
#[derive(Clone, Debug, Default)]
struct Status {
    checkpoint: Checkpoint,
    ends: BTreeMap<String, u64>,
    state: State,
    /// When the checkpoint last moved.
    moved_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How many records were set aside, and why the last one was.
    set_aside: u64,
    last_set_aside: Option<String>,
    /// How many re-driven dead letters it applied.
    redriven: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum State {
    /// Restoring its state; nothing read yet.
    #[default]
    Starting,
    Running,
    Stopped,
    Failed(String),
}

impl Status {
    /// Whether every partition of `ends` is read up to its offset there. A
    /// position of a log with one global order (see [`Until`]) is the offset
    /// in the log's one partition, whatever the source names it (a Kafka
    /// topic of one partition, say).
    fn reached(&self, ends: &BTreeMap<String, u64>) -> bool {
        if let (Some(&end), 1) = (ends.get(GLOBAL), ends.len()) {
            let mut marks = self.checkpoint.iter();
            if let (Some((_, only)), None) = (marks.next(), marks.next()) {
                return only.next >= end;
            }
        }
        self.checkpoint.reached(ends)
    }

    /// The runner `name`, as [`reports`](crate::report::reports) lists it.
    fn report(&self, name: &str) -> crate::report::RunnerReport {
        use crate::report::{PartitionReport, RunnerState};
        let (state, failure) = match &self.state {
            State::Starting => (RunnerState::Starting, None),
            State::Running => (RunnerState::Running, None),
            State::Stopped => (RunnerState::Stopped, None),
            State::Failed(why) => (RunnerState::Failed, Some(why.clone())),
        };
        crate::report::RunnerReport {
            name: name.to_owned(),
            state,
            failure,
            last_set_aside: self.last_set_aside.clone(),
            set_aside: self.set_aside,
            redriven: self.redriven,
            moved_at: self.moved_at,
            partitions: self
                .partitions()
                .into_iter()
                .map(|(partition, progress)| (partition, PartitionReport::from(progress)))
                .collect(),
        }
    }

    /// Each partition's position and end as last seen.
    fn partitions(&self) -> BTreeMap<String, PartitionProgress> {
        let mut partitions: BTreeMap<String, PartitionProgress> = self
            .checkpoint
            .iter()
            .map(|(partition, mark)| {
                (
                    partition.to_owned(),
                    PartitionProgress {
                        position: mark.next,
                        end: None,
                    },
                )
            })
            .collect();
        for (partition, &end) in &self.ends {
            let position = self.checkpoint.get(partition).next;
            partitions
                .entry(partition.clone())
                .or_insert(PartitionProgress { position, end: None })
                .end = Some(end.max(position));
        }
        partitions
    }
}

/// What [`Handle::wait_for`] waits for: the next offset of each partition
/// named, or a position of a log with one global order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Until(BTreeMap<String, u64>);

impl From<Position> for Until {
    /// Every event before `position` of a log with one global order (for
    /// example an append's `last_position.next()`, or the store's head), or
    /// of a source of one partition.
    fn from(position: Position) -> Self {
        Until(BTreeMap::from([(GLOBAL.to_owned(), position.0)]))
    }
}

impl From<BTreeMap<String, u64>> for Until {
    /// Every record before these next offsets, keyed as the source names
    /// partitions (`topic/partition` on Kafka).
    fn from(ends: BTreeMap<String, u64>) -> Self {
        Until(ends)
    }
}

impl From<&BTreeMap<String, u64>> for Until {
    fn from(ends: &BTreeMap<String, u64>) -> Self {
        Until(ends.clone())
    }
}

/// A runner ended (stopped, or failed) before it reached what was waited for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the runner ended before it got there{}", .failure.as_ref().map(|f| format!(": {f}")).unwrap_or_default())]
pub struct Ended {
    /// Why it failed, when it did; `None` when it was stopped.
    pub failure: Option<String>,
}

/// A running [`Runner`]: stop it, or take handles to it. It derefs to its
/// [`Handle`].
pub struct Running<R> {
    handle: Handle<R>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ProjectionError>>,
}

impl<R: Clone> Running<R> {
    /// A handle to the runner; clone it freely.
    pub fn handle(&self) -> Handle<R> {
        self.handle.clone()
    }
}

impl<R> Running<R> {
    /// Stops after the batch in hand, saves the state with its checkpoint,
    /// and returns how the runner ended.
    ///
    /// # Errors
    /// What stopped the runner before, if it failed, or what failed the last
    /// save.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        self.stop.send_replace(true);
        self.task.await.map_err(|e| ProjectionError::Task(e.to_string()))?
    }

    /// Stops the task at once, saving nothing: what a crash would do.
    ///
    /// Returns once the task is gone: nothing it does lands afterwards.
    pub async fn abort(self) {
        self.task.abort();
        // A cancellation, or how it ended before the abort reached it: a
        // crash reports neither.
        let _ = self.task.await;
    }
}

impl<R> std::ops::Deref for Running<R> {
    type Target = Handle<R>;
    fn deref(&self) -> &Handle<R> {
        &self.handle
    }
}

/// A cheap, cloneable handle to a running [`Runner`]: its progress, and
/// what it folds. It derefs to the latter, so a view's handle
/// [`read`](ViewState::read)s and a table's handle queries.
#[derive(Clone)]
pub struct Handle<R> {
    reads: R,
    status: watch::Receiver<Status>,
}

impl<R> std::ops::Deref for Handle<R> {
    type Target = R;
    fn deref(&self) -> &R {
        &self.reads
    }
}

impl<R> Handle<R> {
    /// Waits until the runner has taken every record before `until` (a
    /// [`Position`] of a log with one global order, or the next offset of
    /// each partition), or has ended.
    ///
    /// # Errors
    /// [`Ended`] when the runner stopped or failed first.
    #[must_use = "the runner may have ended before it got there"]
    pub async fn wait_for(&self, until: impl Into<Until>) -> Result<(), Ended> {
        let Until(ends) = until.into();
        let mut status = self.status.clone();
        let reached = |s: &Status| s.state != State::Starting && s.reached(&ends);
        let seen = status
            .wait_for(|s| reached(s) || matches!(s.state, State::Stopped | State::Failed(_)))
            .await;
        match seen {
            Ok(status) if reached(&status) => Ok(()),
            Ok(status) => Err(Ended {
                failure: match &status.state {
                    State::Failed(reason) => Some(reason.clone()),
                    _ => None,
                },
            }),
            Err(_) => Err(Ended {
                failure: Some("the runner's task is gone".to_owned()),
            }),
        }
    }

    /// Each partition's position (the next offset to take, as saved with the
    /// state) and end as last seen, and so the lag.
    pub fn progress(&self) -> BTreeMap<String, PartitionProgress> {
        self.status.borrow().partitions()
    }

    /// The checkpoint the runner has reached; `None` before it has restored
    /// its state.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let status = self.status.borrow();
        (status.state != State::Starting).then(|| status.checkpoint.clone())
    }

    /// Why the runner failed, if it did.
    pub fn failure(&self) -> Option<String> {
        match &self.status.borrow().state {
            State::Failed(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Resolves once the runner has ended, whatever the reason;
    /// [`Running::stop`] then returns why.
    pub async fn ended(&self) {
        let mut status = self.status.clone();
        // An error means the task is gone: ended too.
        let _ = status
            .wait_for(|s| matches!(s.state, State::Stopped | State::Failed(_)))
            .await;
    }

    /// What the runner folds, for queries.
    pub fn reads(&self) -> &R {
        &self.reads
    }
}

/// The state of a fold kept in memory, shared between the runner and its
/// handles.
pub struct ViewState<V>(Arc<RwLock<V>>);

impl<V> Clone for ViewState<V> {
    fn clone(&self) -> Self {
        ViewState(Arc::clone(&self.0))
    }
}

impl<V> ViewState<V> {
    /// `state`, to share.
    pub fn new(state: V) -> Self {
        ViewState(Arc::new(RwLock::new(state)))
    }

    /// Answers a query from the state as it is now.
    pub fn read<R>(&self, query: impl FnOnce(&V) -> R) -> R {
        query(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes the state (the runner's side).
    pub(crate) fn write<R>(&self, change: impl FnOnce(&mut V) -> R) -> R {
        change(&mut self.0.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// The lock itself, for reading it while it is serialized.
    pub(crate) fn lock(&self) -> &RwLock<V> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(marks: &[(&str, u64)]) -> Status {
        let mut checkpoint = Checkpoint::new();
        for &(partition, next) in marks {
            checkpoint.set(partition, Mark { next, token: 0 });
        }
        Status {
            checkpoint,
            state: State::Running,
            ..Status::default()
        }
    }

    #[test]
    fn a_position_is_the_offset_of_a_source_of_one_partition_whatever_its_name() {
        let Until(position) = Until::from(Position(51));
        assert!(status(&[("books/0", 51)]).reached(&position));
        assert!(!status(&[("books/0", 50)]).reached(&position));
        assert!(status(&[("", 51)]).reached(&position));
        // Of several partitions, a position says nothing: not reached.
        assert!(!status(&[("books/0", 51), ("books/1", 60)]).reached(&position));
        let ends = BTreeMap::from([("books/0".to_owned(), 3), ("books/1".to_owned(), 0)]);
        assert!(
            status(&[("books/0", 3)]).reached(&ends),
            "a partition at 0 needs nothing read"
        );
        assert!(!status(&[("books/0", 2)]).reached(&ends));
    }
}

#[cfg(test)]
mod advance_tests {
    use super::*;

    #[test]
    fn a_checkpoint_moves_over_records_of_several_partitions_in_any_order() {
        let mut start = Checkpoint::new();
        start.set("t/1", Mark { next: 5, token: 2 });
        let mut to = Advance::from(start);
        let (p0, p1, p1_again): (Arc<str>, Arc<str>, Arc<str>) = (Arc::from("t/0"), Arc::from("t/1"), Arc::from("t/1"));
        assert_eq!(to.next(&p0), 0);
        to.set(Mark { next: 1, token: 0 });
        assert_eq!(to.next(&p1), 5);
        to.set(Mark { next: 6, token: 3 });
        assert_eq!(to.next(&p0), 1, "p0's mark was written when p1 came");
        to.set(Mark { next: 2, token: 0 });
        assert_eq!(to.next(&p1_again), 6, "the same name in another allocation");
        let done = to.done();
        assert_eq!(done.get("t/0"), Mark { next: 2, token: 0 });
        assert_eq!(done.get("t/1"), Mark { next: 6, token: 3 });
    }
}
