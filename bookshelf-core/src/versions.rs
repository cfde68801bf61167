//! Side-by-side rebuilds of a view: a new version of a view (its code
//! changed) is built beside the one answering, from the start of the log,
//! while the old one goes on answering; once the new one has caught up, it
//! takes over in one step.
//!
//! [`Versions`] answers queries from the version it serves. A query is
//! answered from one version's state, whole: never from a version still
//! being built, never half from each. Versions may be views of different
//! types (the new code), each giving the queries the same answer type `T`.
//! [`Versions::rebuild`] takes the new version's running runner (named
//! apart, `NAME@vN` by convention, see [`versioned`], so that it saves its
//! state and sets its letters aside apart from the old one), waits until
//! it has read the log as far as the version served has, and swaps. The
//! old version keeps running, ready to serve again
//! ([`Versions::serve_previous`], in one step too), until
//! [`Versions::drop_previous`] stops it.
//!
//! Which version serves, which is kept and the highest number built are
//! remembered in a [`ViewStore`] when the versions are opened with
//! [`Versions::open`]: a restart serves the version that served before it
//! (resumed from its own saved state) and keeps the one that was kept. A
//! version still building when the process stopped is not remembered: its
//! rebuild is started again. With [`Versions::forgetting`], a version once
//! dropped has its saved state removed (and whatever else it kept), so
//! what the store keeps does not grow with each rebuild.
//!
//! ```
//! use bookshelf_core::versions::{versioned, whole, Versions};
//! use bookshelf_core::{Envelope, DomainEvent, InMemoryStore, ProjectionRunner, View};
//! # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] enum Ev { Read }
//! # impl DomainEvent for Ev {}
//! #[derive(Default)]
//! struct Reads(u64);
//! impl View for Reads {
//!     type Event = Ev;
//!     fn apply(&mut self, _: Envelope<Ev>) { self.0 += 1 }
//! }
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = InMemoryStore::new();
//! let v1 = ProjectionRunner::<Reads, _>::new(versioned("reads", 1), store.clone()).start();
//! let reads = Versions::new(1, v1, whole);
//! // The code changed: version 2, built from the start beside version 1.
//! let v2 = ProjectionRunner::<Reads, _>::new(versioned("reads", 2), store.clone()).start();
//! reads.rebuild(2, v2, whole).await?;
//! assert_eq!(reads.read(|reads| reads.0), 0);
//! assert_eq!(reads.serving(), 2);
//! reads.drop_previous().await?; // version 1 stopped
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::projection::{ProjectionError, StoredView, ViewStore, ViewStoreError};
use crate::runner::{Ended, Running, Until, ViewState};
use crate::source::Checkpoint;

/// The name of version `version` of view `name`: `NAME@vVERSION`, and for
/// version 1 `NAME` itself, so that a view that never had another version
/// keeps its name (and its saved state).
pub fn versioned(name: &str, version: u32) -> String {
    match version {
        1 => name.to_owned(),
        _ => format!("{name}@v{version}"),
    }
}

/// The name under which the versions of view `name` are remembered
/// (`NAME@versions`): pass [`Versions::open`] the view store of that name.
/// Listings of saved views leave it out by this suffix ([`is_versions`]).
pub fn versions_of(name: &str) -> String {
    format!("{name}{VERSIONS_SUFFIX}")
}

const VERSIONS_SUFFIX: &str = "@versions";

/// Whether a saved view's name is where [`Versions::open`] remembers the
/// versions of a view (see [`versions_of`]), rather than a view.
pub fn is_versions(name: &str) -> bool {
    name.ends_with(VERSIONS_SUFFIX)
}

/// The whole view as the answer to queries: for versions of one view type.
pub fn whole<V>(view: &V) -> &V {
    view
}

/// The versions of a view, as remembered: which serves, which is kept,
/// the highest number built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The version that answers queries.
    pub serving: u32,
    /// The version it replaced (or that replaced it, after
    /// [`Versions::serve_previous`]), still running until dropped.
    pub previous: Option<u32>,
    /// The highest version number that ever served: the next rebuild builds
    /// the one after it, so no two builds share a name.
    pub highest: u32,
}

