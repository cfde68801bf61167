//! A stateful double of Consul's HTTP API, for tests: what the Consul
//! adapter's contract and the services' end-to-end tests run against when
//! no real agent is given.
//!
//! It serves, on 127.0.0.1, the part of the agent API that discovery uses,
//! with Consul's documented behaviour:
//!
//! * `PUT /v1/agent/service/register`: JSON keys matched without regard to
//!   case or underscores, as Go does; Consul's validation messages (`Missing
//!   service name`, `Invalid service address`, `Invalid check: …`,
//!   `Request decode failed: …`); check ids and names defaulted; checks
//!   starting critical unless a status is given; re-registration replacing
//!   the service but keeping its checks' status and output.
//! * `PUT /v1/agent/service/deregister/:id`, `PUT /v1/agent/check/{pass,warn,fail}/:id`,
//!   `PUT /v1/agent/check/update/:id`: 404 with Consul's text for unknown
//!   ids, 500 `… does not have associated TTL` for non-TTL checks; TTL checks
//!   turn critical with `TTL expired` when not refreshed in time.
//! * `GET /v1/health/service/:name`: `passing` (any non-passing check drops
//!   the entry), `tag` (all required, case-insensitive), `dc`; blocking
//!   queries with `index` and `wait` (default 5 m, capped at 10 m, plus
//!   jitter); `X-Consul-Index` per service name (never 0), the last
//!   deregistration's index for a missing service; an entry per instance
//!   with `Node`, `Service` and `Checks` (including `serfHealth`).
//! * `GET /v1/catalog/services` (every name with the union of its tags, and
//!   `consul`) and `GET /v1/catalog/service/:name` (an entry per instance,
//!   whatever its health, `ServiceID`, `ServiceAddress`, `ServicePort`, …),
//!   with `tag`, `dc`, blocking queries and `X-Consul-Index` as `health`.
//! * Check ids: a check registered without an id is `service:<ServiceID>`;
//!   only when a registration has several (`Check` and `Checks` together)
//!   are they numbered `service:<ServiceID>:<n>`, in that order.
//! * Registrations reach the catalog (and so `health`) only after a short
//!   visibility delay, as with the agent's asynchronous anti-entropy.
//! * Wrong verbs get 405 with `Allow`; unknown paths 404 `Invalid URL path: …`;
//!   with an ACL token set, requests without it get 403; error bodies are
//!   plain text.
//!
//! Not simulated: HTTP checks are not executed (their status stays as
//! registered, or as [`ConsulDouble::set_check_status`] sets it); the
//! reaping of critical services after `DeregisterCriticalServiceAfter`;
//! consistency modes, `filter`, `near`, `node-meta`, and everything else
//! beyond discovery.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put, MethodRouter};
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Options of a [`ConsulDouble`].
#[derive(Clone, Debug)]
pub struct DoubleOptions {
    /// How long a registration takes to show in `health` reads.
    pub visibility_delay: Duration,
    /// When set, every request must carry this `X-Consul-Token`.
    pub acl_token: Option<String>,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        DoubleOptions {
            visibility_delay: Duration::from_millis(50),
            acl_token: None,
        }
    }
}

/// A running double of a Consul agent, on 127.0.0.1. Stopped when dropped.
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<AgentState>,
    changed: watch::Sender<()>,
    options: DoubleOptions,
}

#[derive(Default)]
struct AgentState {
    index: u64,
    services: BTreeMap<String, Service>,
    service_index: HashMap<String, u64>,
    last_extinction: u64,
    tokens_seen: Vec<Option<String>>,
}

#[derive(Clone, Debug)]
struct Service {
    id: String,
    name: String,
    tags: Vec<String>,
    address: String,
    port: u64,
    meta: BTreeMap<String, String>,
    in_catalog: bool,
    visible_at: Instant,
    create_index: u64,
    checks: Vec<Check>,
}

#[derive(Clone, Debug)]
struct Check {
    id: String,
    name: String,
    status: String,
    output: String,
    ttl: Option<Duration>,
    deadline: Option<Instant>,
    http: Option<String>,
}

