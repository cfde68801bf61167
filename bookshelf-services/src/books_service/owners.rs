//! Any instance serves any book: a request about a book whose partition
//! another instance owns goes to that instance, found in the partition's
//! last claim in the log. An owner that does not answer this instance's
//! probes is not waited for: what would go to it is turned down at once
//! (nothing stored), for the gateway to send to another instance.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bookshelf::{RetryPolicy, StreamId};
use bookshelf_kafka::KafkaStore;
use serde_json::json;

use crate::api::{ApiError, NOT_OWNER_HEADER};

/// The header a forwarded request carries, naming the instance that sent it
/// on; such a request is never forwarded again.
pub const FORWARDED_BY: &str = "x-bookshelf-forwarded-by";

/// The largest body forwarded (as the gateway's default limit).
const MAX_BODY: usize = 1 << 20;

/// Routes requests to the owners of their books' partitions.
pub struct Owners {
    pub store: KafkaStore,
    client: reqwest::Client,
    /// Whether reads wait for a read barrier (see [`route_to_owner`]);
    /// without one they go to the owner, as stale as its copy.
    barrier: bool,
    /// The owners that did not answer lately (see [`Unanswered`]).
    unanswered: Unanswered,
}

impl Owners {
    /// Routes for `store`, and probes the other owners (those that do
    /// not answer are not waited for) for as long as the answer is in use.
    pub fn start(store: KafkaStore, barrier: bool) -> Result<Arc<Owners>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let owners = Arc::new(Owners {
            store,
            client,
            barrier,
            unanswered: Unanswered::default(),
        });
        tokio::spawn(probe_owners(Arc::downgrade(&owners)));
        Ok(owners)
    }

    /// A new book's id on a partition this instance owns, if it owns any.
    pub fn new_id(&self) -> String {
        for _ in 0..256 {
            let id = uuid::Uuid::new_v4().simple().to_string();
            if self.store.owns(&StreamId::for_aggregate("book", &id)) {
                return id;
            }
        }
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Where a request should be handled: `None` here, or the owner's address.
    fn target(&self, method: &Method, path: &str) -> Option<Result<String, String>> {
        let rest = path.strip_prefix("/books")?;
        let claim = match book_of(path) {
            Some(stream) => {
                if self.store.owns(&stream) {
                    return None;
                }
                self.store.owner_of(&stream)
            }
            None if method == Method::POST && rest.is_empty() => {
                let owners = self.store.owners();
                if owners.iter().any(|o| o.mine) {
                    return None;
                }
                owners
                    .into_iter()
                    .filter_map(|o| o.claim)
                    .find(|c| !c.address.is_empty())
            }
            None => return None,
        };
        let me = &self.store.member().id;
        Some(match claim {
            Some(claim) if &claim.owner != me && !claim.address.is_empty() => Ok(claim.address),
            Some(claim) => Err(format!(
                "partition ownership is moving (last claimed by {})",
                claim.owner
            )),
            None => Err("no instance owns this book's partition yet".into()),
        })
    }

    /// The ownership of every partition as this instance reads the log.
    pub fn describe(&self) -> serde_json::Value {
        let (caught_up, next) = self.store.caught_up();
        let partitions: Vec<_> = self
            .store
            .owners()
            .into_iter()
            .map(|o| {
                json!({
                    "partition": o.partition,
                    "owner": o.claim.as_ref().map(|c| c.owner.clone()),
                    "address": o.claim.as_ref().map(|c| c.address.clone()),
                    "epoch": o.claim.as_ref().map_or(0, |c| c.epoch),
                    "mine": o.mine,
                    "next_offset": next.get(o.partition as usize),
                })
            })
            .collect();
        json!({ "instance": self.store.member().id, "caught_up": caught_up, "partitions": partitions })
    }
}

/// `GET /ownership`.
pub fn routes(owners: Arc<Owners>) -> crate::docs::Api {
    crate::docs::Api::new()
        .route(__path_ownership, ownership)
        .with_state(owners)
}

/// Who owns each partition of the books topic, as this instance reads it.
#[utoipa::path(
    get, path = "/ownership", tag = "meta",
    responses((status = 200, description = "This instance, whether it has caught up with the topic, and each \
        partition's owner, its address and epoch, whether it is this instance, and the next offset read",
        body = Object))
)]
async fn ownership(State(owners): State<Arc<Owners>>) -> axum::Json<serde_json::Value> {
    axum::Json(owners.describe())
}