impl Default for Kept {
    /// A view that never had another version: version 1 serves.
    fn default() -> Self {
        Kept {
            serving: 1,
            previous: None,
            highest: 1,
        }
    }
}

impl Kept {
    /// The number the next rebuild builds.
    pub fn next(&self) -> u32 {
        self.highest + 1
    }

    /// What `store` remembers, or a view that never had another version.
    ///
    /// # Errors
    /// When the store fails or holds something else.
    pub async fn load(store: &dyn ViewStore) -> Result<Kept, ViewStoreError> {
        match store.load().await? {
            None => Ok(Kept::default()),
            Some(saved) => serde_json::from_str(saved.state.get()).map_err(|e| ViewStoreError(Box::new(e))),
        }
    }

    async fn save(&self, store: &dyn ViewStore) -> Result<(), ViewStoreError> {
        let state = serde_json::value::to_raw_value(self).map_err(|e| ViewStoreError(Box::new(e)))?;
        store.save(&StoredView::new(&Checkpoint::new(), state)).await
    }
}

/// How a version's state is read: the query, handed the answer type.
type Reader<T> = Arc<dyn Fn(&mut dyn FnMut(&T)) + Send + Sync>;

/// What becomes of a version once dropped: its saved state removed, its
/// dead letters forgotten.
type Forget = Arc<dyn Fn(u32) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync>;

/// An error from a [`Versions::forgetting`] step.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Waits on a version's runner.
type Waiter = Arc<dyn Fn(Until) -> Pin<Box<dyn Future<Output = Result<(), Ended>> + Send>> + Send + Sync>;

/// A version as queries see it.
struct Serving<T: ?Sized> {
    number: u32,
    reader: Reader<T>,
    reached: Arc<dyn Fn() -> Option<Checkpoint> + Send + Sync>,
    waiter: Waiter,
}

impl<T: ?Sized> Clone for Serving<T> {
    fn clone(&self) -> Self {
        Serving {
            number: self.number,
            reader: Arc::clone(&self.reader),
            reached: Arc::clone(&self.reached),
            waiter: Arc::clone(&self.waiter),
        }
    }
}

/// A version's runner, whatever its view's type.
trait Stop: Send {
    fn stop(self: Box<Self>) -> Pin<Box<dyn Future<Output = Result<(), ProjectionError>> + Send>>;
}

impl<V: Send + Sync + 'static> Stop for Running<ViewState<V>> {
    fn stop(self: Box<Self>) -> Pin<Box<dyn Future<Output = Result<(), ProjectionError>> + Send>> {
        Box::pin(Running::stop(*self))
    }
}

/// A version that runs: how queries see it, and its runner.
struct Version<T: ?Sized> {
    serving: Serving<T>,
    runner: Box<dyn Stop>,
}

impl<T: ?Sized + 'static> Version<T> {
    fn of<V: Send + Sync + 'static>(number: u32, running: Running<ViewState<V>>, answer: fn(&V) -> &T) -> Self {
        let (state, handle, waiting) = (running.reads().clone(), running.handle(), running.handle());
        let serving = Serving {
            number,
            reader: Arc::new(move |query: &mut dyn FnMut(&T)| state.read(|view| query(answer(view)))),
            reached: Arc::new(move || handle.checkpoint()),
            waiter: Arc::new(move |until| {
                let handle = waiting.clone();
                Box::pin(async move { handle.wait_for(until).await })
            }),
        };
        Version {
            serving,
            runner: Box::new(running),
        }
    }
}

/// The versions' runners, owned here (queries never hold them), and what
/// is remembered of them.
struct Runners<T: ?Sized> {
    current: Box<dyn Stop>,
    previous: Option<Version<T>>,
    highest: u32,
}

