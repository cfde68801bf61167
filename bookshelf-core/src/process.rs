//! Process managers (sagas): long-running processes that react to events
//! from several aggregates and send commands, with compensation when a step
//! fails or times out.
//!
//! A [`ProcessManager`] is a fold like a [`View`](crate::View), whose
//! reactions are commands. The [`ProcessRunner`] feeds it the log, sends its
//! commands through a [`CommandBus`], and saves its state with its checkpoint
//! in a [`ViewStore`] once the commands of an event went through.
//!
//! The runner follows any [`EventSource`]: the in-memory store's one log,
//! or a Kafka topic of any number of partitions, with its checkpoint (the
//! next offset of every partition) saved with the state. Events of one
//! stream come in their order. Events of streams in different partitions
//! come in no set order relative to each other, and a replay after a crash
//! may interleave them otherwise than the first run did: a process over
//! several aggregates must take a step's cause and its effect in either
//! order (keep what comes early until what it belongs to comes).
//!
//! Delivery is at least once: after a crash between sending a command and
//! saving the checkpoint, the event is read again and its commands sent
//! again. Each command therefore carries an idempotency key, the same each
//! time the same step is taken (derive it from the process id and the step,
//! never from a clock or a random number), and the receiving aggregate
//! honours it (see [`Repository::execute_once`](crate::Repository::execute_once)).

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::codec::{DecodeError, DomainEvent, EventCodec};
use crate::envelope::RecordedEvent;
use crate::envelope::{Envelope, Metadata, Position};
use crate::projection::{
    set_aside, DeadLetters, InMemoryDeadLetters, InMemoryViewStore, ProjectionError, StoredView, ViewStore,
};
use crate::repository::RetryPolicy;
use crate::runner::{Progress, RunnerTask};
use crate::source::{Checkpoint, EventSource, PartitionProgress};
use std::collections::BTreeMap;

/// A command a process manager sends, with the key that makes sending it
/// twice harmless.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch<C> {
    /// The same every time this step of this process is taken, such as
    /// `"loan-42/charge"`.
    pub key: String,
    /// The command.
    pub command: C,
    /// The metadata for what the command stores. The runner fills it for
    /// the commands that react to an event, as [`Metadata::following`] that
    /// event (its correlation id, the event as cause, its trace continued),
    /// unless the process manager set it.
    pub metadata: Metadata,
}

impl<C> Dispatch<C> {
    /// `command`, under idempotency key `key`.
    pub fn new(key: impl Into<String>, command: C) -> Self {
        Dispatch {
            key: key.into(),
            command,
            metadata: Metadata::default(),
        }
    }
}

/// Why a command did not go through.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    /// The aggregate refused it (an invalid transition, say): sending it again
    /// would not help. The process manager is told, to compensate.
    #[error("rejected: {0}")]
    Rejected(String),
    /// It could not be carried out now (a store or network failure): it is
    /// sent again.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Where a process manager's commands go: usually a match over the command
/// type that calls each aggregate's repository.
#[async_trait]
pub trait CommandBus<C>: Send + Sync + 'static {
    /// Carries out one command, at most once per key.
    ///
    /// # Errors
    /// [`DispatchError::Rejected`] when the command is refused for good,
    /// [`DispatchError::Unavailable`] when it may succeed later.
    async fn dispatch(&self, dispatch: &Dispatch<C>) -> Result<(), DispatchError>;
}

/// A long-running process over events of several aggregates.
///
/// Its state is saved as JSON with its checkpoint; keep in it what each
/// running process has done and is waiting for, and deadlines for
/// [`tick`](Self::tick).
pub trait ProcessManager: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The events it reacts to. Other events in the log are passed over.
    type Event: DomainEvent;
    /// The commands it sends.
    type Command: Send + Sync + std::fmt::Debug + 'static;

    /// Folds one event and returns the commands it calls for.
    fn react(&mut self, event: &Envelope<Self::Event>) -> Vec<Dispatch<Self::Command>>;

    /// Called every tick of the runner with the time: returns the commands
    /// for deadlines that passed (a timeout's compensation, say).
    fn tick(&mut self, now: DateTime<Utc>) -> Vec<Dispatch<Self::Command>> {
        let _ = now;
        Vec::new()
    }

    /// A command was refused for good: returns the commands to send instead
    /// (compensation for the steps already taken, say).
    fn rejected(&mut self, dispatch: &Dispatch<Self::Command>, reason: &str) -> Vec<Dispatch<Self::Command>> {
        let _ = (dispatch, reason);
        Vec::new()
    }
}

