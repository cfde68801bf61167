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

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bookshelf::process::ProcessRunner;
use bookshelf::{CommandError, EventStore, FileViewStore, Repository, RetryPolicy, StreamId};
use bookshelf_kafka::KafkaStore;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{self, ApiError, BodyAnswers, Json, Path};
use crate::docs::{Api, ErrorBody};
use crate::lending::domain::{Copy, CopyCommand, LendingBus, LendingError, LoanProcess, Member, MemberCommand};

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
    let refused_here = matches!(&error, CommandError::Store(store) if store.is_retryable());
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

/// A member joining, with the balance their loans' fees are charged to.
#[derive(Deserialize, utoipa::ToSchema)]
struct NewMember {
    /// 1 to 64 letters, digits or '-'.
    id: String,
    /// 0 to 4,294,967,295.
    // Spelled out: the `int32` format utoipa gives a `u32` would put the
    // top half out of range.
    #[schema(format = Int64, minimum = 0, maximum = 4294967295u64)]
    balance: u32,
}

/// A copy of a book, registered for lending.
#[derive(Deserialize, utoipa::ToSchema)]
struct NewCopy {
    /// 1 to 64 letters, digits or '-'.
    id: String,
}

/// A loan of a copy to a member, for a fee; the loan process charges the
/// fee and then lends the copy, or releases it when the charge fails.
#[derive(Deserialize, utoipa::ToSchema)]
struct Reservation {
    /// The loan's id (1 to 64 letters, digits or '-'), also its
    /// correlation id.
    loan: String,
    member: String,
    /// 0 to 4,294,967,295.
    #[schema(format = Int64, minimum = 0, maximum = 4294967295u64)]
    fee: u32,
}

/// What every lending command may answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // describes the answers; never built
enum CommandAnswers {
    /// Not JSON, or an id that is not one
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// Refused by the aggregate, or a concurrent change
    #[response(status = 409)]
    Refused(ErrorBody),
    /// Not taken here (`x-bookshelf-not-owner`: this instance does not
    /// write the topic) or not now; nothing was stored
    #[response(status = 503)]
    NotTaken(ErrorBody),
}

/// An aggregate's stream as this instance has read it.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct StreamBody {
    /// The aggregate's state (`"Unknown"` before its first event).
    #[schema(value_type = Value)]
    state: Value,
    version: u64,
    /// Each event's type, payload, idempotency key, correlation and
    /// causation ids and trace context.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Value>,
}

/// Which instance this is, and whether it writes the topic now.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct RoleBody {
    member: String,
    writer: bool,
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

/// A member joins.
#[utoipa::path(
    post, path = "/members", tag = "lending",
    request_body = NewMember,
    responses(
        (status = 201, description = "Joined"),
        CommandAnswers,
        BodyAnswers,
    )
)]
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

/// A copy is registered.
#[utoipa::path(
    post, path = "/copies", tag = "lending",
    request_body = NewCopy,
    responses(
        (status = 201, description = "Registered"),
        CommandAnswers,
        BodyAnswers,
    )
)]
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

/// Reserves the copy for a loan; the loan process does the rest.
#[utoipa::path(
    post, path = "/copies/{id}/reserve", tag = "lending",
    params(("id" = String, Path, description = "The copy")),
    request_body = Reservation,
    responses(
        (status = 202, description = "Reserved; the loan goes on in the loan process"),
        (status = 404, description = "No such copy", body = ErrorBody),
        CommandAnswers,
        BodyAnswers,
    )
)]
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
) -> Result<axum::Json<StreamBody>, ApiError> {
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
    Ok(axum::Json(StreamBody {
        state: json!(loaded.state),
        version: loaded.version.0,
        events,
    }))
}

/// A copy, as this instance has read it.
#[utoipa::path(
    get, path = "/copies/{id}", tag = "lending",
    params(("id" = String, Path, description = "The copy")),
    responses(
        (status = 200, description = "Its state and events (none for an unknown id)", body = StreamBody),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 503, description = "The topic cannot be read now", body = ErrorBody),
    )
)]
async fn copy(State(lending): State<Arc<Lending>>, Path(id): Path<String>) -> Result<axum::Json<StreamBody>, ApiError> {
    stream(&lending.copies, &lending.store, &id).await
}

/// A member, as this instance has read it.
#[utoipa::path(
    get, path = "/members/{id}", tag = "lending",
    params(("id" = String, Path, description = "The member")),
    responses(
        (status = 200, description = "Its state and events (none for an unknown id)", body = StreamBody),
        (status = 400, description = "Not an id", body = ErrorBody),
        (status = 503, description = "The topic cannot be read now", body = ErrorBody),
    )
)]
async fn member(
    State(lending): State<Arc<Lending>>,
    Path(id): Path<String>,
) -> Result<axum::Json<StreamBody>, ApiError> {
    stream(&lending.members, &lending.store, &id).await
}

/// Which instance this is, and whether it writes the topic.
#[utoipa::path(
    get, path = "/role", tag = "meta",
    responses((status = 200, description = "This instance's role", body = RoleBody))
)]
async fn role(State(lending): State<Arc<Lending>>) -> axum::Json<RoleBody> {
    axum::Json(RoleBody {
        member: lending.store.member().id.clone(),
        writer: lending.store.owns_every_partition(),
    })
}

pub fn routes(lending: Arc<Lending>) -> Api {
    Api::new()
        .route(__path_join, join)
        .route(__path_member, member)
        .route(__path_register, register)
        .route(__path_copy, copy)
        .route(__path_reserve, reserve)
        .route(__path_role, role)
        .with_state(lending)
}

/// Runs the loan process whenever this instance writes the topic, and stops
/// it when it no longer does. Its state and checkpoint are kept in
/// `saved` (a file of this instance).
pub async fn run_loans(store: KafkaStore, saved: PathBuf) {
    // The pauses before the process is started again after it ended: from
    // a second, growing to half a minute while it keeps ending.
    let restarts = RetryPolicy::forever(Duration::from_secs(1), Duration::from_secs(30));
    let mut delays = restarts.delays();
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
                tracing::error!(?outcome, "the loan process ended; starting it again");
                tokio::time::sleep(delays.next().unwrap_or(restarts.max_backoff)).await;
            }
        }
    }
}
