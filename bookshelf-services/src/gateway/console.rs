//! The web console, served by the gateway at `/console`: one page, its
//! script and styles built in (nothing fetched from elsewhere), that reads
//! what the gateway gathers for it.
//!
//! * `GET /console`: the page.
//! * `GET /console/api/instances`: every instance discovery lists for the
//!   gateway's services, and from each (asked at once, a second and a half
//!   each at most) its health, its runners (`GET /runners`), its dead
//!   letters (`GET /dead-letters`) and its rebuildable views with their
//!   versions (`GET /views`). An instance serving several services (the
//!   embedded `last_read`) is asked once.
//! * `POST /console/api/redrive`: `{"address", "runner", "id"}` or
//!   `{"address", "runner", "all": true}`, relayed to that instance's
//!   `POST /runners/{runner}/redrive`; only to an address discovery lists.
//! * `POST /console/api/rebuild`: `{"address", "view"}`, relayed to that
//!   instance's `POST /views/{view}/rebuild`, likewise; with `"action":
//!   "roll-back"` to its `POST /views/{view}/roll-back`, with `"action":
//!   "drop-previous"` to its `DELETE /views/{view}/previous`.
//!
//! The page reads the books' streams through the gateway's own routes
//! (`/last-read` for the books last read, `/books/{id}/events` for a
//! stream), so it sees what any client sees.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::proxy::Gateway;
use crate::api::{ApiError, Json};

/// The page, with its script and styles.
const PAGE: &str = include_str!("console.html");

/// How long the console waits for one instance's answer.
const PATIENCE: Duration = Duration::from_millis(1500);

/// The console's routes.
pub fn routes(gateway: Arc<Gateway>) -> Router {
    let client = reqwest::Client::builder().timeout(PATIENCE).build().unwrap_or_default();
    Router::new()
        .route("/console", get(page))
        .route("/console/api/instances", get(instances))
        .route("/console/api/redrive", post(redrive))
        .route("/console/api/rebuild", post(rebuild))
        .with_state(Console { gateway, client })
}

#[derive(Clone)]
struct Console {
    gateway: Arc<Gateway>,
    client: reqwest::Client,
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

/// One instance, as the console shows it.
#[derive(Debug, Serialize)]
struct InstanceBody {
    /// `host:port`.
    address: String,
    /// The ids discovery lists it under, and their services.
    ids: Vec<String>,
    services: Vec<String>,
    /// `passing`, or why not.
    health: String,
    /// Its `GET /runners`, if it answered.
    runners: Option<Value>,
    /// Its `GET /dead-letters`, if it answered.
    dead_letters: Option<Value>,
    /// Its `GET /views`, if it answered.
    views: Option<Value>,
}

/// Every instance of every routed service, and what each says.
async fn instances(State(console): State<Console>) -> axum::Json<Vec<InstanceBody>> {
    let mut by_address: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (service, instances) in console.gateway.instances() {
        for instance in instances.iter() {
            let (ids, services) = by_address.entry(instance.authority()).or_default();
            if !ids.contains(&instance.id) {
                ids.push(instance.id.clone());
            }
            if !services.contains(&service) {
                services.push(service.clone());
            }
        }
    }
    let mut asked = tokio::task::JoinSet::new();
    for (address, (ids, services)) in by_address {
        let client = console.client.clone();
        asked.spawn(async move {
            let get = |path: &str| {
                let request = client.get(format!("http://{address}{path}"));
                async move {
                    let response = request.send().await.map_err(|e| e.to_string())?;
                    if !response.status().is_success() {
                        return Err(format!("answered {}", response.status()));
                    }
                    response.json::<Value>().await.map_err(|e| e.to_string())
                }
            };
            let (health, runners, dead_letters, views) =
                tokio::join!(get("/health"), get("/runners"), get("/dead-letters"), get("/views"));
            InstanceBody {
                health: match health {
                    Ok(_) => "passing".to_owned(),
                    Err(why) => format!("failing: {why}"),
                },
                runners: runners.ok(),
                dead_letters: dead_letters.ok(),
                views: views.ok(),
                address,
                ids,
                services,
            }
        });
    }
    let mut answers: Vec<InstanceBody> = asked.join_all().await;
    answers.sort_by(|a, b| a.address.cmp(&b.address));
    axum::Json(answers)
}

/// What the page asks to re-drive.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveAsked {
    address: String,
    runner: String,
    id: Option<u64>,
    #[serde(default)]
    all: bool,
}

/// Relays a re-drive to the instance named, if discovery lists it.
async fn redrive(State(console): State<Console>, Json(asked): Json<RedriveAsked>) -> Result<Response, ApiError> {
    let body = match asked.id {
        Some(id) => serde_json::json!({ "id": id }),
        None => serde_json::json!({ "all": asked.all }),
    };
    let path = format!("/runners/{}/redrive", in_path(&asked.runner));
    relay(&console, &asked.address, Method::POST, &path, body).await
}

/// What the page asks of a view's versions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebuildAsked {
    address: String,
    view: String,
    #[serde(default)]
    action: VersionAction,
}

/// What is done to a view's versions.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum VersionAction {
    /// Build the next version beside the one serving.
    #[default]
    Rebuild,
    /// Serve the version kept again.
    RollBack,
    /// Stop the version kept.
    DropPrevious,
}

/// Relays a change to a view's versions to the instance named, if
/// discovery lists it.
async fn rebuild(State(console): State<Console>, Json(asked): Json<RebuildAsked>) -> Result<Response, ApiError> {
    let view = in_path(&asked.view);
    let (method, path) = match asked.action {
        VersionAction::Rebuild => (Method::POST, format!("/views/{view}/rebuild")),
        VersionAction::RollBack => (Method::POST, format!("/views/{view}/roll-back")),
        VersionAction::DropPrevious => (Method::DELETE, format!("/views/{view}/previous")),
    };
    relay(&console, &asked.address, method, &path, Value::Null).await
}

/// `name` as one segment of a path.
fn in_path(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Sends `body` (none when null) to `path` of the instance at `address`
/// with `method`, if discovery lists it, and answers what it answered.
async fn relay(
    console: &Console,
    address: &str,
    method: Method,
    path: &str,
    body: Value,
) -> Result<Response, ApiError> {
    let known = console
        .gateway
        .instances()
        .iter()
        .any(|(_, instances)| instances.iter().any(|i| i.authority() == address));
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no instance at {address} in discovery"),
        ));
    }
    let url = format!("http://{address}{path}");
    let mut request = console.client.request(method, &url);
    if !body.is_null() {
        request = request.json(&body);
    }
    let answer = request
        .send()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{url}: {e}")))?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let text = answer
        .text()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{url}: {e}")))?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], text).into_response())
}
