//! The lending service on Kafka: copies and members behind HTTP, and the
//! loan process run by whichever instance writes the topic.
//!
//! Every instance follows the whole topic, so any of them answers reads.
//! One instance at a time writes it (the store's `one_owner`): the one
//! rendezvous hashing picks among the instances Consul lists. That instance
//! also runs the loan process; when it dies, another takes the topic over
//! and runs the process from its own checkpoint, and the idempotency keys
//! of the process's commands make every step it takes again harmless.
//! Commands sent to an instance that does not write the topic are answered
//! 503 with `x-bookshelf-not-owner`: nothing was stored, and the caller may
//! send them to another instance.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bookshelf::process::ProcessRunner;
use bookshelf::{CommandError, EventStore, FileViewStore, Repository, RetryPolicy, StreamId};
use bookshelf_kafka::KafkaStore;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{self, ApiError, Json};
use crate::domain::{Copy, CopyCommand, LendingBus, LendingError, LoanProcess, Member, MemberCommand};

/// What the HTTP handlers share.
pub struct Lending {
    pub store: KafkaStore,
    pub copies: Repository<Copy, KafkaStore>,
    pub members: Repository<Member, KafkaStore>,
}

impl Lending {
    pub fn new(store: KafkaStore) -> Self {
        Lending {
            copies: Repository::new(store.clone(), ()),
            members: Repository::new(store.clone(), ()),
            store,
        }
    }
}

impl Lending {
    /// Refuses, before anything is decided, a command for an aggregate this
    /// instance does not write: its copy of the stream may lag, and the
    /// writer decides.
    fn writes<A: bookshelf::Aggregate>(&self, id: &str) -> Result<(), ApiError> {
        let stream = StreamId::for_aggregate(A::CATEGORY, id);
        if self.store.owns(&stream) {
            Ok(())
        } else {
            Err(ApiError::not_owner(format!(
                "{} does not write {stream} now; send the command to the instance that does",
                self.store.member().id
            )))
        }
    }
}

fn api_error(error: CommandError<LendingError>) -> ApiError {
    let refused_here = matches!(&error, CommandError::Store(bookshelf::StoreError::Backend(source))
        if source.is::<bookshelf_kafka::NotOwner>() || source.is::<bookshelf_kafka::Fenced>());
    if refused_here {
        return ApiError::not_owner(error.to_string());
    }
    match error {
        CommandError::Rejected(LendingError::Unknown(what)) => {
            ApiError::new(StatusCode::NOT_FOUND, format!("{what} does not exist"))
        }
        CommandError::Rejected(rejected) => ApiError::new(StatusCode::CONFLICT, rejected.to_string()),
        CommandError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, error.to_string()),
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

#[derive(Deserialize)]
struct NewMember {
    id: String,
    balance: u32,
}

#[derive(Deserialize)]
struct NewCopy {
    id: String,
}

#[derive(Deserialize)]
struct Reservation {
    loan: String,
    member: String,
    fee: u32,
}

/// An id usable in a stream name.
fn checked(id: &str) -> Result<&str, ApiError> {
    let fine = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if fine {
        Ok(id)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an id (1 to 64 letters, digits or '-')"),
        ))
    }
}

async fn join(
    State(lending): State<Arc<Lending>>,
    headers: HeaderMap,
    Json(member): Json<NewMember>,
) -> Result<StatusCode, ApiError> {
    let command = MemberCommand::Join {
        balance: member.balance,
    };
    lending.writes::<Member>(checked(&member.id)?)?;
    lending
        .members
        .execute(checked(&member.id)?, &command, api::metadata_from(&headers))
        .await
        .map_err(api_error)?;
    Ok(StatusCode::CREATED)
}

async fn register(
    State(lending): State<Arc<Lending>>,
    headers: HeaderMap,
    Json(copy): Json<NewCopy>,
) -> Result<StatusCode, ApiError> {
    lending.writes::<Copy>(checked(&copy.id)?)?;
    lending
        .copies
        .execute(checked(&copy.id)?, &CopyCommand::Register, api::metadata_from(&headers))
        .await
        .map_err(api_error)?;
    Ok(StatusCode::CREATED)
}

