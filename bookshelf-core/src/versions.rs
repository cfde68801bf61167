//! Side-by-side rebuilds of a view: a new version of a view (its code
//! changed) is built beside the one answering, from the start of the log,
//! while the old one goes on answering; once the new one has caught up, it
//! takes over in one step.
//!
//! [`Versions`] answers queries from the version it serves. A query is
//! answered from one version's state, whole: never from a version still
//! being built, never half from each. Versions may be views of different
//! types (the new code), each giving the queries the same answer type `T`. [`Versions::rebuild`] takes the new
//! version's running runner (named apart, `NAME@vN` by convention, see
//! [`versioned`], so that it saves its state and sets its letters aside
//! apart from the old one), waits until it has read the log as far as the
//! version served has, and swaps. The old version keeps running, and stays
//! ready to serve again, until [`Versions::drop_previous`] stops it.
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

use crate::projection::ProjectionError;
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

/// The whole view as the answer to queries: for versions of one view type.
pub fn whole<V>(view: &V) -> &V {
    view
}

/// How a version's state is read: the query, handed the answer type.
type Reader<T> = Arc<dyn Fn(&mut dyn FnMut(&T)) + Send + Sync>;

/// Waits on a version's runner.
type Waiter = Arc<dyn Fn(Until) -> Pin<Box<dyn Future<Output = Result<(), Ended>> + Send>> + Send + Sync>;

/// The version served: what queries read.
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

/// The runners of the versions, owned here (queries never hold them).
struct Runners {
    current: Box<dyn Stop>,
    previous: Option<(u32, Box<dyn Stop>)>,
}

/// The versions of one view, answering queries with `T`: the one served,
/// and the one it replaced, still running until dropped. Cloning gives
/// another handle to the same versions.
pub struct Versions<T: ?Sized> {
    /// Swapped in one step.
    serving: Arc<RwLock<Serving<T>>>,
    runners: Arc<Mutex<Runners>>,
}

impl<T: ?Sized> Clone for Versions<T> {
    fn clone(&self) -> Self {
        Versions {
            serving: Arc::clone(&self.serving),
            runners: Arc::clone(&self.runners),
        }
    }
}

/// Why a rebuild did not take over.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
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
}

/// What version `number`, run by `running`, serves through `answer`.
fn serving<V, T>(number: u32, running: &Running<ViewState<V>>, answer: fn(&V) -> &T) -> Serving<T>
where
    V: Send + Sync + 'static,
    T: ?Sized + 'static,
{
    let (state, handle, waiting) = (running.reads().clone(), running.handle(), running.handle());
    Serving {
        number,
        reader: Arc::new(move |query: &mut dyn FnMut(&T)| state.read(|view| query(answer(view)))),
        reached: Arc::new(move || handle.checkpoint()),
        waiter: Arc::new(move |until| {
            let handle = waiting.clone();
            Box::pin(async move { handle.wait_for(until).await })
        }),
    }
}

impl<T: ?Sized + 'static> Versions<T> {
    /// Serves version `number`, run by `running`, whose view gives queries
    /// `answer(view)`.
    pub fn new<V: Send + Sync + 'static>(number: u32, running: Running<ViewState<V>>, answer: fn(&V) -> &T) -> Self {
        Versions {
            serving: Arc::new(RwLock::new(serving(number, &running, answer))),
            runners: Arc::new(Mutex::new(Runners {
                current: Box::new(running),
                previous: None,
            })),
        }
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

    /// Builds version `number`, run by `running` (started from the start of
    /// the log, named apart) whose view gives queries `answer(view)`,
    /// beside the version served; once it has read the log as far as the
    /// version served had (checked twice, as that one reads on), serves it
    /// instead, in one step. The version it replaces keeps running until
    /// [`drop_previous`](Self::drop_previous); one replaced before and not
    /// dropped is stopped then.
    ///
    /// # Errors
    /// [`RebuildError::Ended`] when the new version's runner ended first
    /// (the version served stays); [`RebuildError::Served`] when `number`
    /// is the version served.
    pub async fn rebuild<V: Send + Sync + 'static>(
        &self,
        number: u32,
        running: Running<ViewState<V>>,
        answer: fn(&V) -> &T,
    ) -> Result<(), RebuildError> {
        if self.serving() == number {
            let _ = running.stop().await;
            return Err(RebuildError::Served(number));
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
                return Err(RebuildError::Ended { version: number, ended });
            }
        }
        let (replaced, dropped) = {
            // The version served and the runners swap together.
            let mut runners = self.runners();
            let new = serving(number, &running, answer);
            let replaced = std::mem::replace(&mut *self.serving.write().unwrap_or_else(|p| p.into_inner()), new).number;
            let old = std::mem::replace(&mut runners.current, Box::new(running));
            (replaced, runners.previous.replace((replaced, old)))
        };
        if let Some((dropped, version)) = dropped {
            if let Err(error) = version.stop().await {
                tracing::warn!(version = dropped, %error, "a version no longer kept did not stop cleanly");
            }
        }
        tracing::info!(version = number, replaced, "a rebuilt version serves");
        Ok(())
    }

    fn runners(&self) -> std::sync::MutexGuard<'_, Runners> {
        self.runners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version served before the last swap, if it still runs.
    pub fn previous(&self) -> Option<u32> {
        self.runners().previous.as_ref().map(|(number, _)| *number)
    }

    /// Stops the version served before the last swap, if it still runs.
    ///
    /// # Errors
    /// What its runner's last save failed with.
    pub async fn drop_previous(&self) -> Result<(), ProjectionError> {
        let previous = self.runners().previous.take();
        match previous {
            Some((_, version)) => version.stop().await,
            None => Ok(()),
        }
    }

    /// Stops every version (what a service does on shutdown).
    ///
    /// # Errors
    /// What the last save of the version served failed with.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        self.drop_previous().await?;
        let current = std::mem::replace(&mut self.runners().current, Box::new(Stopped));
        current.stop().await
    }
}

/// What is left in place of a version stopped for good.
struct Stopped;

impl Stop for Stopped {
    fn stop(self: Box<Self>) -> Pin<Box<dyn Future<Output = Result<(), ProjectionError>> + Send>> {
        Box::pin(async { Ok(()) })
    }
}