impl AgentState {
    /// A write to `name`'s instances or checks.
    fn bump(&mut self, name: &str) {
        self.index += 1;
        self.service_index.insert(name.to_owned(), self.index);
        if !self.services.values().any(|s| s.in_catalog && s.name == name) {
            self.last_extinction = self.index;
        }
    }

    fn index_of(&self, name: &str) -> u64 {
        let exists = self.services.values().any(|s| s.in_catalog && s.name == name);
        let index = if exists {
            self.service_index.get(name).copied().unwrap_or(self.index)
        } else {
            self.last_extinction
        };
        index.max(1)
    }

    fn check_mut(&mut self, check_id: &str) -> Option<(&mut Check, String, bool)> {
        self.services.values_mut().find_map(|service| {
            let (name, in_catalog) = (service.name.clone(), service.in_catalog);
            service
                .checks
                .iter_mut()
                .find(|c| c.id == check_id)
                .map(|c| (c, name, in_catalog))
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|_| {});
    }
}

impl ConsulDouble {
    /// Starts a double with default options on a free port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        ConsulDouble::start_with(DoubleOptions::default()).await
    }

    /// Starts a double with `options` on a free port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start_with(options: DoubleOptions) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(AgentState {
                index: 10,
                last_extinction: 1,
                ..AgentState::default()
            }),
            changed: watch::Sender::new(()),
            options,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "Consul double stopped");
            }
        });
        let ticker = tokio::spawn(tick(Arc::clone(&shared)));
        Ok(ConsulDouble {
            addr,
            shared,
            tasks: vec![server, ticker],
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Forgets every registration, as an agent that restarted without its
    /// data directory: TTL updates then get 404.
    pub fn restart_agent(&self) {
        let mut state = self.shared.lock();
        let names: Vec<String> = state.services.values().map(|s| s.name.clone()).collect();
        state.services.clear();
        for name in names {
            state.bump(&name);
        }
        drop(state);
        self.shared.notify();
    }

    /// Lowers every index, as a snapshot restore or a new cluster does, so
    /// that clients see `X-Consul-Index` go backwards.
    pub fn rewind_index(&self) {
        let mut state = self.shared.lock();
        state.index = 1;
        state.last_extinction = 1;
        for index in state.service_index.values_mut() {
            *index = 1;
        }
        drop(state);
        self.shared.notify();
    }

    /// Sets a check's status (for HTTP checks, which the double does not
    /// run); returns whether the check exists.
    pub fn set_check_status(&self, check_id: &str, status: &str) -> bool {
        let mut state = self.shared.lock();
        let Some((check, name, in_catalog)) = state.check_mut(check_id) else {
            return false;
        };
        check.status = status.to_owned();
        if in_catalog {
            state.bump(&name);
        }
        drop(state);
        self.shared.notify();
        true
    }

    /// The ids of the services registered with the agent.
    pub fn registered(&self) -> Vec<String> {
        self.shared.lock().services.keys().cloned().collect()
    }

    /// The `X-Consul-Token` of every request so far (`None` when absent).
    pub fn tokens_seen(&self) -> Vec<Option<String>> {
        self.shared.lock().tokens_seen.clone()
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Moves registrations into the catalog after the visibility delay and
/// expires TTL checks.
async fn tick(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let mut state = shared.lock();
        let mut changed = Vec::new();
        for service in state.services.values_mut() {
            if !service.in_catalog && service.visible_at <= now {
                service.in_catalog = true;
                changed.push(service.name.clone());
            }
            for check in &mut service.checks {
                let expired = check.deadline.is_some_and(|deadline| deadline <= now);
                if expired && check.status != "critical" {
                    check.status = "critical".into();
                    check.output = if check.output.is_empty() {
                        "TTL expired".into()
                    } else {
                        format!("TTL expired (last output before timeout follows): {}", check.output)
                    };
                    check.deadline = None;
                    if service.in_catalog {
                        changed.push(service.name.clone());
                    }
                }
            }
        }
        for name in &changed {
            state.bump(name);
        }
        drop(state);
        if !changed.is_empty() {
            shared.notify();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let put_only = |route: MethodRouter<Arc<Shared>>| route.fallback(method_not_allowed);
    Router::new()
        .route("/v1/agent/service/register", put_only(put(register)))
        .route("/v1/agent/service/deregister/{id}", put_only(put(deregister)))
        .route(
            "/v1/agent/check/pass/{id}",
            put_only(put(|s, p, q, h| ttl_update(s, p, q, h, "passing"))),
        )
        .route(
            "/v1/agent/check/warn/{id}",
            put_only(put(|s, p, q, h| ttl_update(s, p, q, h, "warning"))),
        )
        .route(
            "/v1/agent/check/fail/{id}",
            put_only(put(|s, p, q, h| ttl_update(s, p, q, h, "critical"))),
        )
        .route("/v1/agent/check/update/{id}", put_only(put(check_update)))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/checks", get(agent_checks))
        .route("/v1/status/leader", get(|| async { "\"127.0.0.1:8300\"" }))
        .fallback(|| async {
            text(
                StatusCode::NOT_FOUND,
                "Invalid URL path: not a recognized HTTP API endpoint",
            )
        })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&shared), acl))
        .with_state(shared)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

async fn method_not_allowed(method: Method) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [("Allow", "PUT")],
        format!("method {method} not allowed"),
    )
        .into_response()
}

