//! What the runners of this process say of themselves, for operators'
//! tools: every [`Runner`](crate::Runner) started in the process is listed
//! by [`reports`] from its start on, with its state, where it stands in
//! each partition, when it last moved and what last went wrong. The
//! services serve it as `GET /runners`, and the `bookshelf` command line
//! and the web console read it there.
//!
//! A runner stays listed while it runs, and after it failed (so that its
//! failure can be seen) until another runner of its name starts; one
//! stopped on purpose leaves the list once its task has ended. So the list
//! stays as long as the runners a process runs, however often it restarts
//! them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::dead_letter::DeadLetters;
use crate::source::PartitionProgress;

/// One runner, as [`reports`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunnerReport {
    /// The runner's name.
    pub name: String,
    /// What it is doing.
    pub state: RunnerState,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// Why it last set a record aside as a dead letter, if it ever did.
    pub last_set_aside: Option<String>,
    /// How many records it has set aside since it started (a re-driven
    /// dead letter that failed again counts again).
    pub set_aside: u64,
    /// How many re-driven dead letters it has applied since it started.
    pub redriven: u64,
    /// When its checkpoint last moved; `None` before it first did.
    pub moved_at: Option<DateTime<Utc>>,
    /// Where it stands in each partition, by name (`""`, as in the metrics,
    /// for the one partition of a log with one global order).
    pub partitions: BTreeMap<String, PartitionReport>,
}

/// What a runner is doing; serialized as its [name](RunnerState::as_str).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerState {
    /// Restoring its state; nothing read yet.
    Starting,
    /// Reading and applying.
    Running,
    /// Stopped on purpose.
    Stopped,
    /// Ended by an error (see [`RunnerReport::failure`]).
    Failed,
}

impl RunnerState {
    /// Its name: `starting`, `running`, `stopped`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Starting => "starting",
            RunnerState::Running => "running",
            RunnerState::Stopped => "stopped",
            RunnerState::Failed => "failed",
        }
    }
}

impl Serialize for RunnerState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Where a runner stands in one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    /// The next offset it takes.
    pub position: u64,
    /// The partition's end as last seen, if seen.
    pub end: Option<u64>,
    /// How many records it is behind that end.
    pub lag: Option<u64>,
}

impl From<PartitionProgress> for PartitionReport {
    fn from(progress: PartitionProgress) -> Self {
        PartitionReport {
            position: progress.position,
            end: progress.end,
            lag: progress.lag(),
        }
    }
}

/// A runner's way of reporting: `None` once it should leave the list.
pub(crate) type Reporter = Box<dyn Fn() -> Option<RunnerReport> + Send + Sync>;

/// The runners listed: each with its name and where it sets letters aside.
type Registry = Mutex<Vec<(String, Arc<Reporter>, Arc<dyn DeadLetters>)>>;

fn registry() -> &'static Registry {
    static RUNNERS: OnceLock<Registry> = OnceLock::new();
    RUNNERS.get_or_init(Default::default)
}

/// Lists runner `name`, which sets letters aside in `dead_letters`, from
/// now on, in place of an ended one of that name.
pub(crate) fn register(name: &str, reporter: Reporter, dead_letters: Arc<dyn DeadLetters>) {
    let mut runners = registry().lock().unwrap_or_else(|p| p.into_inner());
    runners.retain(|(listed, reporter, _)| {
        listed != name || reporter().is_some_and(|report| report.state != RunnerState::Failed)
    });
    runners.push((name.to_owned(), Arc::new(reporter), dead_letters));
}

/// Where runner `name` of this process (the one started last, among those
/// [`reports`] lists) sets aside what it cannot apply: to list its letters
/// and re-drive them.
pub fn dead_letters_of(name: &str) -> Option<Arc<dyn DeadLetters>> {
    let runners = registry().lock().unwrap_or_else(|p| p.into_inner());
    runners
        .iter()
        .rev()
        .find(|(listed, _, _)| listed == name)
        .map(|(_, _, sink)| Arc::clone(sink))
}

/// Every runner of this process, in the order they started (those stopped
/// on purpose and ended left out).
pub fn reports() -> Vec<RunnerReport> {
    // Reported outside the lock: a runner's report takes its own.
    let reporters = registry().lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut gone = Vec::new();
    let reports = reporters
        .iter()
        .filter_map(|(_, reporter, _)| {
            let report = reporter();
            if report.is_none() {
                gone.push(Arc::as_ptr(reporter));
            }
            report
        })
        .collect();
    if !gone.is_empty() {
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, reporter, _)| !gone.contains(&Arc::as_ptr(reporter)));
    }
    reports
}
