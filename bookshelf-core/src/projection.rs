//! Views kept in memory: the projection runner, and where a view's state
//! is saved together with its checkpoint.
//!
//! # Delivery and restart
//!
//! A [`ProjectionRunner`] is the one [`Runner`] folding a [`View`]: it reads
//! the log from the view's checkpoint, decodes each event, and applies it.
//! Every `save_every` records, and when stopped, it saves the view's state
//! **and** its checkpoint as one document in a [`ViewStore`]. After a crash
//! it starts from that document: the records after the checkpoint are read
//! again and applied to the state saved with that checkpoint, so each event
//! is reflected exactly once. What the runner does with poison events and
//! records, and with events of other types, is written once, in
//! [`crate::runner`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::Position;
use crate::runner::{Batch, Fold, Runner, ViewState};
use crate::source::{Checkpoint, EventSource};
use crate::store::StoreError;
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

impl StoredView {
    /// `state`, saved with `checkpoint`, the checkpoint it reflects (in the
    /// form [`Checkpoint::to_saved`] gives).
    pub fn new(checkpoint: &Checkpoint, state: Box<RawValue>) -> StoredView {
        let (checkpoint, offsets) = checkpoint.to_saved();
        StoredView {
            checkpoint,
            offsets,
            state,
        }
    }

    /// The checkpoint the saved state reflects.
    pub fn reflects(&self) -> Checkpoint {
        Checkpoint::from_saved(self.checkpoint, &self.offsets)
    }
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

    /// Removes the saved view, if there is one (what becomes of a version
    /// of a view once dropped, see [`crate::versions`]); a load after it
    /// finds nothing.
    ///
    /// # Errors
    /// When the backend fails; by default, for a store that cannot remove
    /// what it saved (every store of this crate and the backends' can).
    async fn remove(&self) -> Result<(), ViewStoreError> {
        Err(ViewStoreError("this view store cannot remove what it saved".into()))
    }
}

/// A boxed view store is one too: a program can choose its backend at run
/// time.
#[async_trait]
impl ViewStore for Box<dyn ViewStore> {
    async fn load(&self) -> Result<Option<StoredView>, ViewStoreError> {
        (**self).load().await
    }

    async fn save(&self, view: &StoredView) -> Result<(), ViewStoreError> {
        (**self).save(view).await
    }

    async fn remove(&self) -> Result<(), ViewStoreError> {
        (**self).remove().await
    }
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

    async fn remove(&self) -> Result<(), ViewStoreError> {
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = None;
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

    async fn remove(&self) -> Result<(), ViewStoreError> {
        match tokio::fs::remove_file(&self.path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ViewStoreError(Box::new(e))),
            _ => Ok(()),
        }
    }
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
/// checkpoint: for folds that keep their state in memory.
pub struct ViewPersistence<V> {
    store: Arc<dyn ViewStore>,
    encode: EncodeView<V>,
    decode: DecodeView<V>,
}

/// A view as saved: its state and its checkpoint.
#[derive(Debug)]
pub struct RestoredView<V> {
    /// The view's state.
    pub view: V,
    /// The checkpoint the state reflects.
    pub checkpoint: Checkpoint,
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
            checkpoint: saved.reflects(),
        }))
    }

    /// Saves the view as it is now in `shared`, with `checkpoint`, as one
    /// document. The view is read-locked only while it is serialized.
    ///
    /// # Errors
    /// [`ProjectionError::Serialize`] and [`ProjectionError::ViewStore`].
    pub async fn save(
        &self,
        projection: &str,
        shared: &RwLock<V>,
        checkpoint: &Checkpoint,
    ) -> Result<(), ProjectionError> {
        let state = {
            let view = shared.read().unwrap_or_else(|p| p.into_inner());
            (self.encode)(&view).map_err(|source| ProjectionError::Serialize {
                projection: projection.to_owned(),
                source,
            })?
        };
        self.store.save(&StoredView::new(checkpoint, state)).await?;
        Ok(())
    }
}

/// The runner of a [`View`] kept in memory: [`Runner`] folding a
/// [`ViewFold`].
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
/// count.wait_for(store.head().await?).await?;
/// assert_eq!(count.read(|view| view.0), 0);
/// running.stop().await?; // saves the state and checkpoint in `saved`
/// # Ok(()) }
/// ```
pub type ProjectionRunner<V, S> = Runner<ViewFold<V>, S>;

