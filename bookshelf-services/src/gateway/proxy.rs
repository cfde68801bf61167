//! The gateway's routing and forwarding: a path prefix names a service, the
//! service's [`Balancer`] names an instance, and the request goes there with
//! its correlation id.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bookshelf::trace::TraceParent;
use bookshelf::{Balancer, ServiceInstance};
use serde_json::{json, Value};

use crate::api::{ApiError, CORRELATION_HEADER, NOT_OWNER_HEADER};

/// The response header naming the instance that answered.
pub const SERVED_BY_HEADER: &str = "x-served-by";

/// Paths under `prefix` go to `service`, unchanged.
pub struct Route {
    pub(crate) prefix: String,
    pub(crate) balancer: Balancer,
}

impl Route {
    pub fn new(prefix: &str, balancer: Balancer) -> Route {
        Route {
            prefix: prefix.trim_end_matches('/').to_owned(),
            balancer,
        }
    }

    /// `/books` takes `/books` and `/books/…`, not `/bookshop`; `/` takes all.
    fn takes(&self, path: &str) -> bool {
        match path.strip_prefix(&self.prefix) {
            Some(rest) => self.prefix.is_empty() || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// How the gateway forwards.
pub struct Limits {
    /// How long an upstream has to start answering, and the longest pause
    /// within its body.
    pub timeout: Duration,
    /// The largest request body accepted.
    pub max_body: usize,
    /// How long an instance that refused a connection is left out.
    pub eject_for: Duration,
}

/// The client requests are forwarded with: hyper's, keeping connections to
/// each instance open for reuse. It follows no redirects (they are the
/// caller's business) and streams bodies both ways.
type Upstream = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub struct Gateway {
    /// Longest prefix first, so that the most specific route wins.
    pub(crate) routes: Vec<Route>,
    upstream: Upstream,
    pub(crate) limits: Limits,
    metrics: RequestMetrics,
}

/// The handles of the request metrics, registered once for each route,
/// status and instance and then kept: registering builds and hashes a key
/// for every request otherwise.
#[derive(Default)]
struct RequestMetrics {
    /// Counters by the instance that answered, then by route and status.
    counts: std::sync::Mutex<std::collections::HashMap<Box<str>, Vec<Count>>>,
    /// Histograms by route.
    durations: std::sync::Mutex<BTreeMap<Option<usize>, metrics::Histogram>>,
}

/// A route (`None` for no route), a status, and their counter.
type Count = (Option<usize>, u16, metrics::Counter);

impl RequestMetrics {
    /// A request that `route` (an index into the routes, `None` for no
    /// route, `prefix` its label) took, answered with `status` by `instance`.
    fn record(&self, route: Option<usize>, prefix: &str, status: u16, instance: &str, took: Duration) {
        {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let by_route = match counts.get_mut(instance) {
                Some(by_route) => by_route,
                None => counts.entry(instance.into()).or_default(),
            };
            match by_route.iter().find(|(r, s, _)| *r == route && *s == status) {
                Some((_, _, counter)) => counter.increment(1),
                None => {
                    let labels = [
                        ("route", prefix.to_owned()),
                        ("status", status.to_string()),
                        ("instance", instance.to_owned()),
                    ];
                    let counter = metrics::counter!(REQUESTS, &labels);
                    counter.increment(1);
                    by_route.push((route, status, counter));
                }
            }
        }
        let mut durations = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        durations
            .entry(route)
            .or_insert_with(|| metrics::histogram!(REQUEST_DURATION, "route" => prefix.to_owned()))
            .record(took.as_secs_f64());
    }
}

impl Gateway {
    pub fn new(mut routes: Vec<Route>, limits: Limits) -> Gateway {
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(limits.timeout.min(Duration::from_secs(2))));
        connector.set_nodelay(true);
        let upstream = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Gateway {
            routes,
            upstream,
            limits,
            metrics: RequestMetrics::default(),
        }
    }

    /// The services and how many healthy instances each has, by name.
    /// Each routed service and the instances discovery lists for it now.
    pub fn instances(&self) -> Vec<(String, Arc<[ServiceInstance]>)> {
        let mut seen = Vec::new();
        for route in &self.routes {
            let service = route.balancer.service().to_owned();
            if !seen.iter().any(|(name, _)| *name == service) {
                seen.push((service, route.balancer.instances()));
            }
        }
        seen
    }

    pub fn services(&self) -> BTreeMap<&str, usize> {
        self.routes
            .iter()
            .map(|route| (route.balancer.service(), route.balancer.instances().len()))
            .collect()
    }

    /// Waits (up to `timeout`) until discovery has answered for every route.
    pub async fn ready(&self, timeout: Duration) -> bool {
        for route in &self.routes {
            if !route.balancer.ready(timeout).await {
                return false;
            }
        }
        true
    }
}

/// What the gateway's `GET /health` answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct GatewayHealth {
    /// `ok`.
    status: String,
    /// How many healthy instances each service has now, by name.
    services: BTreeMap<String, usize>,
}

/// The gateway serves; how many instances each service has.
#[utoipa::path(
    get, path = "/health", tag = "meta",
    responses((status = 200, description = "The gateway serves", body = GatewayHealth))
)]
pub async fn health(State(gateway): State<Arc<Gateway>>) -> Response {
    let services = gateway
        .services()
        .into_iter()
        .map(|(name, instances)| (name.to_owned(), instances))
        .collect();
    axum::Json(GatewayHealth {
        status: "ok".into(),
        services,
    })
    .into_response()
}