/// Runs a [`ProcessManager`] over an event store.
///
/// ```
/// # use bookshelf_core::process::*;
/// # use bookshelf_core::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] enum Ev { Ordered { n: u32 } }
/// # impl DomainEvent for Ev {}
/// /// Sends a `Ship` for every order.
/// #[derive(Default, Clone, Serialize, Deserialize)]
/// struct Shipping { shipped: u32 }
///
/// impl ProcessManager for Shipping {
///     type Event = Ev;
///     type Command = String;
///     fn react(&mut self, event: &Envelope<Ev>) -> Vec<Dispatch<String>> {
///         self.shipped += 1;
///         vec![Dispatch::new(format!("{}/ship", event.stream_id), "ship".to_owned())]
///     }
/// }
///
/// struct Printer;
/// #[async_trait]
/// impl CommandBus<String> for Printer {
///     async fn dispatch(&self, d: &Dispatch<String>) -> Result<(), DispatchError> {
///         println!("{} {}", d.key, d.command);
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let shipping = ProcessRunner::<Shipping, _, _>::new("shipping", store.clone(), Printer).start();
/// let encoded = codec::encode(&Ev::Ordered { n: 1 })?;
/// let event = NewEvent {
///     event_id: EventId::new(),
///     event_type: encoded.event_type,
///     schema_version: encoded.schema_version,
///     metadata: Metadata::default(),
///     payload: encoded.payload,
/// };
/// let written = store.append(&StreamId::new("order-1"), ExpectedVersion::Any, vec![event]).await?;
/// assert!(shipping.wait_for(written.last_position.next()).await);
/// assert_eq!(shipping.read(|s| s.shipped), 1);
/// shipping.stop().await?;
/// # Ok(()) }
/// ```
pub struct ProcessRunner<P: ProcessManager, S, B> {
    name: String,
    source: S,
    bus: Arc<B>,
    saved: Arc<dyn ViewStore>,
    categories: Vec<String>,
    tick: Duration,
    retry: RetryPolicy,
    batch_size: usize,
    codec: EventCodec<P::Event>,
    dead_letters: Arc<dyn DeadLetters>,
}