async fn acl(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = request
        .headers()
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared.lock().tokens_seen.push(token.clone());
    let policy = if shared.options.acl_token.is_some() {
        "deny"
    } else {
        "allow"
    };
    let mut response = match (&shared.options.acl_token, token) {
        (Some(_), None) => text(StatusCode::FORBIDDEN, "Permission denied"),
        (Some(wanted), Some(given)) if *wanted != given => text(StatusCode::FORBIDDEN, "ACL not found"),
        _ => next.run(request).await,
    };
    response.headers_mut().insert(
        "X-Consul-Default-ACL-Policy",
        axum::http::HeaderValue::from_static(policy),
    );
    response
}

/// A key of a JSON object, matched as Go's `encoding/json` does: without
/// regard to case (and, for register's snake_case aliases, underscores).
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let wanted = name.to_ascii_lowercase();
    object
        .iter()
        .find(|(key, _)| key.to_ascii_lowercase().replace('_', "") == wanted)
        .map(|(_, value)| value)
        .filter(|value| !value.is_null())
}

fn string_field(object: &Map<String, Value>, name: &str) -> Result<String, String> {
    match field(object, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("Request decode failed: {name}: expected a string, got {other}")),
    }
}

/// A Go duration (`"10s"`, `"1m30s"`, `"1500ms"`) or a number of nanoseconds.
fn duration_field(object: &Map<String, Value>, name: &str) -> Result<Option<Duration>, String> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(Some(Duration::from_nanos(n.as_u64().unwrap_or(0)))),
        Some(Value::String(s)) => parse_go_duration(s)
            .map(Some)
            .ok_or_else(|| format!("Request decode failed: time: invalid duration \"{s}\"")),
        Some(other) => Err(format!("Request decode failed: {name}: not a duration: {other}")),
    }
}

/// Parses Go's duration syntax: a sequence of decimal numbers with units
/// `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`; `"0"` alone is zero.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

