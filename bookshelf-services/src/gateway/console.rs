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
//! * `GET /console/api/streams?category=C`: the streams every instance
//!   lists (`GET /streams`), merged, each with the instances that hold it.
//! * `GET /console/api/streams/{stream}`: the stream's events, from the
//!   instance that holds the most of them (`GET /streams/{stream}/events`).
//! * `POST /console/api/redrive`: `{"address", "runner", "id"}` or
//!   `{"address", "runner", "all": true}`, relayed to that instance's
//!   `POST /runners/{runner}/redrive`; only to an address discovery lists.
//! * `POST /console/api/rebuild`: `{"address", "view"}`, relayed to that
//!   instance's `POST /views/{view}/rebuild`, likewise; with `"action":
//!   "roll-back"` to its `POST /views/{view}/roll-back`, with `"action":
//!   "drop-previous"` to its `DELETE /views/{view}/previous`.
//!
//! The page finds the books read last through the gateway's own route
//! (`/last-read`), as any client does.

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
        .route("/console/api/streams", get(streams))
        .route("/console/api/streams/{stream}", get(stream))
        .with_state(Console { gateway, client })
}

#[derive(Clone)]
struct Console {
    gateway: Arc<Gateway>,
    client: reqwest::Client,
}

impl Console {
    /// Every instance of every routed service, by address (an instance
    /// serving several services once): its ids and its services.
    fn by_address(&self) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
        let mut by_address: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for (service, instances) in self.gateway.instances() {
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
        by_address
    }

    /// Asks every instance `GET path` at once: each one's address, ids and
    /// answer.
    async fn ask_each(&self, path: &str) -> Vec<(String, Vec<String>, Result<Value, String>)> {
        let mut asking = tokio::task::JoinSet::new();
        for (address, (ids, _)) in self.by_address() {
            let (client, path) = (self.client.clone(), path.to_owned());
            asking.spawn(async move {
                let answer = get_json(&client, &address, &path).await;
                (address, ids, answer)
            });
        }
        asking.join_all().await
    }
}

/// `GET path` of the instance at `address`: its JSON answer, or why not
/// (its status, when it answered another than 2xx, as `answered 404 …`).
async fn get_json(client: &reqwest::Client, address: &str, path: &str) -> Result<Value, String> {
    let response = client
        .get(format!("http://{address}{path}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    response.json::<Value>().await.map_err(|e| e.to_string())
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
    let mut asked = tokio::task::JoinSet::new();
    for (address, (ids, services)) in console.by_address() {
        let client = console.client.clone();
        asked.spawn(async move {
            let get = |path: &'static str| get_json(&client, &address, path);
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

/// What the page asks to list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamsAsked {
    category: Option<String>,
}

/// A stream as the console lists it: its version, and the instances that
/// hold it (a Kafka topic's streams are spread over their owners).
#[derive(Debug, Default, Serialize)]
struct ListedStream {
    version: u64,
    instances: Vec<String>,
}

/// The streams every instance lists (of `category`, if asked), merged: a
/// stream held by several instances (one database, a replica) once, at the
/// highest version any gives; and the instances that listed none, with why.
async fn streams(
    State(console): State<Console>,
    crate::api::Query(asked): crate::api::Query<StreamsAsked>,
) -> axum::Json<Value> {
    let path = match &asked.category {
        Some(category) => format!("/streams?category={}", in_path(category)),
        None => "/streams".to_owned(),
    };
    let (mut listed, mut unlisted, mut more) = (BTreeMap::<String, ListedStream>::new(), Vec::new(), false);
    for (_, ids, answer) in console.ask_each(&path).await {
        let instance = ids.first().cloned().unwrap_or_default();
        match answer {
            Ok(answer) => {
                more |= answer["more"] == true;
                for stream in answer["streams"].as_array().into_iter().flatten() {
                    let (Some(id), Some(version)) = (stream["stream"].as_str(), stream["version"].as_u64()) else {
                        continue;
                    };
                    let entry = listed.entry(id.to_owned()).or_default();
                    entry.version = entry.version.max(version);
                    entry.instances.push(instance.clone());
                }
            }
            Err(why) => unlisted.push(serde_json::json!({ "instance": instance, "why": why })),
        }
    }
    let streams: Vec<Value> = listed
        .into_iter()
        .map(|(stream, at)| serde_json::json!({ "stream": stream, "version": at.version, "instances": at.instances }))
        .collect();
    axum::Json(serde_json::json!({ "streams": streams, "more": more, "unlisted": unlisted }))
}

/// One stream's events, from the instance that holds the most of them
/// (the first by address of those), named in the answer; 404 when none
/// holds it.
async fn stream(
    State(console): State<Console>,
    crate::api::Path(stream): crate::api::Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let path = format!("/streams/{}/events", in_path(&stream));
    let mut answers: Vec<(String, Vec<String>, Value)> = console
        .ask_each(&path)
        .await
        .into_iter()
        .filter_map(|(address, ids, answer)| answer.ok().map(|answer| (address, ids, answer)))
        .collect();
    // The longest: an instance that keeps a copy behind its owner's loses.
    answers.sort_by_key(|(address, _, answer)| {
        let events = answer["events"].as_array().map_or(0, Vec::len);
        (std::cmp::Reverse(events), address.clone())
    });
    let found = answers.into_iter().next().map(|(_, ids, answer)| (ids, answer));
    match found {
        Some((ids, mut answer)) => {
            answer["instance"] = Value::from(ids.first().cloned().unwrap_or_default());
            Ok(axum::Json(answer))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no instance holds a stream {stream}"),
        )),
    }
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