impl<P, S, B> ProcessRunner<P, S, B>
where
    P: ProcessManager,
    S: EventSource,
    B: CommandBus<P::Command>,
{
    /// Process manager `name` over the log of `store` (any [`EventSource`]:
    /// the in-memory store, a Kafka topic of any number of partitions),
    /// sending through `bus`; its state
    /// kept in memory, ticking every second, commands that are unavailable
    /// tried 10 times from 10 ms on before the runner stops.
    pub fn new(name: impl Into<String>, store: S, bus: B) -> Self {
        ProcessRunner {
            name: name.into(),
            source: store,
            bus: Arc::new(bus),
            saved: Arc::new(InMemoryViewStore::new()),
            categories: Vec::new(),
            tick: Duration::from_secs(1),
            retry: RetryPolicy::attempts(10).with_backoff(Duration::from_millis(10)),
            batch_size: 256,
            codec: EventCodec::new(),
            dead_letters: Arc::new(InMemoryDeadLetters::new()),
        }
    }

    /// Sets aside the events that do not decode here (default: in memory);
    /// they are logged too, and the process goes on.
    pub fn dead_letters(mut self, sink: impl DeadLetters) -> Self {
        self.dead_letters = Arc::new(sink);
        self
    }

    /// Keeps the state and checkpoint in `saved`, so that a restart resumes.
    pub fn persist_to(mut self, saved: impl ViewStore) -> Self {
        self.saved = Arc::new(saved);
        self
    }

    /// Reads only the streams of these categories.
    pub fn only_categories<T: Into<String>>(mut self, categories: impl IntoIterator<Item = T>) -> Self {
        self.categories = categories.into_iter().map(Into::into).collect();
        self
    }

    /// How often [`ProcessManager::tick`] is called.
    pub fn tick_every(mut self, every: Duration) -> Self {
        self.tick = every;
        self
    }

    /// How often, and after what pause, an unavailable command is sent
    /// again before the runner gives up and stops (a restart resumes there).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Starts the process manager as a task.
    pub fn start(self) -> RunningProcess<P> {
        let shared = Arc::new(RwLock::new(P::default()));
        let state = Arc::clone(&shared);
        RunningProcess {
            shared,
            task: RunnerTask::spawn(|progress, stopped| self.run(state, progress, stopped)),
        }
    }

    async fn run(
        self,
        shared: Arc<RwLock<P>>,
        progress: watch::Sender<Progress>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let mut state = P::default();
        let mut checkpoint = Checkpoint::new();
        if let Some(saved) = self.saved.load().await? {
            state = serde_json::from_str(saved.state.get()).map_err(|source| ProjectionError::SavedState {
                projection: self.name.clone(),
                source,
            })?;
            checkpoint = Checkpoint::from_saved(saved.checkpoint, &saved.offsets);
        }
        publish(&shared, &state);
        let mut follower = self.source.follow(&checkpoint).await?;
        Progress {
            checkpoint: checkpoint.clone(),
            ends: follower.ends(),
        }
        .report(&self.name, &progress);
        let mut ticks = tokio::time::interval(self.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = ticks.tick() => {
                    let commands = state.tick(Utc::now());
                    if !commands.is_empty() {
                        self.send_all(&mut state, commands).await?;
                        self.save(&state, &checkpoint).await?;
                        publish(&shared, &state);
                    }
                    continue;
                }
                next = follower.next_batch(&mut batch, self.batch_size) => next?,
            }
            for record in batch.drain(..) {
                let event = match &record.event {
                    Some(event) if self.wanted(event) => self.decode(event).await?,
                    _ => None,
                };
                checkpoint.set(&record.partition, record.mark);
                if let Some(event) = event {
                    let span = crate::trace::event_span(&self.name, &event.event_type, &event.metadata);
                    tracing::Instrument::instrument(self.react(&mut state, &checkpoint, &event), span).await?;
                }
            }
            self.save(&state, &checkpoint).await?;
            publish(&shared, &state);
            Progress {
                checkpoint: checkpoint.clone(),
                ends: follower.ends(),
            }
            .report(&self.name, &progress);
        }
        self.save(&state, &checkpoint).await?;
        Ok(())
    }

    /// The commands `event` calls for, sent; the state saved after them.
    async fn react(
        &self,
        state: &mut P,
        checkpoint: &Checkpoint,
        event: &Envelope<P::Event>,
    ) -> Result<(), ProjectionError> {
        let mut commands = state.react(event);
        for dispatch in &mut commands {
            if dispatch.metadata == Metadata::default() {
                dispatch.metadata = Metadata::following(event);
            }
        }
        if !commands.is_empty() {
            self.send_all(state, commands).await?;
            // The commands went through: the event is done with.
            self.save(state, checkpoint).await?;
        }
        Ok(())
    }

    fn wanted(&self, event: &RecordedEvent) -> bool {
        self.categories.is_empty() || self.categories.iter().any(|c| c == event.stream_id.category())
    }

    /// The event, `None` for a type the process does not react to, or set
    /// aside when it does not decode.
    async fn decode(&self, record: &Arc<RecordedEvent>) -> Result<Option<Envelope<P::Event>>, ProjectionError> {
        match self.codec.decode_envelope(record) {
            Ok(event) => Ok(Some(event)),
            Err(DecodeError::UnknownEventType { .. }) => Ok(None),
            Err(error) => {
                set_aside(&*self.dead_letters, &self.name, record, &error).await?;
                Ok(None)
            }
        }
    }

    /// Sends `commands`, and the compensations for those refused.
    async fn send_all(&self, state: &mut P, commands: Vec<Dispatch<P::Command>>) -> Result<(), ProjectionError> {
        let mut queue = VecDeque::from(commands);
        while let Some(dispatch) = queue.pop_front() {
            let mut attempt = 1;
            let mut backoff = self.retry.backoff;
            loop {
                match self.bus.dispatch(&dispatch).await {
                    Ok(()) => break,
                    Err(DispatchError::Rejected(reason)) => {
                        tracing::warn!(process = %self.name, key = %dispatch.key, %reason, "command rejected");
                        queue.extend(state.rejected(&dispatch, &reason));
                        break;
                    }
                    Err(DispatchError::Unavailable(reason)) if attempt < self.retry.max_attempts => {
                        tracing::warn!(process = %self.name, key = %dispatch.key, %reason, attempt, "command unavailable; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = backoff.saturating_mul(2);
                        attempt += 1;
                    }
                    Err(DispatchError::Unavailable(reason)) => {
                        return Err(ProjectionError::Task(format!(
                            "process {}: command {} still unavailable after {attempt} attempts: {reason}",
                            self.name, dispatch.key
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    async fn save(&self, state: &P, checkpoint: &Checkpoint) -> Result<(), ProjectionError> {
        let json = serde_json::to_string(state).map_err(|source| ProjectionError::Serialize {
            projection: self.name.clone(),
            source,
        })?;
        let state = serde_json::value::RawValue::from_string(json).map_err(|source| ProjectionError::Serialize {
            projection: self.name.clone(),
            source,
        })?;
        let (position, offsets) = checkpoint.to_saved();
        self.saved
            .save(&StoredView {
                checkpoint: position,
                offsets,
                state,
            })
            .await?;
        Ok(())
    }
}

/// Copies the state for readers, once per batch: the runner keeps its own
/// copy, as it is changed across the awaits of sending commands.
fn publish<P: ProcessManager>(shared: &RwLock<P>, state: &P) {
    *shared.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
}

/// A running [`ProcessRunner`].
pub struct RunningProcess<P> {
    shared: Arc<RwLock<P>>,
    task: RunnerTask,
}

impl<P: ProcessManager> RunningProcess<P> {
    /// Answers a query from the state as of the last batch.
    pub fn read<R>(&self, query: impl FnOnce(&P) -> R) -> R {
        query(&self.shared.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until every event before `position` of a log with one global
    /// order was handled, or the runner ended; returns whether the position
    /// was reached.
    pub async fn wait_for(&self, position: Position) -> bool {
        self.task.wait_for(position).await
    }

    /// Waits until every record before `ends` (the next offset of each
    /// partition, keyed as the source names its partitions: `topic/partition`
    /// on Kafka) was handled, or the runner ended; returns whether they were
    /// reached.
    pub async fn wait_for_ends(&self, ends: &BTreeMap<String, u64>) -> bool {
        self.task.wait_for_ends(ends).await
    }

    /// Each partition's position (the next offset to handle, as saved with
    /// the state) and end as last seen, and so the lag.
    pub fn progress(&self) -> BTreeMap<String, PartitionProgress> {
        self.task.progress()
    }

    /// Resolves once the runner has ended: it failed (a command still
    /// unavailable after its retries, a store that failed), or was stopped.
    /// [`stop`](Self::stop) then returns why.
    pub async fn ended(&self) {
        self.task.ended().await
    }

    /// Stops after the event in hand, saving the state.
    ///
    /// # Errors
    /// What stopped the runner before, or saving failed.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        self.task.stop().await
    }

    /// Stops at once, saving nothing: what a crash would do.
    ///
    /// Returns once the task is gone: nothing it does lands afterwards.
    pub async fn abort(self) {
        self.task.abort().await;
    }
}