/// Headers that concern one connection, not the request: never forwarded.
/// `host` and `content-length` are set again for the upstream request.
/// (Names made once: a name given as text is parsed again at every use.)
pub(crate) const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Takes out of `headers` what concerns one connection only: the
/// hop-by-hop headers, and every header that `Connection` names (RFC 9110,
/// section 7.6.1). Most messages carry none of them: one pass over the
/// names finds that, rather than a lookup for each.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// The headers the gateway reads or sets, as names made once.
pub(crate) const CORRELATION: HeaderName = HeaderName::from_static(CORRELATION_HEADER);
const SERVED_BY: HeaderName = HeaderName::from_static(SERVED_BY_HEADER);
pub(crate) const TRACE: HeaderName = HeaderName::from_static(TRACEPARENT);
pub(crate) const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The request's correlation id (`value`, the `x-correlation-id` it came
/// with) when it is usable as one (1 to 128 visible ASCII characters), or a
/// new one.
pub(crate) fn correlation_id(value: Option<&[u8]>) -> HeaderValue {
    value
        .filter(|bytes| (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic()))
        .and_then(|bytes| HeaderValue::from_bytes(bytes).ok())
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid header value")
        })
}

/// The trace the request takes part in: the caller's (`value`, the
/// `traceparent` it came with) continued in the gateway's own span, or a
/// new one.
pub(crate) fn trace(value: Option<&[u8]>) -> TraceParent {
    value
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<TraceParent>().ok())
        .map_or_else(TraceParent::start, |parent| parent.child())
}