fn parse_check(
    object: &Map<String, Value>,
    default_id: String,
    service_name: &str,
) -> Result<(Check, Option<Duration>), String> {
    let mut id = string_field(object, "CheckID")?;
    if id.is_empty() {
        id = string_field(object, "ID")?;
    }
    if id.is_empty() {
        id = default_id;
    }
    let mut name = string_field(object, "Name")?;
    if name.is_empty() {
        name = format!("Service '{service_name}' check");
    }
    let status = match string_field(object, "Status")?.as_str() {
        "" => "critical".to_owned(),
        s @ ("passing" | "warning" | "critical") => s.to_owned(),
        _ => return Err("Status for checks must 'passing', 'warning', 'critical'".into()),
    };
    let ttl = duration_field(object, "TTL")?.filter(|d| !d.is_zero());
    let interval = duration_field(object, "Interval")?.filter(|d| !d.is_zero());
    let http = Some(string_field(object, "HTTP")?).filter(|h| !h.is_empty());
    let deregister_after = duration_field(object, "DeregisterCriticalServiceAfter")?;
    if ttl.is_some() && interval.is_some() {
        return Err("Invalid check: Interval and TTL cannot both be specified".into());
    }
    if http.is_some() && interval.is_none() {
        return Err(
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks".into(),
        );
    }
    if http.is_none() && ttl.is_none() {
        return Err("Invalid check: TTL must be > 0 for TTL checks".into());
    }
    let check = Check {
        id,
        name,
        status,
        output: String::new(),
        ttl,
        deadline: ttl.map(|ttl| Instant::now() + ttl),
        http,
    };
    Ok((check, deregister_after))
}

fn parse_registration(body: &[u8], visible_at: Instant) -> Result<Service, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?;
    let Value::Object(object) = value else {
        return Err("Request decode failed: expected a JSON object".into());
    };
    let name = string_field(&object, "Name")?;
    if name.is_empty() {
        return Err("Missing service name".into());
    }
    let mut id = string_field(&object, "ID")?;
    if id.is_empty() {
        id = name.clone();
    }
    let address = string_field(&object, "Address")?;
    if address == "0.0.0.0" || address == "::" || address == "[::]" {
        return Err("Invalid service address".into());
    }
    let tags = match field(&object, "Tags") {
        None => Vec::new(),
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| format!("Request decode failed: {e}"))?,
    };
    let meta = match field(&object, "Meta") {
        None => BTreeMap::new(),
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| format!("Invalid Service Meta: {e}"))?,
    };
    let port = match field(&object, "Port") {
        None => 0,
        Some(value) => value.as_u64().ok_or("Request decode failed: Port is not a number")?,
    };
    // `Check` then `Checks`, as the agent lists them: a check without an id
    // is `service:<id>`, numbered `service:<id>:<n>` only when there are
    // several.
    let mut given: Vec<&Map<String, Value>> = Vec::new();
    if let Some(Value::Object(check)) = field(&object, "Check") {
        given.push(check);
    }
    if let Some(Value::Array(many)) = field(&object, "Checks") {
        for check in many {
            let Value::Object(check) = check else {
                return Err("Request decode failed: a check must be an object".into());
            };
            given.push(check);
        }
    }
    let mut checks = Vec::new();
    for (i, check) in given.iter().enumerate() {
        let default_id = if given.len() > 1 {
            format!("service:{id}:{}", i + 1)
        } else {
            format!("service:{id}")
        };
        checks.push(parse_check(check, default_id, &name)?.0);
    }
    Ok(Service {
        id,
        name,
        tags,
        address,
        port,
        meta,
        in_catalog: false,
        visible_at,
        create_index: 0,
        checks,
    })
}

async fn register(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let visible_at = Instant::now() + shared.options.visibility_delay;
    let mut service = match parse_registration(&body, visible_at) {
        Ok(service) => service,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let mut state = shared.lock();
    state.index += 1;
    service.create_index = state.index;
    if let Some(old) = state.services.get(&service.id) {
        // Re-registering keeps the checks' status and output.
        for check in &mut service.checks {
            if let Some(previous) = old.checks.iter().find(|c| c.id == check.id) {
                check.status = previous.status.clone();
                check.output = previous.output.clone();
            }
        }
        service.create_index = old.create_index;
        if old.in_catalog {
            service.in_catalog = true;
        }
    }
    let (name, in_catalog) = (service.name.clone(), service.in_catalog);
    state.services.insert(service.id.clone(), service);
    if in_catalog {
        state.bump(&name);
    }
    drop(state);
    shared.notify();
    StatusCode::OK.into_response()
}

async fn deregister(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut state = shared.lock();
    let Some(service) = state.services.remove(&id) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."),
        );
    };
    if service.in_catalog {
        state.bump(&service.name);
    }
    drop(state);
    shared.notify();
    StatusCode::OK.into_response()
}