/// The stream of the book a path is about (`/books/{id}...`), if any.
fn book_of(path: &str) -> Option<StreamId> {
    let id = path
        .strip_prefix("/books/")?
        .split('/')
        .next()
        .filter(|id| !id.is_empty())?;
    Some(StreamId::for_aggregate("book", id))
}

/// How long a command waits for its book's partition to have an owner
/// again (while ownership moves), and a read for this instance to have read
/// the partition to its end, before it is answered 503: within 3 s, with
/// room for a gateway's hop.
const SETTLE: Duration = Duration::from_millis(2800);

/// Middleware: a read about a book is answered here, from this instance's
/// copy of the log, once the copy holds the book's partition as far as it
/// reached when the read arrived (a read barrier): it shows every write
/// acknowledged before, by any instance, even right after this one
/// restarted or handed the partition back. A command is handled here when
/// this instance owns its book's partition (or it was forwarded already),
/// and forwarded otherwise. While ownership moves (no owner yet, or the one
/// asked says it no longer owns the partition), it tries again: such a
/// refusal stored nothing, so sending the request again is safe. No request
/// waits longer than 2.8 s: then it is answered 503 with `Retry-After`,
/// saying whether it may have been stored ("the outcome is unknown") or
/// not.
pub async fn route_to_owner(State(owners): State<Arc<Owners>>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET && owners.barrier {
        if let Some(stream) = book_of(request.uri().path()) {
            return match owners.store.read_barrier(&stream, SETTLE).await {
                Ok(()) => next.run(request).await,
                Err(error) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("this instance cannot tell that it has read the book's latest events: {error}"),
                )
                .into_response(),
            };
        }
    }
    if request.headers().contains_key(FORWARDED_BY) {
        return handle_here(next, request, HANDLE).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(error) => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
                .closing()
                .into_response()
        }
    };
    let rebuild = || {
        let mut request = Request::new(Body::from(body.clone()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        // The router's path parameters travel in the extensions.
        *request.extensions_mut() = parts.extensions.clone();
        request
    };
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut pauses = MOVING.delays();
    loop {
        // Each try within what is left of the bound, and a little more for
        // a last try that would otherwise have none.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(LAST_TRY);
        let response = match owners.target(&parts.method, parts.uri.path()) {
            None => handle_here(next.clone(), rebuild(), left.min(HANDLE)).await,
            // An owner that has not answered lately (cut off from this
            // instance, paused, or dead): turned down at once, nothing sent,
            // so that the gateway tries another instance, one that may
            // reach the owner or be it.
            Some(Ok(address)) if owners.unanswered.has(&address) => {
                return unavailable(format!(
                    "the owner of this book's partition, at {address}, has not answered lately"
                ))
            }
            Some(Ok(address)) => forward(&owners, &address, rebuild(), left).await,
            // Reads without a barrier, and no owner to ask: answered from
            // this instance's copy.
            Some(Err(_)) if parts.method == Method::GET => return next.run(rebuild()).await,
            Some(Err(reason)) => unavailable(reason),
        };
        // Tried again only when the answer says for sure that nothing was
        // stored: after one whose outcome is unknown, a later refusal would
        // claim what is not known (the first try may have been stored).
        let moving =
            response.status() == StatusCode::SERVICE_UNAVAILABLE && response.headers().contains_key(NOT_OWNER_HEADER);
        let now = tokio::time::Instant::now();
        if !moving {
            return response;
        }
        if now >= deadline {
            // Still refused after the whole bound: another instance would
            // wait as long, so the answer no longer asks to be sent to one.
            let mut response = response;
            response.headers_mut().remove(NOT_OWNER_HEADER);
            return response;
        }
        let pause = pauses.next().unwrap_or(MOVING.max_backoff);
        tokio::time::sleep(pause.min(deadline - now)).await;
    }
}

/// The longest this instance works on a command before it answers 503 with
/// the outcome unknown (its broker not answering, say): shorter than
/// [`SETTLE`], so that an instance that forwarded the command hears the
/// answer within its own bound.
const HANDLE: Duration = Duration::from_millis(2300);

/// The least time a try is given.
const LAST_TRY: Duration = Duration::from_millis(100);

/// Handles `request` here, for at most `within`: then it is answered 503,
/// its outcome unknown (what was under way may still be stored).
async fn handle_here(next: Next, request: Request, within: Duration) -> Response {
    match tokio::time::timeout(within, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                within_ms = within.as_millis(),
                "request not done in time; its outcome is unknown"
            );
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not done within {} ms, so the outcome is unknown: it may or may not have been stored",
                    within.as_millis()
                ),
            )
            .into_response()
        }
    }
}