/// Every request but the gateway's own `/health`.
pub async fn forward(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let mut request = request;
    let correlation = correlation_id(request.headers().get(&CORRELATION).map(HeaderValue::as_bytes));
    let traceparent = trace(request.headers().get(&TRACE).map(HeaderValue::as_bytes)).to_string();
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        request.headers_mut().insert(TRACE, value);
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = gateway.route_index(&path);
    let mut response = match gateway.route(route, peer, &correlation, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    let instance = response
        .headers()
        .get(&SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    gateway.answered(
        &Answered {
            method: method.as_str(),
            path: &path,
            route,
            status: response.status().as_u16(),
            instance,
            correlation: &correlation,
            traceparent: &traceparent,
        },
        started.elapsed(),
    );
    response.headers_mut().insert(CORRELATION, correlation);
    response
}

/// What the log line and the metrics say of a request answered.
pub(crate) struct Answered<'a> {
    pub method: &'a str,
    /// Without the query.
    pub path: &'a str,
    /// The route that took it (an index into the routes), if one did.
    pub route: Option<usize>,
    pub status: u16,
    /// The id of the instance that answered, `-` for the gateway itself.
    pub instance: &'a str,
    pub correlation: &'a HeaderValue,
    /// As sent on: `00-<trace id>-<span id>-<flags>`.
    pub traceparent: &'a str,
}

impl Gateway {
    /// Logs a request answered, `took` after it came, and counts it: the
    /// one place both ways of forwarding (`forward` and the `fast` path)
    /// report from.
    pub(crate) fn answered(&self, answered: &Answered<'_>, took: Duration) {
        // Text and integers only: the log's fast field writer takes those
        // straight (see `api::logs`).
        tracing::info!(
            // As text, not `format_args!`, so that it is written the fast
            // way too; first, as the default message is.
            message = "request",
            method = answered.method,
            path = answered.path,
            status = answered.status,
            served_by = answered.instance,
            correlation_id = answered.correlation.to_str().unwrap_or("-"),
            // The trace id as written already.
            trace_id = answered.traceparent.get(3..35).unwrap_or("-"),
            us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        );
        let prefix = answered.route.map_or("none", |at| self.routes[at].prefix.as_str());
        self.metrics
            .record(answered.route, prefix, answered.status, answered.instance, took);
    }
}

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// `bookshelf_gateway_requests_total{route, status, instance}`: requests by
/// the route prefix that took them (`none` for no route), the status
/// answered, and the instance that answered (`-` for the gateway itself).
pub const REQUESTS: &str = "bookshelf_gateway_requests_total";
/// `bookshelf_gateway_request_duration_seconds{route}`.
pub const REQUEST_DURATION: &str = "bookshelf_gateway_request_duration_seconds";

impl Gateway {
    /// `own` (the gateway's OpenAPI document) with each service's document
    /// added, narrowed to the paths the gateway sends to it, and with the
    /// answers the gateway itself may give on those paths (502, 503, 504). A
    /// service with no instance that answers now is left out, and said so in
    /// the log.
    pub async fn combined_document(&self, mut own: Value) -> Value {
        for route in &self.routes {
            let service = route.balancer.service();
            let Some(instance) = route.balancer.pick() else {
                tracing::warn!(%service, "no instance to ask for its OpenAPI document");
                continue;
            };
            // Through the forwarding client, within the forwarding timeout.
            let fetched = async {
                let uri = axum::http::Uri::builder()
                    .scheme("http")
                    .authority(instance.authority())
                    .path_and_query(crate::docs::DOCUMENT_PATH)
                    .build()
                    .map_err(|error| error.to_string())?;
                let answer = self.upstream.get(uri).await.map_err(|error| error.to_string())?;
                if !answer.status().is_success() {
                    return Err(format!("it answered {}", answer.status()));
                }
                let body = http_body_util::BodyExt::collect(answer.into_body())
                    .await
                    .map_err(|error| error.to_string())?;
                serde_json::from_slice::<Value>(&body.to_bytes()).map_err(|error| error.to_string())
            };
            let fetched = tokio::time::timeout(self.limits.timeout, fetched)
                .await
                .unwrap_or_else(|_| Err("it did not answer in time".to_owned()));
            let document = match fetched {
                Ok(document) => document,
                Err(error) => {
                    tracing::warn!(%service, instance = %instance.id, %error, "cannot read the service's OpenAPI document");
                    continue;
                }
            };
            let paths = document.get("paths").and_then(Value::as_object).into_iter().flatten();
            for (path, item) in paths {
                let taken = own.pointer(&format!("/paths/{}", path.replace('~', "~0").replace('/', "~1")));
                if taken.is_some() || self.route_of(path) != Some(route.prefix.as_str()) {
                    continue;
                }
                let mut item = item.clone();
                let operations = item.as_object_mut().into_iter().flat_map(|item| item.values_mut());
                for responses in operations.filter_map(|operation| operation.get_mut("responses")) {
                    if let Some(responses) = responses.as_object_mut() {
                        for (status, description) in GATEWAY_ERRORS {
                            responses
                                .entry(status.to_string())
                                .or_insert_with(|| gateway_error(description));
                        }
                    }
                }
                // The gateway's own document is an object with paths: indexing
                // adds the entry.
                own["paths"][path.as_str()] = item;
            }
            let schemas = document
                .pointer("/components/schemas")
                .and_then(Value::as_object)
                .into_iter()
                .flatten();
            for (name, schema) in schemas {
                let known = &mut own["components"]["schemas"];
                if known.get(name).is_none() {
                    known[name.as_str()] = schema.clone();
                }
            }
        }
        own
    }

    /// Where in `routes` the route that takes `path` is.
    pub(crate) fn route_index(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|route| route.takes(path))
    }

    /// The prefix of the route that takes `path`.
    fn route_of(&self, path: &str) -> Option<&str> {
        self.route_index(path).map(|at| self.routes[at].prefix.as_str())
    }

    /// Forwards `request` by `route`, the index of the route that takes its
    /// path (`None`: no route does, a 404).
    async fn route(
        &self,
        route: Option<usize>,
        peer: SocketAddr,
        correlation: &HeaderValue,
        request: Request,
    ) -> Result<Response, ApiError> {
        let Some(route) = route.map(|at| &self.routes[at]) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no service serves {}", request.uri().path()),
            ));
        };
        let (mut parts, body) = request.into_parts();
        // Each refusal below leaves the body unread, or read in part.
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {} bytes", self.limits.max_body),
            )
            .closing()
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.limits.max_body as u64) {
            return Err(too_large());
        }
        // The body is read whole (it is small, by the limit) so that it can be
        // sent again to another instance when the first refuses the connection
        // or turns the request down.
        // A request that has none (most GETs) needs no timer to read it.
        let reading = async {
            if axum::body::HttpBody::is_end_stream(&body) {
                return Ok(Ok(Bytes::new()));
            }
            tokio::time::timeout(self.limits.timeout, axum::body::to_bytes(body, self.limits.max_body)).await
        };
        let Ok(read) = reading.await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms",
                    self.limits.timeout.as_millis()
                ),
            )
            .closing());
        };
        let body: Bytes = match read {
            Ok(body) => body,
            Err(error) => {
                let source = error.into_inner();
                if source.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    return Err(too_large());
                }
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {source}"),
                )
                .closing());
            }
        };

        // The request's own headers, edited in place: what concerns one
        // connection out, the proxy's own in.
        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        let host = headers.remove(header::HOST);
        headers.insert(CORRELATION, correlation.clone());
        let forwarded_for = forwarded_for(headers.get(&FORWARDED_FOR).map(HeaderValue::as_bytes), peer);
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(FORWARDED_FOR, value);
        }
        if let Some(host) = host {
            headers.insert(FORWARDED_HOST, host);
        }
        headers.insert(FORWARDED_PROTO, HeaderValue::from_static("http"));
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());

        let service = route.balancer.service();
        // Each attempt goes to an instance not tried yet; only a refused
        // connection or a turn-down (nothing was done) is tried again,
        // whatever the method.
        let attempts = route.balancer.instances().len().clamp(1, 3);
        let mut refused = Vec::new();
        let mut tried = Vec::new();
        for attempt in 1..=attempts {
            let Some(instance) = route.balancer.pick_other_than(&tried) else {
                break;
            };
            tried.push(instance.id.clone());
            let uri = axum::http::Uri::builder()
                .scheme("http")
                .authority(instance.authority())
                .path_and_query(path_and_query)
                .build();
            let uri = match uri {
                Ok(uri) => uri,
                Err(error) => return Err(unusable(service, &instance, &error)),
            };
            let mut outgoing = Request::new(Body::from(body.clone()));
            *outgoing.method_mut() = parts.method.clone();
            *outgoing.uri_mut() = uri;
            // Copied only for an attempt that may be followed by another.
            *outgoing.headers_mut() = if attempt < attempts {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            let sent = tokio::time::timeout(self.limits.timeout, self.upstream.request(outgoing)).await;
            match sent {
                Ok(Ok(upstream))
                    if attempt < attempts
                        && turned_down(
                            upstream.status().as_u16(),
                            upstream.headers().keys().map(HeaderName::as_str),
                        ) =>
                {
                    tracing::debug!(%service, instance = %instance.id, "turned down; trying another instance");
                }
                Ok(Ok(upstream)) => return Ok(relay(upstream, &instance, self.limits.timeout)),
                Ok(Err(error)) if error.is_connect() => {
                    refuse(route, &instance, &error, self.limits.eject_for);
                    refused.push(instance.id.clone());
                }
                Err(_) => {
                    return Err(timed_out(service, &instance, self.limits.timeout));
                }
                Ok(Err(error)) => {
                    // The connection broke after the request went out: the
                    // instance is likely gone, but the request may have been
                    // carried out, so it is not sent again.
                    return Err(failed(route, &instance, &error, self.limits.eject_for));
                }
            }
        }
        Err(none_answered(service, &refused))
    }
}