fn query_pairs(raw: Option<String>) -> Vec<(String, String)> {
    let raw = raw.unwrap_or_default();
    reqwest::Url::parse(&format!("http://double/?{raw}"))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

fn set_status(shared: &Shared, check_id: &str, status: &str, output: String) -> Response {
    let mut state = shared.lock();
    let Some((check, name, in_catalog)) = state.check_mut(check_id) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("Unknown check ID \"{check_id}\". Ensure that the check ID is passed, not the check name."),
        );
    };
    let Some(ttl) = check.ttl else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("CheckID \"{check_id}\" does not have associated TTL"),
        );
    };
    let changed = check.status != status || check.output != output;
    check.status = status.to_owned();
    check.output = output.chars().take(4096).collect();
    check.deadline = Some(Instant::now() + ttl);
    if changed && in_catalog {
        state.bump(&name);
    }
    drop(state);
    if changed {
        shared.notify();
    }
    StatusCode::OK.into_response()
}

async fn ttl_update(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    _: HeaderMap,
    status: &'static str,
) -> Response {
    let note = query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "note")
        .map(|(_, v)| v)
        .unwrap_or_default();
    set_status(&shared, &id, status, note)
}

async fn check_update(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let object = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return text(StatusCode::BAD_REQUEST, "Request decode failed: expected a JSON object"),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("Request decode failed: {e}")),
    };
    let (status, output) = match (string_field(&object, "Status"), string_field(&object, "Output")) {
        (Ok(status), Ok(output)) => (status, output),
        (Err(message), _) | (_, Err(message)) => return text(StatusCode::BAD_REQUEST, message),
    };
    if !matches!(status.as_str(), "passing" | "warning" | "critical") {
        return text(StatusCode::BAD_REQUEST, format!("Invalid check status: '{status}'"));
    }
    set_status(&shared, &id, &status, output)
}

struct HealthQuery {
    passing: bool,
    tags: Vec<String>,
    index: u64,
    wait: Duration,
    dc: Option<String>,
}

fn parse_health_query(raw: Option<String>) -> Result<HealthQuery, String> {
    let mut query = HealthQuery {
        passing: false,
        tags: Vec::new(),
        index: 0,
        wait: Duration::from_secs(300),
        dc: None,
    };
    for (key, value) in query_pairs(raw) {
        match key.as_str() {
            "passing" => {
                query.passing = match value.as_str() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err("Invalid value for ?passing".into()),
                }
            }
            "tag" => query.tags.push(value),
            "index" => query.index = value.parse().map_err(|_| "Invalid index".to_owned())?,
            "wait" => {
                let wait = parse_go_duration(&value).ok_or_else(|| "Invalid wait time".to_owned())?;
                query.wait = wait.min(Duration::from_secs(600));
            }
            "dc" => query.dc = Some(value),
            _ => {}
        }
    }
    Ok(query)
}

