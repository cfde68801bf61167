//! The projection runner: keeps a [`View`] up to date from a store
//! subscription, with its checkpoint saved together with its state.
//!
//! # Delivery and restart
//!
//! The runner reads the log from the view's checkpoint, decodes each event,
//! and applies it. Every `save_every` events, and when stopped, it saves the
//! view's state **and** its checkpoint as one document in a [`ViewStore`].
//! After a crash it starts from that document: the events after the
//! checkpoint are read again (at-least-once delivery) and applied to the state
//! saved with that checkpoint, so each event is reflected exactly once. An
//! event whose position is before the checkpoint is skipped, so a source that
//! delivers an event twice cannot apply it twice.
//!
//! # Poison events
//!
//! An event that the view's codec knows by type but cannot decode (bad JSON,
//! a schema version newer than the code) is logged at `warn` with its stream,
//! version and position, handed to the [`DeadLetters`] sink, and passed over;
//! the projection goes on. The checkpoint moves past it only once the sink has
//! taken it. Events of types the view does not know are skipped by default, as
//! a shared log holds every aggregate's events; see [`UnknownEvents`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::codec::{DecodeError, EventCodec};
use crate::envelope::{Envelope, Position, RecordedEvent};
use crate::source::PartitionProgress;
use crate::store::{EventStore, StoreError, Subscription};
use crate::view::View;

/// A view's saved state and the checkpoint it reflects: the position of the
/// next event to apply.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredView {
    /// The next position to read in a source with one global log; for a
    /// source of several logs, how many events the view has taken.
    pub checkpoint: Position,
    /// For a source of several logs (Kafka partitions, say): the next offset
    /// to read in each, keyed `topic/partition`. Empty for one global log.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offsets: BTreeMap<String, u64>,
    /// The view's state as JSON.
    pub state: Box<RawValue>,
}

/// Why a view store failed.
#[derive(Debug, thiserror::Error)]
#[error("view store failed: {0}")]
pub struct ViewStoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Where a view's state and checkpoint are saved, together, as one document.
#[async_trait]
pub trait ViewStore: Send + Sync + 'static {
    /// The saved view, if any.
    ///
    /// # Errors
    /// When the backend fails or holds something unreadable.
    async fn load(&self) -> Result<Option<StoredView>, ViewStoreError>;

    /// Replaces the saved view atomically: a crash leaves either the old or
    /// the new document, never a mix.
    ///
    /// # Errors
    /// When the backend fails.
    async fn save(&self, view: &StoredView) -> Result<(), ViewStoreError>;
}

/// A view store in memory: survives a restart of the projection, not of the
/// process. Cloning gives another handle to the same document.
#[derive(Clone, Debug, Default)]
pub struct InMemoryViewStore {
    saved: Arc<Mutex<Option<String>>>,
}

impl InMemoryViewStore {
    /// Nothing saved yet.
    pub fn new() -> Self {
        InMemoryViewStore::default()
    }
}

#[async_trait]
impl ViewStore for InMemoryViewStore {
    async fn load(&self) -> Result<Option<StoredView>, ViewStoreError> {
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner()).clone();
        saved
            .map(|json| serde_json::from_str(&json).map_err(|e| ViewStoreError(Box::new(e))))
            .transpose()
    }

    async fn save(&self, view: &StoredView) -> Result<(), ViewStoreError> {
        let json = serde_json::to_string(view).map_err(|e| ViewStoreError(Box::new(e)))?;
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(json);
        Ok(())
    }
}

/// A view store in one JSON file, replaced atomically (written beside it,
/// synced, then renamed over it).
#[derive(Clone, Debug)]
pub struct FileViewStore {
    path: PathBuf,
}

impl FileViewStore {
    /// A store at `path`; the file need not exist yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileViewStore { path: path.into() }
    }
}