/// The versions of one view, answering queries with `T`: the one served,
/// and the one it replaced, still running until dropped. Cloning gives
/// another handle to the same versions.
pub struct Versions<T: ?Sized> {
    /// Swapped in one step.
    serving: Arc<RwLock<Serving<T>>>,
    runners: Arc<Mutex<Runners<T>>>,
    /// Where the versions are remembered, if anywhere; held while a change
    /// is made and remembered, so that changes are remembered in order.
    memory: Arc<tokio::sync::Mutex<Option<Box<dyn ViewStore>>>>,
    /// What is done with a version once dropped, if anything.
    forget: Option<Forget>,
}

impl<T: ?Sized> Clone for Versions<T> {
    fn clone(&self) -> Self {
        Versions {
            serving: Arc::clone(&self.serving),
            runners: Arc::clone(&self.runners),
            memory: Arc::clone(&self.memory),
            forget: self.forget.clone(),
        }
    }
}

/// Why versions did not change as asked.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    /// The new version's runner ended before it caught up; the old version
    /// still serves.
    #[error("version {version} ended before it caught up: {ended}")]
    Ended {
        /// The version.
        version: u32,
        /// How it ended.
        ended: Ended,
    },
    /// A version of that number is served already.
    #[error("version {0} is the version served")]
    Served(u32),
    /// No version is kept beside the one serving.
    #[error("no version is kept beside version {0}")]
    NoneKept(u32),
    /// The change was made, but the store did not remember it: a restart
    /// serves what it remembered before.
    #[error("version {serving} serves, but that was not remembered: {source}")]
    NotRemembered {
        /// The version serving now.
        serving: u32,
        /// Why.
        #[source]
        source: ViewStoreError,
    },
    /// The version dropped failed its last save.
    #[error("version {version} stopped with an error: {source}")]
    Stopped {
        /// The version.
        version: u32,
        /// Why.
        #[source]
        source: ProjectionError,
    },
    /// The version was dropped, but what [`Versions::forgetting`] does
    /// with it failed (its saved state may still be there).
    #[error("version {version} was dropped, but not forgotten: {source}")]
    NotForgotten {
        /// The version.
        version: u32,
        /// Why.
        #[source]
        source: BoxError,
    },
}