/// The pauses between tries while a partition's ownership moves: from
/// 25 ms, capped at 200 ms, jittered, until [`SETTLE`] has passed.
const MOVING: RetryPolicy = RetryPolicy::forever(Duration::from_millis(25), Duration::from_millis(200));

fn unavailable(reason: String) -> Response {
    ApiError::not_owner(reason).into_response()
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Sends `request` on to the owner at `address`, waiting at most `within`
/// for its answer.
async fn forward(owners: &Owners, address: &str, request: Request, within: Duration) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(error) => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
                .closing()
                .into_response()
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = owners
        .client
        .request(parts.method.clone(), format!("{address}{path}"))
        .timeout(within)
        .header(FORWARDED_BY, owners.store.member().id.as_str())
        .body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = tokio::select! {
        answer = outgoing.send() => answer,
        () = owners.unanswered.listed(address) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the owner at {address} stopped answering, so the outcome is unknown"),
            )
            .into_response()
        }
    };
    let answer = match answer {
        Ok(answer) => answer,
        // Nothing reached the owner: nothing was done.
        Err(error) if error.is_connect() => {
            owners.unanswered.add(address);
            return unavailable(format!("the owner at {address} refused the connection: {error}"));
        }
        Err(error) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the owner at {address} did not answer, so the outcome is unknown: {error}"),
            )
            .into_response()
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(error) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the owner at {address} broke off its answer, so the outcome is unknown: {error}"),
            )
            .into_response()
        }
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !hop_by_hop(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// The owners that do not answer: the addresses in the partitions' claims
/// (other than this instance's) are probed (`GET /health`) every
/// [`PROBE_EVERY`]; one that does not answer within [`PROBE_WITHIN`], or
/// whose connection failed on a forward, is listed here until it answers a
/// probe again. Meanwhile [`route_to_owner`] turns down at once what would
/// go to it, and a forward already waiting on it is answered at once
/// (its outcome unknown) instead of waiting out its bound.
#[derive(Clone)]
struct Unanswered {
    listed: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Told whenever an address is listed.
    news: tokio::sync::watch::Sender<()>,
}

/// How often the owners are probed, and how long a probe waits: an owner
/// cut off from this instance is known within their sum.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_WITHIN: Duration = Duration::from_millis(1000);

impl Default for Unanswered {
    fn default() -> Self {
        Unanswered {
            listed: Arc::default(),
            news: tokio::sync::watch::channel(()).0,
        }
    }
}

impl Unanswered {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.listed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn has(&self, address: &str) -> bool {
        self.lock().contains(address)
    }

    fn add(&self, address: &str) {
        if self.lock().insert(address.to_owned()) {
            tracing::warn!(%address, "an owner does not answer; turning down what goes to it until it does");
            self.news.send_replace(());
        }
    }

    fn remove(&self, address: &str) {
        if self.lock().remove(address) {
            tracing::info!(%address, "an owner answers again");
        }
    }

    /// Resolves once `address` is listed.
    async fn listed(&self, address: &str) {
        let mut news = self.news.subscribe();
        while !self.has(address) {
            if news.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Probes the owners named in the partitions' claims, for as long as
/// `owners` is in use.
async fn probe_owners(owners: std::sync::Weak<Owners>) {
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probing = tokio::task::JoinSet::new();
    loop {
        ticks.tick().await;
        let Some(owners) = owners.upgrade() else { return };
        let me = owners.store.member().address.clone();
        let mut addresses: Vec<String> = owners
            .store
            .owners()
            .into_iter()
            .filter_map(|o| o.claim.map(|c| c.address))
            .filter(|address| !address.is_empty() && *address != me)
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        // Those no claim names any more are not waited for.
        owners.unanswered.lock().retain(|listed| addresses.contains(listed));
        // Probes that ended are reaped; a silent owner's last up to
        // PROBE_WITHIN, so a few of them may be out at once.
        while probing.try_join_next().is_some() {}
        for address in addresses {
            let (client, unanswered) = (owners.client.clone(), owners.unanswered.clone());
            probing.spawn(async move {
                let answered = client
                    .get(format!("{address}/health"))
                    .timeout(PROBE_WITHIN)
                    .send()
                    .await
                    .is_ok();
                if answered {
                    unanswered.remove(&address);
                } else {
                    unanswered.add(&address);
                }
            });
        }
    }
}
