//! `GET /runners`: every runner of the process (views, table views,
//! process managers, change feeds), as `bookshelf::reports()` lists them:
//! its state, where it stands in each partition and its lag, when it last
//! moved, and what last went wrong. The `bookshelf runners` command and the
//! web console read it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::docs::Api;

/// `GET /runners`.
pub fn runner_routes() -> Api {
    Api::new().route(__path_runners, runners)
}

/// One runner.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunnerBody {
    /// Its name.
    pub name: String,
    /// `starting`, `running`, `stopped` or `failed`.
    pub state: String,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// Why it last set a record aside as a dead letter.
    pub last_set_aside: Option<String>,
    /// Records set aside since it started (a re-driven dead letter that
    /// failed again counts again).
    pub set_aside: u64,
    /// Re-driven dead letters it applied since it started.
    pub redriven: u64,
    /// When its checkpoint last moved (RFC 3339).
    pub moved_at: Option<String>,
    /// By partition (`""` for the one partition of a log with one global
    /// order, `topic/partition` on Kafka).
    pub partitions: BTreeMap<String, PartitionBody>,
}

/// Where a reader stands in one partition.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartitionBody {
    /// The next offset it reads.
    pub position: u64,
    /// The partition's end, as last seen.
    pub end: Option<u64>,
    /// Records between the two.
    pub lag: Option<u64>,
}

impl From<bookshelf::PartitionReport> for PartitionBody {
    fn from(p: bookshelf::PartitionReport) -> Self {
        PartitionBody {
            position: p.position,
            end: p.end,
            lag: p.lag,
        }
    }
}

impl From<bookshelf::RunnerReport> for RunnerBody {
    fn from(report: bookshelf::RunnerReport) -> Self {
        RunnerBody {
            name: report.name,
            state: report.state.as_str().to_owned(),
            failure: report.failure,
            last_set_aside: report.last_set_aside,
            set_aside: report.set_aside,
            redriven: report.redriven,
            moved_at: report
                .moved_at
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            partitions: report.partitions.into_iter().map(|(p, r)| (p, r.into())).collect(),
        }
    }
}

/// Every runner of this process, in the order they started.
#[utoipa::path(
    get, path = "/runners", tag = "meta",
    responses((status = 200, description = "Each runner: state, position and lag per partition, when it last moved, what last went wrong", body = [RunnerBody]))
)]
async fn runners() -> axum::Json<Vec<RunnerBody>> {
    axum::Json(bookshelf::reports().into_iter().map(RunnerBody::from).collect())
}