#[async_trait]
impl ViewStore for FileViewStore {
    async fn load(&self) -> Result<Option<StoredView>, ViewStoreError> {
        match tokio::fs::read_to_string(&self.path).await {
            Ok(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| ViewStoreError(Box::new(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ViewStoreError(Box::new(e))),
        }
    }

    async fn save(&self, view: &StoredView) -> Result<(), ViewStoreError> {
        let json = serde_json::to_vec(view).map_err(|e| ViewStoreError(Box::new(e)))?;
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut temp = path.clone().into_os_string();
            temp.push(".tmp");
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)
        })
        .await
        .map_err(|e| ViewStoreError(Box::new(e)))?;
        written.map_err(|e| ViewStoreError(Box::new(e)))
    }
}

/// An event a projection could not apply, set aside.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The projection's name.
    pub projection: String,
    /// The event as stored.
    pub event: Arc<RecordedEvent>,
    /// Why it was set aside.
    pub reason: String,
}

/// Where a projection sets aside the events it cannot apply.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Takes one dead letter.
    ///
    /// # Errors
    /// When it cannot keep the letter; the projection then stops rather than
    /// lose the event.
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

/// What a projection does with events of types its view does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownEvents {
    /// Pass over them: the log is shared with other aggregates' events.
    #[default]
    Skip,
    /// Treat them as poison: dead-letter them. For a source that should
    /// carry only the view's events.
    DeadLetter,
}

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The view store failed.
    #[error(transparent)]
    ViewStore(#[from] ViewStoreError),
    /// The saved state does not decode into the view (its type changed):
    /// rebuild the view.
    #[error("the saved state of view {projection:?} does not decode ({source}); rebuild the view")]
    SavedState {
        /// The projection's name.
        projection: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The view's state could not be serialized for saving.
    #[error("the state of view {projection:?} does not serialize: {source}")]
    Serialize {
        /// The projection's name.
        projection: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The projection task panicked or was aborted.
    #[error("the projection task ended abnormally: {0}")]
    Task(String),
}

type EncodeView<V> = fn(&V) -> Result<Box<RawValue>, serde_json::Error>;
type DecodeView<V> = fn(&str) -> Result<V, serde_json::Error>;

/// A view restored from, and saved to, a [`ViewStore`] together with its
/// checkpoint: the part every projection runner shares (this crate's, and
/// those over other sources, such as Kafka's).
pub struct ViewPersistence<V> {
    store: Arc<dyn ViewStore>,
    encode: EncodeView<V>,
    decode: DecodeView<V>,
}

/// A view as saved: its state, its checkpoint and, for sources of several
/// logs, the next offset of each.
#[derive(Debug)]
pub struct RestoredView<V> {
    /// The view's state.
    pub view: V,
    /// See [`StoredView::checkpoint`].
    pub checkpoint: Position,
    /// See [`StoredView::offsets`].
    pub offsets: BTreeMap<String, u64>,
}

impl<V: Serialize + serde::de::DeserializeOwned> ViewPersistence<V> {
    /// Persistence of `V` in `store`, as JSON.
    pub fn new(store: impl ViewStore) -> Self {
        ViewPersistence {
            store: Arc::new(store),
            encode: |view| serde_json::value::to_raw_value(view),
            decode: |json| serde_json::from_str(json),
        }
    }
}

impl<V> ViewPersistence<V> {
    /// The saved view of projection `projection`, if any.
    ///
    /// # Errors
    /// [`ProjectionError::ViewStore`] when the store fails, and
    /// [`ProjectionError::SavedState`] when the saved state no longer decodes.
    pub async fn restore(&self, projection: &str) -> Result<Option<RestoredView<V>>, ProjectionError> {
        let Some(saved) = self.store.load().await? else {
            return Ok(None);
        };
        let view = (self.decode)(saved.state.get()).map_err(|source| ProjectionError::SavedState {
            projection: projection.to_owned(),
            source,
        })?;
        Ok(Some(RestoredView {
            view,
            checkpoint: saved.checkpoint,
            offsets: saved.offsets,
        }))
    }

    /// Saves the view as it is now in `shared`, with its checkpoint, as one
    /// document. The view is read-locked only while it is serialized.
    ///
    /// # Errors
    /// [`ProjectionError::Serialize`] and [`ProjectionError::ViewStore`].
    pub async fn save(
        &self,
        projection: &str,
        shared: &RwLock<V>,
        checkpoint: Position,
        offsets: BTreeMap<String, u64>,
    ) -> Result<(), ProjectionError> {
        let state = {
            let view = shared.read().unwrap_or_else(|p| p.into_inner());
            (self.encode)(&view).map_err(|source| ProjectionError::Serialize {
                projection: projection.to_owned(),
                source,
            })?
        };
        let stored = StoredView {
            checkpoint,
            offsets,
            state,
        };
        self.store.save(&stored).await?;
        Ok(())
    }
}

/// Configures and starts a projection of view `V` from store `S`.
///
/// ```
/// # use bookshelf_core::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize)] enum Ev { Added }
/// # impl DomainEvent for Ev {}
/// # #[derive(Default, Serialize, Deserialize)] struct Count(u64);
/// # impl View for Count { type Event = Ev; fn apply(&mut self, _: Envelope<Ev>) { self.0 += 1 } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let saved = InMemoryViewStore::new();
/// let running = ProjectionRunner::<Count, _>::new("count", store.clone())
///     .persist_to(saved.clone())
///     .start();
/// let count = running.handle();
/// // ... append events to `store`, then wait until the view has caught up:
/// count.wait_for(store.head().await?).await;
/// assert_eq!(count.read(|view| view.0), 0);
/// running.stop().await?; // saves the state and checkpoint in `saved`
/// # Ok(()) }
/// ```
pub struct ProjectionRunner<V: View, S> {
    name: String,
    store: S,
    codec: EventCodec<V::Event>,
    batch_size: usize,
    save_every: u64,
    persistence: Option<ViewPersistence<V>>,
    dead_letters: Arc<dyn DeadLetters>,
    unknown: UnknownEvents,
    category: Option<String>,
    rebuild: bool,
}

impl<V: View, S: EventStore> ProjectionRunner<V, S> {
    /// A projection named `name` (used in logs and dead letters) over
    /// `store`, not persisted, dead-lettering into memory.
    pub fn new(name: impl Into<String>, store: S) -> Self {
        ProjectionRunner {
            name: name.into(),
            store,
            codec: EventCodec::new(),
            batch_size: 512,
            save_every: 10_000,
            persistence: None,
            dead_letters: Arc::new(InMemoryDeadLetters::new()),
            unknown: UnknownEvents::Skip,
            category: None,
            rebuild: false,
        }
    }

    /// Saves the view's state and checkpoint in `store`, and resumes from
    /// there on start.
    pub fn persist_to(mut self, store: impl ViewStore) -> Self
    where
        V: Serialize + serde::de::DeserializeOwned,
    {
        self.persistence = Some(ViewPersistence::new(store));
        self
    }

    /// Saves after this many events (default 10,000), as well as on stop.
    pub fn save_every(mut self, events: u64) -> Self {
        self.save_every = events.max(1);
        self
    }

    /// Reads up to this many events at a time (default 512).
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events.max(1);
        self
    }

    /// Sets aside undecodable events here instead of in memory.
    pub fn dead_letters(mut self, sink: impl DeadLetters) -> Self {
        self.dead_letters = Arc::new(sink);
        self
    }

    /// What to do with events of types the view does not know.
    pub fn unknown_events(mut self, policy: UnknownEvents) -> Self {
        self.unknown = policy;
        self
    }

    /// Only events of streams in this category (see
    /// [`crate::StreamId::category`]).
    pub fn only_category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// Starts from an empty view at the start of the log, ignoring (and on the
    /// first save, replacing) what was saved.
    pub fn rebuild(mut self) -> Self {
        self.rebuild = true;
        self
    }

    /// Starts the projection on the current tokio runtime.
    pub fn start(self) -> RunningProjection<V> {
        let shared = Arc::new(RwLock::new(V::default()));
        let (progress_tx, progress) = watch::channel(Progress::Starting);
        let (stop_tx, stop) = watch::channel(false);
        let end = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(self.run(Arc::clone(&shared), progress_tx, Arc::clone(&end), stop));
        RunningProjection {
            handle: ProjectionHandle { shared, progress, end },
            stop: stop_tx,
            task,
        }
    }

    async fn run(
        self,
        shared: Arc<RwLock<V>>,
        progress: watch::Sender<Progress>,
        end: Arc<std::sync::atomic::AtomicU64>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let result = self.run_inner(&shared, &progress, &end, &mut stop).await;
        let ended = match &result {
            Ok(()) => Progress::Stopped,
            Err(error) => Progress::Failed(error.to_string()),
        };
        progress.send_modify(|p| *p = ended);
        result
    }

    async fn run_inner(
        &self,
        shared: &RwLock<V>,
        progress: &watch::Sender<Progress>,
        head: &std::sync::atomic::AtomicU64,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let mut checkpoint = self.restore(shared).await?;
        let see_head = || async {
            if let Ok(at) = self.store.head().await {
                head.fetch_max(at.0, std::sync::atomic::Ordering::Relaxed);
            }
        };
        see_head().await;
        progress.send_replace(Progress::At(checkpoint));
        tracing::info!(projection = %self.name, %checkpoint, "projection started");
        let mut subscription = self.store.subscribe(checkpoint).await?;
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut decoded = Vec::with_capacity(self.batch_size);
        let mut unsaved = 0u64;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                next = subscription.next_batch(&mut batch, self.batch_size) => next?,
            }
            let Some(last) = batch.last() else { continue };
            let end = last.position.next();
            for record in &batch {
                if record.position < checkpoint {
                    continue;
                }
                if let Some(event) = self.decode(record).await? {
                    decoded.push(event);
                }
            }
            {
                let mut view = shared.write().unwrap_or_else(|p| p.into_inner());
                for event in decoded.drain(..) {
                    let _span = crate::trace::event_span(&self.name, &event.event_type, &event.metadata).entered();
                    view.apply(event);
                }
            }
            unsaved += end.0.saturating_sub(checkpoint.0);
            checkpoint = checkpoint.max(end);
            if unsaved >= self.save_every {
                if let Err(error) = self.save(shared, checkpoint).await {
                    // The older saved checkpoint still matches its state:
                    // nothing is lost, more is replayed after a crash.
                    tracing::warn!(projection = %self.name, %error, "could not save the view; will retry");
                } else {
                    unsaved = 0;
                }
            }
            see_head().await;
            progress.send_replace(Progress::At(checkpoint));
            let end = head.load(std::sync::atomic::Ordering::Relaxed).max(checkpoint.0);
            crate::telemetry::progress(
                &self.name,
                &BTreeMap::from([(
                    crate::source::GLOBAL.to_owned(),
                    PartitionProgress {
                        position: checkpoint.0,
                        end: Some(end),
                    },
                )]),
            );
        }
        self.save(shared, checkpoint).await?;
        tracing::info!(projection = %self.name, %checkpoint, "projection stopped");
        Ok(())
    }

    /// Decodes one event, or sets it aside; `None` when it is not for this view.
    async fn decode(&self, record: &Arc<RecordedEvent>) -> Result<Option<Envelope<V::Event>>, ProjectionError> {
        if let Some(category) = &self.category {
            if record.stream_id.category() != category {
                return Ok(None);
            }
        }
        match self.codec.decode_envelope(record) {
            Ok(event) => Ok(Some(event)),
            Err(DecodeError::UnknownEventType { .. })
                if self.unknown == UnknownEvents::Skip && !self.codec.knows(&record.event_type) =>
            {
                Ok(None)
            }
            Err(error) => {
                set_aside(&*self.dead_letters, &self.name, record, &error).await?;
                Ok(None)
            }
        }
    }

    async fn restore(&self, shared: &RwLock<V>) -> Result<Position, ProjectionError> {
        let Some(persistence) = &self.persistence else {
            return Ok(Position::START);
        };
        if self.rebuild {
            tracing::info!(projection = %self.name, "rebuilding the view from the start of the log");
            return Ok(Position::START);
        }
        let Some(saved) = persistence.restore(&self.name).await? else {
            return Ok(Position::START);
        };
        *shared.write().unwrap_or_else(|p| p.into_inner()) = saved.view;
        Ok(saved.checkpoint)
    }

    async fn save(&self, shared: &RwLock<V>, checkpoint: Position) -> Result<(), ProjectionError> {
        match &self.persistence {
            Some(persistence) => persistence.save(&self.name, shared, checkpoint, BTreeMap::new()).await,
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Progress {
    Starting,
    At(Position),
    Stopped,
    Failed(String),
}

/// A running projection: stop it, or take handles to its view.
pub struct RunningProjection<V> {
    handle: ProjectionHandle<V>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ProjectionError>>,
}

impl<V: View> RunningProjection<V> {
    /// A handle to read the view; clone it freely.
    pub fn handle(&self) -> ProjectionHandle<V> {
        self.handle.clone()
    }

    /// Stops after the batch in hand, saves the view and its checkpoint, and
    /// returns how the projection ended.
    ///
    /// # Errors
    /// What stopped the projection, if it failed, or what failed the final save.
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

/// A cheap, cloneable handle to a running projection's view.
pub struct ProjectionHandle<V> {
    shared: Arc<RwLock<V>>,
    progress: watch::Receiver<Progress>,
    /// The store's head as the projection last saw it.
    end: Arc<std::sync::atomic::AtomicU64>,
}

impl<V> Clone for ProjectionHandle<V> {
    fn clone(&self) -> Self {
        ProjectionHandle {
            end: Arc::clone(&self.end),
            shared: Arc::clone(&self.shared),
            progress: self.progress.clone(),
        }
    }
}

impl<V: View> ProjectionHandle<V> {
    /// Answers a query from the view as it is now.
    pub fn read<R>(&self, query: impl FnOnce(&V) -> R) -> R {
        query(&self.view())
    }

    fn view(&self) -> RwLockReadGuard<'_, V> {
        self.shared.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The position of the next event the view will apply (`None` before the
    /// projection has loaded its saved state).
    pub fn checkpoint(&self) -> Option<Position> {
        match &*self.progress.borrow() {
            Progress::At(position) => Some(*position),
            _ => None,
        }
    }

    /// Waits until the view has applied every event before `position`
    /// (for example, the store's [`head`](EventStore::head) after a write),
    /// or the projection has ended. Returns whether the position was reached.
    pub async fn wait_for(&self, position: Position) -> bool {
        let mut progress = self.progress.clone();
        let reached = progress
            .wait_for(|p| {
                matches!(p, Progress::At(at) if *at >= position) || matches!(p, Progress::Stopped | Progress::Failed(_))
            })
            .await;
        matches!(reached.as_deref(), Ok(Progress::At(_)))
    }

    /// The position (the next event to apply) and the store's head as last
    /// seen, and so the lag, under the name of the store's one log,
    /// [`GLOBAL`](crate::source::GLOBAL).
    pub fn progress(&self) -> BTreeMap<String, PartitionProgress> {
        let position = self.checkpoint().map_or(0, |p| p.0);
        let end = self.end.load(std::sync::atomic::Ordering::Relaxed).max(position);
        BTreeMap::from([(
            crate::source::GLOBAL.to_owned(),
            PartitionProgress {
                position,
                end: Some(end),
            },
        )])
    }

    /// Why the projection failed, if it did.
    pub fn failure(&self) -> Option<String> {
        match &*self.progress.borrow() {
            Progress::Failed(reason) => Some(reason.clone()),
            _ => None,
        }
    }
}

/// Logs an event that `reader` (a projection or a process) cannot decode,
/// with where it is and why, and puts it in `dead_letters`.
pub(crate) async fn set_aside(
    dead_letters: &dyn DeadLetters,
    reader: &str,
    record: &Arc<RecordedEvent>,
    error: &DecodeError,
) -> Result<(), ProjectionError> {
    tracing::warn!(
        reader,
        stream = %record.stream_id,
        version = %record.version,
        position = %record.position,
        event_type = %record.event_type,
        %error,
        "poison event set aside"
    );
    crate::telemetry::dead_letter(reader);
    dead_letters
        .put(DeadLetter {
            projection: reader.to_owned(),
            event: Arc::clone(record),
            reason: error.to_string(),
        })
        .await?;
    Ok(())
}