// The gateway's own answers when forwarding fails, and what it does about
// the instance: shared by both ways of forwarding, so that they say the
// same.

/// Whether an answer turns the request down having done nothing with it
/// (503 with [`NOT_OWNER_HEADER`]: the instance cannot take it now, and
/// another may), so that the gateway tries another instance.
pub(crate) fn turned_down<'a>(status: u16, mut names: impl Iterator<Item = &'a str>) -> bool {
    status == 503 && names.any(|name| name.eq_ignore_ascii_case(NOT_OWNER_HEADER))
}

/// An instance whose address cannot be written as a URI authority.
pub(crate) fn unusable(service: &str, instance: &ServiceInstance, error: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("{service} instance {} has no usable address: {error}", instance.id),
    )
}

/// An instance that did not start answering within `timeout`.
pub(crate) fn timed_out(service: &str, instance: &ServiceInstance, timeout: Duration) -> ApiError {
    tracing::warn!(%service, instance = %instance.id, "upstream timed out");
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "{service} instance {} did not answer within {} ms",
            instance.id,
            timeout.as_millis()
        ),
    )
}

/// An instance whose connection broke after the request went out: likely
/// gone, so ejected for `eject_for`; the request may have been carried out,
/// so it is not sent again.
pub(crate) fn failed(
    route: &Route,
    instance: &ServiceInstance,
    error: &dyn std::fmt::Display,
    eject_for: Duration,
) -> ApiError {
    let service = route.balancer.service();
    tracing::warn!(%service, instance = %instance.id, %error, "upstream failed; ejecting the instance");
    route.balancer.eject(&instance.id, eject_for);
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("{service} instance {} failed: {error}", instance.id),
    )
}