impl<T: ?Sized + 'static> Versions<T> {
    /// Serves version `number`, run by `running`, whose view gives queries
    /// `answer(view)`. Nothing is remembered (see [`open`](Self::open)).
    pub fn new<V: Send + Sync + 'static>(number: u32, running: Running<ViewState<V>>, answer: fn(&V) -> &T) -> Self {
        let version = Version::of(number, running, answer);
        Versions {
            serving: Arc::new(RwLock::new(version.serving)),
            runners: Arc::new(Mutex::new(Runners {
                current: version.runner,
                previous: None,
                highest: number,
            })),
            memory: Arc::new(tokio::sync::Mutex::new(None)),
            forget: None,
        }
    }

    /// Has `forget` done with each version once it is dropped (by
    /// [`drop_previous`](Self::drop_previous), or replaced as the kept one
    /// by a rebuild), after its runner's last save: remove its saved state
    /// ([`ViewStore::remove`]) and forget its dead letters, so that what
    /// is kept does not grow with each rebuild. Call it before cloning.
    #[must_use]
    pub fn forgetting<F, Fut>(mut self, forget: F) -> Self
    where
        F: Fn(u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.forget = Some(Arc::new(move |version| Box::pin(forget(version))));
        self
    }

    /// Stops `version`'s runner, then forgets it.
    async fn finish(&self, number: u32, runner: Box<dyn Stop>) -> Result<(), VersionsError> {
        let stopped = runner.stop().await;
        if let Some(forget) = &self.forget {
            forget(number).await.map_err(|source| VersionsError::NotForgotten {
                version: number,
                source,
            })?;
        }
        stopped.map_err(|source| VersionsError::Stopped {
            version: number,
            source,
        })
    }

    /// Serves the version `memory` remembers (version 1 when it remembers
    /// none), started by `start` (handed its number; it resumes from its
    /// own saved state), and starts the version kept beside it, if one is;
    /// each change after is remembered there. For versions of one view
    /// type; the memory's name is [`versions_of`] the view's.
    ///
    /// # Errors
    /// When `memory` fails or holds something else.
    pub async fn open<V: Send + Sync + 'static>(
        memory: impl ViewStore,
        start: impl Fn(u32) -> Running<ViewState<V>>,
        answer: fn(&V) -> &T,
    ) -> Result<Self, ViewStoreError> {
        let kept = Kept::load(&memory).await?;
        let versions = Versions::new(kept.serving, start(kept.serving), answer);
        {
            let mut runners = versions.runners();
            runners.highest = kept.highest.max(kept.serving);
            runners.previous = kept.previous.map(|number| Version::of(number, start(number), answer));
        }
        *versions.memory.lock().await = Some(Box::new(memory));
        Ok(versions)
    }

    fn now(&self) -> Serving<T> {
        self.serving.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Answers `query` from the state of the version served now, whole.
    pub fn read<R>(&self, query: impl FnOnce(&T) -> R) -> R {
        let (mut query, mut answer) = (Some(query), None);
        (self.now().reader)(&mut |view| {
            if let Some(query) = query.take() {
                answer = Some(query(view));
            }
        });
        answer.expect("a reader hands its view to the query once")
    }

    /// Waits until the version served (when called) has taken every record
    /// before `until`, or has ended (see [`Handle::wait_for`](crate::Handle::wait_for)).
    ///
    /// # Errors
    /// [`Ended`] when it stopped or failed first.
    pub async fn wait_for(&self, until: impl Into<Until>) -> Result<(), Ended> {
        (self.now().waiter)(until.into()).await
    }

    /// The number of the version served now.
    pub fn serving(&self) -> u32 {
        self.now().number
    }

    /// What there is now: the version serving, the one kept, the highest.
    pub fn kept(&self) -> Kept {
        let runners = self.runners();
        Kept {
            serving: self.serving(),
            previous: runners.previous.as_ref().map(|version| version.serving.number),
            highest: runners.highest,
        }
    }

    /// Builds version `number`, run by `running` (started from the start of
    /// the log, named apart) whose view gives queries `answer(view)`,
    /// beside the version served; once it has read the log as far as the
    /// version served had (checked twice, as that one reads on), serves it
    /// instead, in one step. The version it replaces keeps running until
    /// [`drop_previous`](Self::drop_previous); one replaced before and not
    /// dropped is stopped then, and forgotten (see
    /// [`forgetting`](Self::forgetting)).
    ///
    /// # Errors
    /// [`VersionsError::Ended`] when the new version's runner ended first
    /// (the version served stays); [`VersionsError::Served`] when `number`
    /// is the version served; [`VersionsError::NotRemembered`] when it
    /// serves but the memory failed.
    pub async fn rebuild<V: Send + Sync + 'static>(
        &self,
        number: u32,
        running: Running<ViewState<V>>,
        answer: fn(&V) -> &T,
    ) -> Result<(), VersionsError> {
        if self.serving() == number {
            let _ = running.stop().await;
            return Err(VersionsError::Served(number));
        }
        for _ in 0..2 {
            let until = loop {
                // The version served has restored its state: as far as it read.
                if let Some(reached) = (self.now().reached)() {
                    break reached;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let until: BTreeMap<String, u64> = until.iter().map(|(p, mark)| (p.to_owned(), mark.next)).collect();
            if let Err(ended) = running.wait_for(Until::from(until)).await {
                let _ = running.stop().await;
                return Err(VersionsError::Ended { version: number, ended });
            }
        }
        let memory = self.memory.lock().await;
        let dropped = {
            let mut runners = self.runners();
            let new = Version::of(number, running, answer);
            runners.highest = runners.highest.max(number);
            let old = self.swap(&mut runners, new);
            runners.previous.replace(old)
        };
        if let Some(dropped) = dropped {
            let number = dropped.serving.number;
            if let Err(error) = self.finish(number, dropped.runner).await {
                tracing::warn!(version = number, %error, "a version no longer kept did not end cleanly");
            }
        }
        tracing::info!(version = number, "a rebuilt version serves");
        self.remember(memory.as_deref()).await
    }

    /// Serves `new` in place of the version serving, which it returns.
    fn swap(&self, runners: &mut Runners<T>, new: Version<T>) -> Version<T> {
        let serving = std::mem::replace(
            &mut *self.serving.write().unwrap_or_else(|p| p.into_inner()),
            new.serving,
        );
        let runner = std::mem::replace(&mut runners.current, new.runner);
        Version { serving, runner }
    }

    async fn remember(&self, memory: Option<&dyn ViewStore>) -> Result<(), VersionsError> {
        let Some(memory) = memory else { return Ok(()) };
        let kept = self.kept();
        kept.save(memory).await.map_err(|source| VersionsError::NotRemembered {
            serving: kept.serving,
            source,
        })
    }

    fn runners(&self) -> std::sync::MutexGuard<'_, Runners<T>> {
        self.runners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version kept beside the one serving (the one it replaced), if
    /// one still runs.
    pub fn previous(&self) -> Option<u32> {
        self.kept().previous
    }

    /// Serves the version kept again, in one step (it kept reading the log
    /// all along), and keeps the one it replaces: going back after a
    /// rebuild that answers wrongly. Returns the version serving now.
    ///
    /// # Errors
    /// [`VersionsError::NoneKept`] when no version is kept;
    /// [`VersionsError::NotRemembered`] when it serves but the memory failed.
    pub async fn serve_previous(&self) -> Result<u32, VersionsError> {
        let memory = self.memory.lock().await;
        let serving = {
            let mut runners = self.runners();
            let previous = runners
                .previous
                .take()
                .ok_or_else(|| VersionsError::NoneKept(self.serving()))?;
            let number = previous.serving.number;
            let replaced = self.swap(&mut runners, previous);
            runners.previous = Some(replaced);
            number
        };
        tracing::info!(version = serving, "the version kept serves again");
        self.remember(memory.as_deref()).await?;
        Ok(serving)
    }

    /// Stops the version kept beside the one serving, if one runs, and
    /// forgets it (see [`forgetting`](Self::forgetting) for its saved
    /// state); returns its number.
    ///
    /// # Errors
    /// [`VersionsError::Stopped`] when its runner's last save failed and
    /// [`VersionsError::NotForgotten`] (it is dropped all the same);
    /// [`VersionsError::NotRemembered`].
    pub async fn drop_previous(&self) -> Result<Option<u32>, VersionsError> {
        let memory = self.memory.lock().await;
        let Some(previous) = self.runners().previous.take() else {
            return Ok(None);
        };
        let version = previous.serving.number;
        // Forgotten before it is no longer remembered: a crash between the
        // two finds it kept, builds it again, and it is dropped again.
        let finished = self.finish(version, previous.runner).await;
        self.remember(memory.as_deref()).await?;
        finished?;
        Ok(Some(version))
    }

    /// Stops every version (what a service does on shutdown); what is
    /// remembered stays.
    ///
    /// # Errors
    /// What the last save of a version failed with.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        let (current, previous) = {
            let mut runners = self.runners();
            let current = std::mem::replace(&mut runners.current, Box::new(Stopped));
            (current, runners.previous.take())
        };
        let previous = match previous {
            Some(previous) => previous.runner.stop().await,
            None => Ok(()),
        };
        current.stop().await?;
        previous
    }
}

/// What is left in place of a version stopped for good.
struct Stopped;

impl Stop for Stopped {
    fn stop(self: Box<Self>) -> Pin<Box<dyn Future<Output = Result<(), ProjectionError>> + Send>> {
        Box::pin(async { Ok(()) })
    }
}