/// A [`View`] folded in memory, saved with its checkpoint in a
/// [`ViewStore`] when persisted.
pub struct ViewFold<V> {
    name: String,
    state: ViewState<V>,
    persistence: Option<ViewPersistence<V>>,
    save_every: u64,
    save_when_caught_up: bool,
    rebuild: bool,
    unsaved: u64,
}

impl<V: View> ViewFold<V> {
    /// An empty view named `name` (in reports), not persisted.
    pub fn new(name: impl Into<String>) -> Self {
        ViewFold {
            name: name.into(),
            state: ViewState::new(V::default()),
            persistence: None,
            save_every: 10_000,
            save_when_caught_up: false,
            rebuild: false,
            unsaved: 0,
        }
    }

    async fn save(&self, checkpoint: &Checkpoint) -> Result<(), ProjectionError> {
        match &self.persistence {
            Some(persistence) => persistence.save(&self.name, self.state.lock(), checkpoint).await,
            None => Ok(()),
        }
    }
}

impl<V: View, S: EventSource> Runner<ViewFold<V>, S> {
    /// A projection named `name` (used in logs and dead letters) over
    /// `source`, not persisted, dead-lettering into memory.
    pub fn new(name: impl Into<String>, source: S) -> Self {
        let name = name.into();
        Runner::folding(name.clone(), source, ViewFold::new(name))
    }

    /// Saves the view's state and checkpoint in `store`, and resumes from
    /// there on start.
    #[must_use]
    pub fn persist_to(mut self, store: impl ViewStore) -> Self
    where
        V: Serialize + serde::de::DeserializeOwned,
    {
        self.fold.persistence = Some(ViewPersistence::new(store));
        self
    }

    /// Saves after this many records (default 10,000), as well as on stop.
    #[must_use]
    pub fn save_every(mut self, records: u64) -> Self {
        self.fold.save_every = records.max(1);
        self
    }

    /// Also saves whenever it has caught up with the log (off by default):
    /// a restart then reads little again, at the cost of a save per burst of
    /// writes.
    #[must_use]
    pub fn save_when_caught_up(mut self) -> Self {
        self.fold.save_when_caught_up = true;
        self
    }

    /// Starts from an empty view at the start of the log, ignoring (and on the
    /// first save, replacing) what was saved.
    #[must_use]
    pub fn rebuild(mut self) -> Self {
        self.fold.rebuild = true;
        self
    }
}

#[async_trait]
impl<V: View> Fold for ViewFold<V> {
    type Event = V::Event;
    type Reads = ViewState<V>;

    fn reads(&self) -> ViewState<V> {
        self.state.clone()
    }

    async fn restore(&mut self) -> Result<Checkpoint, ProjectionError> {
        let Some(persistence) = &self.persistence else {
            return Ok(Checkpoint::new());
        };
        if self.rebuild {
            tracing::info!(projection = %self.name, "rebuilding the view from the start of the log");
            return Ok(Checkpoint::new());
        }
        let Some(saved) = persistence.restore(&self.name).await? else {
            return Ok(Checkpoint::new());
        };
        self.state.write(|view| *view = saved.view);
        Ok(saved.checkpoint)
    }

    async fn apply(&mut self, batch: Batch<'_, V::Event>) -> Result<(), ProjectionError> {
        self.state.write(|view| {
            for decoded in batch.events.drain(..) {
                let event = decoded.event;
                let _span = crate::trace::event_span(&self.name, &event.event_type, &event.metadata).entered();
                view.apply(event);
            }
        });
        self.unsaved += batch.records as u64;
        let due = self.unsaved >= self.save_every || (self.save_when_caught_up && batch.caught_up);
        if batch.save {
            self.save(batch.to).await?;
            self.unsaved = 0;
        } else if self.unsaved > 0 && due {
            match self.save(batch.to).await {
                Ok(()) => self.unsaved = 0,
                // The older saved checkpoint still matches its state:
                // nothing is lost, more is read again after a crash.
                Err(error) => tracing::warn!(projection = %self.name, %error, "could not save the view; will retry"),
            }
        }
        Ok(())
    }

    async fn stop(&mut self, at: &Checkpoint) -> Result<(), ProjectionError> {
        self.save(at).await
    }
}