/// An instance that refused the connection (nothing was sent): ejected for
/// `eject_for`, and the next one is tried.
pub(crate) fn refuse(route: &Route, instance: &ServiceInstance, error: &dyn std::fmt::Display, eject_for: Duration) {
    let service = route.balancer.service();
    tracing::warn!(%service, instance = %instance.id, %error, "connection failed; ejecting the instance");
    route.balancer.eject(&instance.id, eject_for);
}

/// No instance answered: none to try (503), or each tried refused (502).
pub(crate) fn none_answered(service: &str, refused: &[String]) -> ApiError {
    if refused.is_empty() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy instance of {service}"),
        )
    } else {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("{service}: connection refused by {}", refused.join(", ")),
        )
    }
}

/// The `x-forwarded-for` sent on: the caller's (`earlier`, when it is text
/// as `HeaderValue::to_str` reads it) with `peer`'s address added.
pub(crate) fn forwarded_for(earlier: Option<&[u8]>, peer: SocketAddr) -> String {
    let address = address_text(peer.ip());
    match earlier
        .filter(|value| visible(value))
        .and_then(|value| std::str::from_utf8(value).ok())
    {
        Some(earlier) => {
            let mut text = String::with_capacity(earlier.len() + 2 + address.len());
            text.push_str(earlier);
            text.push_str(", ");
            text.push_str(&address);
            text
        }
        None => address,
    }
}

/// What is wrong with a request's `Host` header fields, as RFC 9112
/// section 3.2 says a server must refuse (400): an HTTP/1.1 request without
/// one, any request with two or more, or one whose value is not a host and
/// optional port (an empty value is allowed). `None` when nothing is. Both
/// of the gateway's paths ask this one function.
pub fn host_fault<'a>(http11: bool, mut hosts: impl Iterator<Item = &'a [u8]>) -> Option<&'static str> {
    let Some(host) = hosts.next() else {
        return http11.then_some("an HTTP/1.1 request needs a Host header");
    };
    if hosts.next().is_some() {
        return Some("a request may carry one Host header, not two");
    }
    // A host, and a port only if it is a number: `http` parses more loosely.
    let whole = |a: &axum::http::uri::Authority| {
        let port = a.port_u16().map_or(0, |_| a.port().map_or(0, |p| p.as_str().len() + 1));
        !a.host().is_empty() && a.host().len() + port == a.as_str().len()
    };
    let valid = host.is_empty()
        || (!host.contains(&b'@') && axum::http::uri::Authority::try_from(host).is_ok_and(|a| whole(&a)));
    (!valid).then_some("the Host header is not a host and optional port")
}

