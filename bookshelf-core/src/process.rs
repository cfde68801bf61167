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
//! **Replays send nothing again.** With
//! [`effects_in`](Runner::effects_in), the runner keeps, apart from the
//! state, how far in the log it has sent commands. A replay (the state
//! rebuilt from the start, a new version of the process under a new name,
//! a state lost) folds the events up to there again without sending their
//! commands: it goes on sending from the first event past it.
//!
//! Delivery is at least once: after a crash between sending a command and
//! saving the checkpoint, the event is read again and its commands sent
//! again. Each command therefore carries an idempotency key, the same each
//! time the same step is taken (derive it from the process id and the step,
//! never from a clock or a random number), and the receiving aggregate
//! honours it (see [`Repository::execute_once`](crate::Repository::execute_once)).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::DomainEvent;
use crate::envelope::{Envelope, Metadata};
use crate::projection::{InMemoryViewStore, ProjectionError, StoredView, ViewStore};
use crate::retry::RetryPolicy;
use crate::runner::{Batch, Fold, Runner, ViewState};
use crate::source::{Checkpoint, EventSource};

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

/// The runner of a [`ProcessManager`]: [`Runner`] folding a [`ProcessFold`].
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
/// let event = NewEvent::encode(&Ev::Ordered { n: 1 }, Metadata::default())?;
/// let written = store.append(&StreamId::new("order-1"), ExpectedVersion::Any, vec![event]).await?;
/// shipping.wait_for(written.last_position.next()).await?;
/// assert_eq!(shipping.read(|s| s.shipped), 1);
/// shipping.stop().await?;
/// # Ok(()) }
/// ```
pub type ProcessRunner<P, S, B> = Runner<ProcessFold<P, B>, S>;

/// A [`ProcessManager`] folded by a [`Runner`]: its commands sent through a
/// [`CommandBus`], its state saved with its checkpoint in a [`ViewStore`]
/// once the commands of an event went through, and after every batch.
pub struct ProcessFold<P, B> {
    name: String,
    bus: B,
    saved: Arc<dyn ViewStore>,
    retry: RetryPolicy,
    state: P,
    shared: ViewState<P>,
    at: Checkpoint,
    /// Where the mark of the commands sent is kept, and the mark: every
    /// event before it had its commands sent.
    effects: Option<Arc<dyn ViewStore>>,
    sent_through: Checkpoint,
    /// The commands of a replay not sent again, for the logs.
    not_sent_again: u64,
}

impl<P, S, B> Runner<ProcessFold<P, B>, S>
where
    P: ProcessManager,
    S: EventSource,
    B: CommandBus<P::Command>,
{
    /// Process manager `name` over the log of `source` (any
    /// [`EventSource`]: the in-memory store, a Kafka topic of any number of
    /// partitions), sending through `bus`; its state kept in memory,
    /// ticking every second, batches of 256 records, commands that are
    /// unavailable tried 10 times (see [`RetryPolicy`]) before the runner
    /// stops.
    pub fn new(name: impl Into<String>, source: S, bus: B) -> Self {
        let name = name.into();
        let fold = ProcessFold {
            name: name.clone(),
            bus,
            saved: Arc::new(InMemoryViewStore::new()),
            retry: RetryPolicy::attempts(10).with_backoff(Duration::from_millis(10)),
            state: P::default(),
            shared: ViewState::new(P::default()),
            at: Checkpoint::new(),
            effects: None,
            sent_through: Checkpoint::new(),
            not_sent_again: 0,
        };
        Runner::folding(name, source, fold)
            .batch_size(256)
            .tick_every(Duration::from_secs(1))
    }

    /// Keeps the state and checkpoint in `saved`, so that a restart resumes.
    #[must_use]
    pub fn persist_to(mut self, saved: impl ViewStore) -> Self {
        self.fold.saved = Arc::new(saved);
        self
    }

    /// Keeps in `effects`, apart from the state, how far the process has
    /// sent its commands, so that a replay from before there (the state
    /// rebuilt, a new version of the process, a state lost) does not send
    /// them again (see the [module docs](crate::process)). Share it between
    /// the versions of a process; give it to no other process.
    #[must_use]
    pub fn effects_in(mut self, effects: impl ViewStore) -> Self {
        self.fold.effects = Some(Arc::new(effects));
        self
    }

    /// How often, and after what pause, an unavailable command is sent
    /// again before the runner gives up and stops (a restart resumes there).
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.fold.retry = retry;
        self
    }
}