/// The query of a catalog or health read, or the answer refusing it (a bad
/// parameter, a datacenter other than the double's).
fn read_query(raw: Option<String>) -> Result<HealthQuery, (StatusCode, String)> {
    let query = parse_health_query(raw).map_err(|message| (StatusCode::BAD_REQUEST, message))?;
    if query.dc.as_deref().is_some_and(|dc| dc != "dc1") {
        return Err((StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter".to_owned()));
    }
    Ok(query)
}

/// The instances of `name` in the catalog that carry every tag the query
/// asks for (case-insensitively, as Consul compares tags).
fn listed<'a>(state: &'a AgentState, name: &'a str, query: &'a HealthQuery) -> impl Iterator<Item = &'a Service> + 'a {
    state
        .services
        .values()
        .filter(move |s| s.in_catalog && s.name == name)
        .filter(move |s| {
            query
                .tags
                .iter()
                .all(|wanted| s.tags.iter().any(|tag| tag.eq_ignore_ascii_case(wanted)))
        })
}

fn health_entries(state: &AgentState, name: &str, query: &HealthQuery) -> Vec<Value> {
    listed(state, name, query)
        .filter(|s| !query.passing || s.checks.iter().all(|c| c.status == "passing"))
        .map(|s| {
            let mut checks: Vec<Value> = s
                .checks
                .iter()
                .map(|c| {
                    json!({
                        "Node": "double-node", "CheckID": c.id, "Name": c.name, "Status": c.status,
                        "Notes": "", "Output": c.output, "ServiceID": s.id, "ServiceName": s.name,
                        "ServiceTags": s.tags, "Type": if c.ttl.is_some() { "ttl" } else { "http" },
                        "Definition": { "HTTP": c.http.clone().unwrap_or_default() },
                    })
                })
                .collect();
            checks.push(json!({
                "Node": "double-node", "CheckID": "serfHealth", "Name": "Serf Health Status",
                "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                "ServiceID": "", "ServiceName": "", "ServiceTags": [],
            }));
            json!({
                "Node": {
                    "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "double-node", "Address": "127.0.0.1",
                    "Datacenter": "dc1", "TaggedAddresses": { "lan": "127.0.0.1", "wan": "127.0.0.1" }, "Meta": {},
                },
                "Service": {
                    "ID": s.id, "Service": s.name, "Tags": s.tags, "Address": s.address, "Meta": s.meta,
                    "Port": s.port, "Weights": { "Passing": 1, "Warning": 1 }, "EnableTagOverride": false,
                    "CreateIndex": s.create_index, "ModifyIndex": state.index_of(&s.name),
                },
                "Checks": checks,
            })
        })
        .collect()
}

async fn health_service(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if name.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing service name");
    }
    let query = match read_query(raw) {
        Ok(query) => query,
        Err((status, message)) => return text(status, message),
    };
    blocking(&shared, &query, |state| {
        (
            state.index_of(&name),
            Value::Array(health_entries(state, &name, &query)),
        )
    })
    .await
}

/// Answers a read at once, or, for a blocking query (`index` given), once
/// the index `read` gives passes it or the wait is over (the agent adds up
/// to wait/16 of jitter), with `X-Consul-Index` and the other headers of a
/// read.
async fn blocking(shared: &Shared, query: &HealthQuery, read: impl Fn(&AgentState) -> (u64, Value)) -> Response {
    let jitter = query.wait.as_nanos() as u64 / 16;
    let jitter = Duration::from_nanos(if jitter == 0 {
        0
    } else {
        u64::from(Instant::now().elapsed().subsec_nanos()) % jitter
    });
    let deadline = tokio::time::Instant::now() + query.wait + jitter;
    let mut changed = shared.changed.subscribe();
    loop {
        changed.borrow_and_update();
        let (index, body) = read(&shared.lock());
        let timed_out = tokio::time::Instant::now() >= deadline;
        if query.index == 0 || index > query.index || timed_out {
            return (
                StatusCode::OK,
                [
                    ("X-Consul-Index", index.to_string()),
                    ("X-Consul-KnownLeader", "true".to_owned()),
                    ("X-Consul-LastContact", "0".to_owned()),
                    ("Content-Type", "application/json".to_owned()),
                ],
                body.to_string(),
            )
                .into_response();
        }
        let _ = tokio::time::timeout_at(deadline, changed.changed()).await;
    }
}