/// Refuses, with 400 and a closed connection, a request whose `Host` header
/// fields [`host_fault`] finds wrong: on hyper's path, before anything else
/// sees it.
pub async fn require_host(request: Request, next: axum::middleware::Next) -> Response {
    let http11 = request.version() == axum::http::Version::HTTP_11;
    let hosts = request
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(HeaderValue::as_bytes);
    if let Some(fault) = host_fault(http11, hosts) {
        return ApiError::new(StatusCode::BAD_REQUEST, fault).closing().into_response();
    }
    next.run(request).await
}

/// Text a header value may be as `HeaderValue::to_str` reads it: visible
/// ASCII, spaces and tabs.
pub(crate) fn visible(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// `ip` as text; an IPv4 address without `format!`'s machinery, which took
/// about 1,300 instructions per request.
fn address_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (at, octet) in v4.octets().into_iter().enumerate() {
                if at > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        v6 => v6.to_string(),
    }
}

/// What the gateway itself may answer on a path it forwards.
const GATEWAY_ERRORS: [(u16, &str); 3] = [
    (
        502,
        "From the gateway: every instance tried refused the connection, or one failed",
    ),
    (
        503,
        "From the gateway: the service has no healthy instance (or from the service)",
    ),
    (504, "From the gateway: the instance did not answer in time"),
];

fn gateway_error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    })
}

/// The upstream's answer, streamed back, with the instance that gave it.
/// The body must keep coming: a pause longer than `timeout` ends it.
fn relay(
    upstream: axum::http::Response<hyper::body::Incoming>,
    instance: &ServiceInstance,
    timeout: Duration,
) -> Response {
    let (mut parts, body) = upstream.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(id) = HeaderValue::from_str(&instance.id) {
        parts.headers.insert(SERVED_BY, id);
    }
    Response::from_parts(parts, Body::new(tower_http::timeout::TimeoutBody::new(timeout, body)))
}

#[cfg(test)]
mod tests {
    use super::{address_text, strip_hop_by_hop};
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_taken_out() {
        let mut message = headers(&[
            ("content-type", "application/json"),
            ("connection", "close, X-Private"),
            ("connection", " x-other "),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("x-private", "secret"),
            ("x-other", "too"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut message);
        assert_eq!(
            message,
            headers(&[("content-type", "application/json"), ("x-kept", "yes")])
        );
        // Without a hop-by-hop header, nothing goes, even a name that
        // another message's `Connection` might have listed.
        let mut plain = headers(&[("host", "a"), ("x-private", "kept"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut plain);
        assert_eq!(
            plain,
            headers(&[("host", "a"), ("x-private", "kept"), ("accept", "*/*")])
        );
    }

    #[test]
    fn an_address_reads_as_the_standard_library_writes_it() {
        for text in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.40",
            "::1",
            "fe80::1:2",
        ] {
            let ip: std::net::IpAddr = text.parse().unwrap();
            assert_eq!(address_text(ip), ip.to_string());
        }
    }
}

#[cfg(test)]
mod host_tests {
    use super::host_fault;

    fn fault(http11: bool, hosts: &[&str]) -> Option<&'static str> {
        host_fault(http11, hosts.iter().map(|h| h.as_bytes()))
    }

    #[test]
    fn exactly_one_valid_host_passes_and_anything_else_is_named() {
        assert_eq!(fault(true, &["shelf.example"]), None);
        assert_eq!(fault(true, &["127.0.0.1:8080"]), None);
        assert_eq!(fault(true, &["[::1]:80"]), None);
        assert_eq!(fault(true, &[""]), None, "an empty Host is allowed");
        assert_eq!(fault(false, &[]), None, "HTTP/1.0 needs none");
        assert!(fault(true, &[]).is_some_and(|f| f.contains("needs")));
        assert!(fault(false, &["a", "b"]).is_some_and(|f| f.contains("not two")));
        assert!(fault(true, &["a", "a"]).is_some_and(|f| f.contains("not two")));
        for bad in ["a b", "me@a", "a:port", "a/b"] {
            assert!(fault(true, &[bad]).is_some(), "{bad}");
        }
    }
}