#[async_trait]
impl<P, B> Fold for ProcessFold<P, B>
where
    P: ProcessManager,
    B: CommandBus<P::Command>,
{
    type Event = P::Event;
    type Reads = ViewState<P>;

    fn reads(&self) -> ViewState<P> {
        self.shared.clone()
    }

    async fn restore(&mut self) -> Result<Checkpoint, ProjectionError> {
        if let Some(saved) = self.saved.load().await? {
            self.state = serde_json::from_str(saved.state.get()).map_err(|source| ProjectionError::SavedState {
                projection: self.name.clone(),
                source,
            })?;
            self.at = saved.reflects();
        }
        if let Some(effects) = &self.effects {
            if let Some(mark) = effects.load().await? {
                self.sent_through = mark.reflects();
            }
        }
        self.publish();
        Ok(self.at.clone())
    }

    async fn apply(&mut self, batch: Batch<'_, P::Event>) -> Result<(), ProjectionError> {
        for decoded in batch.events.drain(..) {
            let replayed = decoded.is_before(&self.sent_through);
            decoded.advance(&mut self.at);
            let event = decoded.event;
            if replayed {
                // Its commands went out before: folded, not sent again.
                let commands = self.state.react(&event);
                self.not_sent_again += commands.len() as u64;
                continue;
            }
            let span = crate::trace::event_span(&self.name, &event.event_type, &event.metadata);
            tracing::Instrument::instrument(self.react(&event), span).await?;
        }
        // The replay has come past what was sent before.
        if self.not_sent_again > 0 && self.at.furthest(&self.sent_through) == self.at {
            tracing::info!(process = %self.name, commands = self.not_sent_again, "replayed past the commands sent before; sending again from here");
            self.not_sent_again = 0;
        }
        self.at = batch.to.clone();
        self.save().await?;
        self.publish();
        Ok(())
    }

    async fn tick(&mut self, _at: &Checkpoint) -> Result<(), ProjectionError> {
        let commands = self.state.tick(Utc::now());
        if !commands.is_empty() {
            self.send_all(commands).await?;
            self.save().await?;
            self.publish();
        }
        Ok(())
    }

    async fn stop(&mut self, at: &Checkpoint) -> Result<(), ProjectionError> {
        self.at = at.clone();
        self.save().await
    }
}

impl<P, B> ProcessFold<P, B>
where
    P: ProcessManager,
    B: CommandBus<P::Command>,
{
    /// The commands `event` calls for, sent; the state saved after them.
    async fn react(&mut self, event: &Envelope<P::Event>) -> Result<(), ProjectionError> {
        let mut commands = self.state.react(event);
        for dispatch in &mut commands {
            if dispatch.metadata == Metadata::default() {
                dispatch.metadata = Metadata::following(event);
            }
        }
        if !commands.is_empty() {
            self.send_all(commands).await?;
            // The commands went through: the event is done with.
            self.save().await?;
        }
        Ok(())
    }

    /// Sends `commands`, and the compensations for those refused.
    async fn send_all(&mut self, commands: Vec<Dispatch<P::Command>>) -> Result<(), ProjectionError> {
        let mut queue = VecDeque::from(commands);
        while let Some(dispatch) = queue.pop_front() {
            let mut delays = self.retry.delays();
            let mut attempt = 1;
            loop {
                match self.bus.dispatch(&dispatch).await {
                    Ok(()) => break,
                    Err(DispatchError::Rejected(reason)) => {
                        tracing::warn!(process = %self.name, key = %dispatch.key, %reason, "command rejected");
                        queue.extend(self.state.rejected(&dispatch, &reason));
                        break;
                    }
                    Err(DispatchError::Unavailable(reason)) => match delays.next() {
                        Some(delay) => {
                            tracing::warn!(process = %self.name, key = %dispatch.key, %reason, attempt, "command unavailable; retrying");
                            tokio::time::sleep(delay).await;
                            attempt += 1;
                        }
                        None => {
                            return Err(ProjectionError::Task(format!(
                                "process {}: command {} still unavailable after {attempt} attempts: {reason}",
                                self.name, dispatch.key
                            )));
                        }
                    },
                }
            }
        }
        Ok(())
    }

    async fn save(&mut self) -> Result<(), ProjectionError> {
        let state = serde_json::value::to_raw_value(&self.state).map_err(|source| ProjectionError::Serialize {
            projection: self.name.clone(),
            source,
        })?;
        // The mark first: the commands up to `at` went out, whatever
        // happens to the state's save.
        if let Some(effects) = &self.effects {
            let through = self.sent_through.furthest(&self.at);
            if through != self.sent_through {
                let nothing = serde_json::value::RawValue::from_string("null".to_owned()).map_err(|source| {
                    ProjectionError::Serialize {
                        projection: self.name.clone(),
                        source,
                    }
                })?;
                effects.save(&StoredView::new(&through, nothing)).await?;
                self.sent_through = through;
            }
        }
        self.saved.save(&StoredView::new(&self.at, state)).await?;
        Ok(())
    }

    /// Copies the state for readers: the runner keeps its own copy, as it is
    /// changed across the awaits of sending commands.
    fn publish(&self) {
        let state = self.state.clone();
        self.shared.write(|shared| *shared = state);
    }
}
