//! A process's dead letters over HTTP, found through its runners (each
//! knows where it sets letters aside): `GET /dead-letters` lists them, and
//! `POST /runners/{name}/redrive` queues a runner's for re-drive. The web
//! console reads and drives them here; the `bookshelf` command line reads
//! the stores themselves.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::docs::{Api, ErrorBody};

use super::*;

/// `GET /dead-letters` and `POST /runners/{name}/redrive`.
pub fn dead_letter_routes() -> Api {
    Api::new()
        .route(__path_dead_letters, dead_letters)
        .route(__path_redrive, redrive)
}

/// One dead letter, as the service and the command line's `--json` show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LetterBody {
    /// Its number where it is kept (an offset in a Kafka topic).
    pub id: u64,
    /// When it was set aside, or last put back (RFC 3339).
    pub set_aside_at: String,
    /// The runner that set it aside.
    pub runner: String,
    /// Where it was in the log (`position N`, or `topic/partition@offset`).
    pub location: String,
    /// Why it was set aside.
    pub reason: String,
    /// Its re-drive ticket while it waits for its runner.
    pub ticket: Option<u64>,
    /// `{"event": envelope}`, or `{"raw": {"key", "body", "headers"}}` in
    /// hex for a record that was no event.
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
}

impl From<&bookshelf::KeptDeadLetter> for LetterBody {
    fn from(kept: &bookshelf::KeptDeadLetter) -> Self {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let letter = &kept.letter;
        let record = match &letter.record {
            bookshelf::Poison::Event(event) => serde_json::json!({ "event": event }),
            bookshelf::Poison::Raw(raw) => serde_json::json!({
                "raw": {
                    "key": raw.key.as_deref().map(hex),
                    "body": raw.body.as_deref().map(hex),
                    "headers": raw.headers.iter().map(|(name, value)| (name, hex(value))).collect::<Vec<_>>(),
                }
            }),
        };
        LetterBody {
            id: kept.id,
            set_aside_at: kept.set_aside_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            runner: letter.projection.clone(),
            location: letter.location.clone(),
            reason: letter.reason.clone(),
            ticket: kept.ticket,
            record,
        }
    }
}

/// The dead letters of every runner of this process, runner by runner, each
/// runner's in the order set aside. A runner whose letters cannot be read
/// now is left out (and logged).
#[utoipa::path(
    get, path = "/dead-letters", tag = "meta",
    responses((status = 200, description = "Each runner's letters", body = [LetterBody]))
)]
async fn dead_letters() -> axum::Json<Vec<LetterBody>> {
    let mut letters = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for report in bookshelf::reports() {
        // Two runners of one name (one failed, one replacing it) share letters.
        if !seen.insert(report.name.clone()) {
            continue;
        }
        let Some(sink) = bookshelf::report::dead_letters_of(&report.name) else {
            continue;
        };
        match sink.kept_letters(Some(&report.name)).await {
            Ok(kept) => letters.extend(kept.iter().map(LetterBody::from)),
            Err(error) => tracing::warn!(runner = %report.name, %error, "cannot list a runner's dead letters"),
        }
    }
    axum::Json(letters)
}

/// Which letters to re-drive: `{"id": N}` or `{"all": true}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveBody {
    /// The letter with this number.
    pub id: Option<u64>,
    /// Every letter of the runner not already queued.
    #[serde(default)]
    pub all: bool,
}

/// What a re-drive queued.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Queued {
    /// How many letters it queued (a letter already queued keeps its
    /// ticket and is not counted).
    pub queued: usize,
}

/// Queues dead letters of runner `name` for re-drive: the runner takes them
/// within a second, applies each its code now reads once, and puts back the
/// others with the new reason (`GET /dead-letters` shows which).
#[utoipa::path(
    post, path = "/runners/{name}/redrive", tag = "meta",
    params(("name" = String, Path, description = "The runner")),
    request_body = RedriveBody,
    responses(
        (status = 200, description = "Queued", body = Queued),
        (status = 400, description = "Neither one letter nor all, or not JSON", body = ErrorBody),
        (status = 404, description = "No such runner, or no such letter of it", body = ErrorBody),
        (status = 409, description = "The runner's letters are kept where they cannot be re-driven", body = ErrorBody),
        (status = 503, description = "Where its letters are kept cannot be reached now", body = ErrorBody),
        BodyAnswers,
    )
)]
async fn redrive(Path(name): Path<String>, Json(body): Json<RedriveBody>) -> Result<axum::Json<Queued>, ApiError> {
    let which = match (body.id, body.all) {
        (Some(id), false) => bookshelf::Redrive::Letter(id),
        (None, true) => bookshelf::Redrive::All,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "name one letter (\"id\") or all (\"all\": true)",
            ))
        }
    };
    let sink = bookshelf::report::dead_letters_of(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no runner {name} in this process")))?;
    if !sink.redrives() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the dead letters of {name} are kept where they cannot be re-driven"),
        ));
    }
    let unavailable = |e: bookshelf::StoreError| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    if let bookshelf::Redrive::Letter(id) = which {
        let kept = sink.kept_letters(Some(&name)).await.map_err(unavailable)?;
        if !kept.iter().any(|k| k.id == id) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no dead letter {id} of runner {name}"),
            ));
        }
    }
    let queued = sink.redrive(&name, which).await.map_err(unavailable)?;
    Ok(axum::Json(Queued { queued }))
}
