//! What the process runner and the change feed share: a task that reports
//! how far it has read each partition and stops when asked.

use std::collections::BTreeMap;
use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::envelope::Position;
use crate::projection::ProjectionError;
use crate::source::{Checkpoint, PartitionProgress, GLOBAL};

/// How far a runner has read: its checkpoint, and the ends of the
/// partitions as its follower last saw them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Progress {
    pub checkpoint: Checkpoint,
    pub ends: BTreeMap<String, u64>,
}

impl Progress {
    /// Each partition's position and end as last seen.
    pub(crate) fn partitions(&self) -> BTreeMap<String, PartitionProgress> {
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
            partitions
                .entry(partition.clone())
                .or_insert(PartitionProgress {
                    position: self.checkpoint.get(partition).next,
                    end: None,
                })
                .end = Some(end);
        }
        partitions
    }

    /// Tells watchers, and the metrics, where runner `reader` stands.
    pub(crate) fn report(self, reader: &str, to: &watch::Sender<Progress>) {
        crate::telemetry::progress(reader, &self.partitions());
        to.send_replace(self);
    }
}

/// A spawned runner task, its progress and its stop switch.
pub(crate) struct RunnerTask {
    watch: RunnerWatch,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ProjectionError>>,
}

/// What anyone may watch of a runner task: its progress, and its end.
#[derive(Clone)]
pub(crate) struct RunnerWatch {
    progress: watch::Receiver<Progress>,
}

impl RunnerTask {
    /// Spawns `run(progress, stopped)`: it reports its progress on
    /// `progress` as it goes, and ends when `stopped` changes.
    pub(crate) fn spawn<F>(run: impl FnOnce(watch::Sender<Progress>, watch::Receiver<bool>) -> F) -> Self
    where
        F: Future<Output = Result<(), ProjectionError>> + Send + 'static,
    {
        let (progress, watched) = watch::channel(Progress::default());
        let (stop, stopped) = watch::channel(false);
        RunnerTask {
            watch: RunnerWatch { progress: watched },
            stop,
            task: tokio::spawn(run(progress, stopped)),
        }
    }

    /// A watch of the task's progress, for handles.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn watch(&self) -> RunnerWatch {
        self.watch.clone()
    }

    pub(crate) async fn wait_for(&self, position: Position) -> bool {
        self.watch.wait_for(position).await
    }

    pub(crate) async fn wait_for_ends(&self, ends: &BTreeMap<String, u64>) -> bool {
        self.watch.wait_for_ends(ends).await
    }

    pub(crate) fn progress(&self) -> BTreeMap<String, PartitionProgress> {
        self.watch.progress()
    }

    pub(crate) async fn ended(&self) {
        self.watch.ended().await
    }

    /// Asks the task to stop and waits for its result.
    pub(crate) async fn stop(self) -> Result<(), ProjectionError> {
        self.stop.send_replace(true);
        self.task.await.map_err(|e| ProjectionError::Task(e.to_string()))?
    }

    /// Ends the task at once and waits until it is gone, so that nothing it
    /// was doing lands after this returns.
    pub(crate) async fn abort(self) {
        self.task.abort();
        // The task's answer is a cancellation, or whatever it ended with
        // before the abort reached it: a crash reports neither.
        let _ = self.task.await;
    }
}

impl RunnerWatch {
    /// Waits until the task has read a log with one global order up to
    /// `position`, or ended; returns whether the position was reached.
    pub(crate) async fn wait_for(&self, position: Position) -> bool {
        self.wait_for_ends(&BTreeMap::from([(GLOBAL.to_owned(), position.0)]))
            .await
    }

    /// Waits until the task has read every partition of `ends` up to its
    /// offset there, or ended; returns whether they were reached.
    pub(crate) async fn wait_for_ends(&self, ends: &BTreeMap<String, u64>) -> bool {
        let mut progress = self.progress.clone();
        let reached = progress.wait_for(|p| p.checkpoint.reached(ends)).await.is_ok();
        reached
    }

    /// Each partition's position and end as last seen.
    pub(crate) fn progress(&self) -> BTreeMap<String, PartitionProgress> {
        self.progress.borrow().partitions()
    }

    /// Resolves once the task has ended, whatever the reason.
    pub(crate) async fn ended(&self) {
        let mut progress = self.progress.clone();
        while progress.changed().await.is_ok() {}
    }
}