/// `GET /v1/catalog/services`: every service name in the catalog with the
/// union of its instances' tags (and `consul`, which an agent always
/// lists); the index is the catalog's, moved by any write.
async fn catalog_services(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Response {
    let query = match read_query(raw) {
        Ok(query) => query,
        Err((status, message)) => return text(status, message),
    };
    blocking(&shared, &query, |state| {
        let mut names: BTreeMap<&str, Vec<String>> = BTreeMap::from([("consul", Vec::new())]);
        for service in state.services.values().filter(|s| s.in_catalog) {
            let tags = names.entry(service.name.as_str()).or_default();
            for tag in &service.tags {
                if !tags.contains(tag) {
                    tags.push(tag.clone());
                }
            }
        }
        (state.index.max(1), json!(names))
    })
    .await
}

/// `GET /v1/catalog/service/:name`: one entry per instance in the catalog,
/// whatever its health, with `tag` filtering and blocking as `health`.
async fn catalog_service(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = match read_query(raw) {
        Ok(query) => query,
        Err((status, message)) => return text(status, message),
    };
    blocking(&shared, &query, |state| {
        let entries: Vec<Value> = listed(state, &name, &query)
            .map(|s| {
                json!({
                    "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "double-node", "Address": "127.0.0.1",
                    "Datacenter": "dc1", "TaggedAddresses": { "lan": "127.0.0.1", "wan": "127.0.0.1" },
                    "NodeMeta": {}, "ServiceKind": "", "ServiceID": s.id, "ServiceName": s.name,
                    "ServiceTags": s.tags, "ServiceAddress": s.address, "ServiceMeta": s.meta,
                    "ServicePort": s.port, "ServiceWeights": { "Passing": 1, "Warning": 1 },
                    "ServiceEnableTagOverride": false,
                    "CreateIndex": s.create_index, "ModifyIndex": state.index_of(&s.name),
                })
            })
            .collect();
        (state.index_of(&name), Value::Array(entries))
    })
    .await
}

async fn agent_services(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.lock();
    let services: Map<String, Value> = state
        .services
        .values()
        .map(|s| {
            let value = json!({
                "ID": s.id, "Service": s.name, "Tags": s.tags, "Meta": s.meta, "Port": s.port,
                "Address": s.address, "Weights": { "Passing": 1, "Warning": 1 }, "EnableTagOverride": false,
            });
            (s.id.clone(), value)
        })
        .collect();
    axum::Json(Value::Object(services)).into_response()
}

async fn agent_checks(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.lock();
    let checks: Map<String, Value> = state
        .services
        .values()
        .flat_map(|s| s.checks.iter().map(move |c| (s, c)))
        .map(|(s, c)| {
            let value = json!({
                "Node": "double-node", "CheckID": c.id, "Name": c.name, "Status": c.status, "Output": c.output,
                "ServiceID": s.id, "ServiceName": s.name, "Type": if c.ttl.is_some() { "ttl" } else { "http" },
            });
            (c.id.clone(), value)
        })
        .collect();
    axum::Json(Value::Object(checks)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        for bad in ["", "10", "s", "10x", "-1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn register_bodies_match_keys_like_go() {
        let body = br#"{"name":"web","id":"web-1","TAGS":["a"],"port":80,
            "check":{"ttl":"15s","deregister_critical_service_after":"1m"}}"#;
        let service = parse_registration(body, Instant::now()).unwrap();
        assert_eq!(
            (service.id.as_str(), service.name.as_str(), service.port),
            ("web-1", "web", 80)
        );
        assert_eq!(service.tags, ["a"]);
        let check = &service.checks[0];
        assert_eq!(check.id, "service:web-1");
        assert_eq!(check.name, "Service 'web' check");
        assert_eq!(
            check.status, "critical",
            "a check starts critical unless given a status"
        );
        assert_eq!(check.ttl, Some(Duration::from_secs(15)));
    }

    #[test]
    fn register_validation_uses_consuls_messages() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"ID":"x"}"#, "Missing service name"),
            (br#"{"Name":"web","Address":"0.0.0.0"}"#, "Invalid service address"),
            (
                br#"{"Name":"web","Check":{"TTL":"5s","Interval":"5s"}}"#,
                "Invalid check: Interval and TTL cannot both be specified",
            ),
            (
                br#"{"Name":"web","Check":{"HTTP":"http://x/health"}}"#,
                "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
            ),
            (
                br#"{"Name":"web","Check":{"TTL":"5s","Status":"fine"}}"#,
                "Status for checks must 'passing', 'warning', 'critical'",
            ),
            (br#"{"Name":"#, "Request decode failed: "),
        ];
        for (body, message) in cases {
            let error = parse_registration(body, Instant::now()).unwrap_err();
            assert!(error.starts_with(message), "{error:?} should start with {message:?}");
        }
    }
}
