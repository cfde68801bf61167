//! What the process runner and the change feed share: a task that reports
//! the position it has reached and stops when asked.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::envelope::Position;
use crate::projection::ProjectionError;

/// A spawned runner task, its progress and its stop switch.
pub(crate) struct RunnerTask {
    progress: watch::Receiver<Option<Position>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ProjectionError>>,
}

impl RunnerTask {
    /// Spawns `run(progress, stopped)`: it reports the next position it will
    /// read on `progress`, and ends when `stopped` changes.
    pub(crate) fn spawn<F>(run: impl FnOnce(watch::Sender<Option<Position>>, watch::Receiver<bool>) -> F) -> Self
    where
        F: Future<Output = Result<(), ProjectionError>> + Send + 'static,
    {
        let (progress, watched) = watch::channel(None);
        let (stop, stopped) = watch::channel(false);
        RunnerTask {
            progress: watched,
            stop,
            task: tokio::spawn(run(progress, stopped)),
        }
    }

    /// Waits until the task has reported `position` or beyond, or ended;
    /// returns whether the position was reached.
    pub(crate) async fn wait_for(&self, position: Position) -> bool {
        let mut progress = self.progress.clone();
        let reached = progress.wait_for(|p| p.is_some_and(|at| at >= position)).await.is_ok();
        reached
    }

    /// Asks the task to stop and waits for its result.
    pub(crate) async fn stop(self) -> Result<(), ProjectionError> {
        self.stop.send_replace(true);
        self.task.await.map_err(|e| ProjectionError::Task(e.to_string()))?
    }

    /// Ends the task at once.
    pub(crate) fn abort(self) {
        self.task.abort();
    }
}