async fn reserve(
    State(lending): State<Arc<Lending>>,
    Path(copy): Path<String>,
    headers: HeaderMap,
    Json(reservation): Json<Reservation>,
) -> Result<StatusCode, ApiError> {
    let command = CopyCommand::Reserve {
        loan: checked(&reservation.loan)?.to_owned(),
        member: checked(&reservation.member)?.to_owned(),
        fee: reservation.fee,
    };
    lending.writes::<Copy>(checked(&copy)?)?;
    lending
        .copies
        .execute(checked(&copy)?, &command, {
            let mut metadata = api::metadata_from(&headers);
            metadata.correlation_id = Some(reservation.loan.clone());
            metadata
        })
        .await
        .map_err(api_error)?;
    Ok(StatusCode::ACCEPTED)
}

/// A stream as this instance has read it: the aggregate's state, and each
/// event's type, payload and idempotency key.
async fn stream<A: bookshelf::Aggregate + serde::Serialize>(
    repository: &Repository<A, KafkaStore>,
    store: &KafkaStore,
    id: &str,
) -> Result<axum::Json<Value>, ApiError> {
    let loaded = repository
        .load(checked(id)?)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let events = store
        .read_stream(&StreamId::for_aggregate(A::CATEGORY, id), bookshelf::Version(1))
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "type": e.event_type,
                "payload": serde_json::from_str::<Value>(e.payload.get()).unwrap_or(Value::Null),
                "key": e.metadata.extra.get(bookshelf::IDEMPOTENCY_KEY),
                "correlation_id": e.metadata.correlation_id,
                "causation_id": e.metadata.causation_id,
                "traceparent": e.metadata.traceparent,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "state": loaded.state,
        "version": loaded.version.0,
        "events": events,
    })))
}

async fn copy(State(lending): State<Arc<Lending>>, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    stream(&lending.copies, &lending.store, &id).await
}

async fn member(State(lending): State<Arc<Lending>>, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    stream(&lending.members, &lending.store, &id).await
}

async fn role(State(lending): State<Arc<Lending>>) -> axum::Json<Value> {
    axum::Json(json!({
        "member": lending.store.member().id,
        "writer": lending.store.owns_every_partition(),
    }))
}

pub fn routes(lending: Arc<Lending>) -> Router {
    Router::new()
        .route("/members", post(join))
        .route("/members/{id}", get(member))
        .route("/copies", post(register))
        .route("/copies/{id}", get(copy))
        .route("/copies/{id}/reserve", post(reserve))
        .route("/role", get(role))
        .with_state(lending)
}

/// Runs the loan process whenever this instance writes the topic, and stops
/// it when it no longer does. Its state and checkpoint are kept in
/// `saved` (a file of this instance).
pub async fn run_loans(store: KafkaStore, saved: PathBuf) {
    loop {
        store.until_owner_of_all(true).await;
        tracing::info!("this instance writes the topic: the loan process starts");
        let running = ProcessRunner::<LoanProcess, _, _>::new("loans", store.clone(), LendingBus::new(store.clone()))
            .only_categories(["copy", "member"])
            .persist_to(FileViewStore::new(&saved))
            .tick_every(Duration::from_millis(200))
            // While ownership moves, commands are refused for a few seconds.
            .retry(RetryPolicy::attempts(12).with_backoff(Duration::from_millis(50)))
            .start();
        tokio::select! {
            () = store.until_owner_of_all(false) => {
                // Stopped at once, as a crash would: what it was sending is
                // sent again, under the same keys, by the next writer.
                tracing::info!("this instance no longer writes the topic: the loan process stops");
                running.abort().await;
            }
            outcome = running.ended() => {
                tracing::error!(?outcome, "the loan process ended; starting it again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
