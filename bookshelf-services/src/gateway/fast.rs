//! The gateway's fast path. hyper and axum serve every request correctly,
//! but a request relayed through hyper's server, axum's router and hyper's
//! pooled client took about four times the CPU nginx spends on it. This
//! module relays the common case itself: an HTTP/1.1 request whose head and
//! whole body came in one read, with nothing in it that concerns the
//! connection but `keep-alive` or `close`, to a path a route takes. It
//! parses heads with `httparse`, writes the upstream request and the answer's
//! head itself, and keeps its own connections to the instances.
//!
//! A request of that kind to a path the gateway answers itself (its health,
//! metrics and documents, and the 404 for a path no route takes) is answered
//! by the gateway's axum router, called directly. Anything else (HTTP/1.0, a
//! chunked or still-arriving body, `Expect`, `Upgrade`, another `Connection`
//! option, a malformed or split head, a body over the limit) hands the
//! connection, with the bytes read so far, to hyper and axum for good, where
//! `proxy::forward` serves it. Both ways share the routing, the balancing,
//! the headers added, the error answers, the log line and the metrics.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use bookshelf::{Picked, ServiceInstance};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::api::ApiError;
use crate::gateway::proxy::{self, Answered, Gateway, Route};

/// The most header lines a request or an answer may have here; more goes
/// to hyper (a request) or is refused as malformed (an answer).
const MAX_HEADERS: usize = 64;
/// The largest answer head read from an instance.
const MAX_HEAD: usize = 64 * 1024;
/// A pooled connection to an instance unused this long is closed.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// Idle connections kept per instance.
const IDLE_PER_INSTANCE: usize = 64;
/// What a connection reads at a time, at least.
const READ_SIZE: usize = 8 * 1024;

/// Serves `app` and the gateway on `listener` until `shutdown` resolves,
/// then lets each connection finish the request it is on (idle ones close at
/// once) and returns when all have closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (stop, stopping) = watch::channel(false);
    let upstreams = Arc::new(Pool::default());
    // Connections idle too long, and those to instances no longer asked
    // for, are closed in the background.
    let sweeping = Arc::clone(&upstreams);
    let sweeper = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(IDLE_FOR / 2);
        loop {
            ticks.tick().await;
            sweeping.sweep();
        }
    });
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely: let some close.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Answers go out as soon as they are written, not held for more.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let connection = Connection {
            client: stream,
            peer,
            read: BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(1024),
            gateway: Arc::clone(&gateway),
            upstreams: Arc::clone(&upstreams),
        };
        connections.spawn(connection.run(app.clone(), stopping.clone()));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    // Receivers see the change even when they look after it was made.
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    sweeper.abort();
}

/// One client connection, on the fast path until a request needs hyper.
struct Connection {
    client: TcpStream,
    peer: SocketAddr,
    /// What the client sent that is not answered yet.
    read: BytesMut,
    /// The next thing to write, to an instance or to the client.
    out: Vec<u8>,
    gateway: Arc<Gateway>,
    upstreams: Arc<Pool>,
}

/// What becomes of a connection after a request.
#[derive(PartialEq)]
enum Next {
    KeepAlive,
    Close,
}

impl Connection {
    async fn run(mut self, app: Router, mut stopping: watch::Receiver<bool>) {
        loop {
            if self.read.is_empty() {
                self.read.reserve(READ_SIZE);
                tokio::select! {
                    biased;
                    // Idle at shutdown: close.
                    _ = stopping.changed() => return,
                    got = self.client.read_buf(&mut self.read) => match got {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                }
            }
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let Some(request) = plan(&self.read, &mut slots, &self.gateway) else {
                return self.hand_to_hyper(app, stopping).await;
            };
            let used = request.head + request.body.len();
            let hosts = request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
            let next = if let Some(fault) = proxy::host_fault(true, hosts.map(|h| h.value)) {
                let refused = ApiError::new(StatusCode::BAD_REQUEST, fault).closing().into_response();
                write_own(&mut self.client, &mut self.out, refused, None, &request)
                    .await
                    .1
            } else {
                match request.route {
                    Some(route) => {
                        exchange(
                            &mut self.client,
                            &mut self.out,
                            self.peer,
                            &self.gateway,
                            &self.upstreams,
                            &request,
                            route,
                        )
                        .await
                    }
                    None => answer_here(&mut self.client, &mut self.out, self.peer, &app, &request).await,
                }
            };
            self.read.advance(used);
            if next == Next::Close || *stopping.borrow() {
                // A close that the client sees after the answer, not a reset
                // that could overtake it.
                let _ = self.client.shutdown().await;
                return;
            }
        }
    }

    /// Serves the rest of the connection with hyper and axum, from the
    /// first byte not answered yet.
    async fn hand_to_hyper(self, app: Router, mut stopping: watch::Receiver<bool>) {
        tracing::debug!(peer = %self.peer, read = self.read.len(), "connection handed to hyper");
        let io = hyper_util::rt::TokioIo::new(Replayed {
            first: self.read.freeze(),
            stream: self.client,
        });
        let app = app.layer(axum::Extension(axum::extract::ConnectInfo(self.peer)));
        let service = hyper_util::service::TowerToHyperService::new(app);
        // hyper's timer bounds how long a request head may take to arrive.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            _ = stopping.changed() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// A request the fast path takes: borrowed from the connection's buffer.
struct Incoming<'a> {
    method: &'a str,
    /// The path and query, as sent.
    target: &'a str,
    /// The path alone.
    path: &'a str,
    headers: &'a [httparse::Header<'a>],
    /// The length of the head.
    head: usize,
    body: &'a [u8],
    /// The client asked to close after the answer.
    close: bool,
    /// The route that takes it, or `None` for a request the gateway answers
    /// itself (its own paths, and the 404 for a path no route takes).
    route: Option<usize>,
}

impl Incoming<'_> {
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    }
}

/// The request at the start of `read` when the fast path takes it; `None`
/// when hyper must (see the module's documentation for when).
fn plan<'a>(
    read: &'a [u8],
    slots: &'a mut [httparse::Header<'a>; MAX_HEADERS],
    gateway: &Gateway,
) -> Option<Incoming<'a>> {
    let mut request = httparse::Request::new(slots);
    let head = match request.parse(read) {
        Ok(httparse::Status::Complete(head)) => head,
        _ => return None,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else {
        return None;
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let route = if answered_by_gateway(path) {
        None
    } else {
        gateway.route_index(path)
    };
    let mut length: Option<usize> = None;
    let mut close = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).ok()?;
            let valid = !value.is_empty() && value.len() <= 18 && value.bytes().all(|b| b.is_ascii_digit());
            if length.is_some() || !valid {
                return None;
            }
            length = Some(value.parse().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in std::str::from_utf8(header.value).ok()?.split(',') {
                match option.trim() {
                    "" => {}
                    option if option.eq_ignore_ascii_case("keep-alive") => {}
                    option if option.eq_ignore_ascii_case("close") => close = true,
                    _ => return None,
                }
            }
        }
    }
    let length = length.unwrap_or(0);
    if length > gateway.limits.max_body || read.len() - head < length {
        return None;
    }
    Some(Incoming {
        method,
        target,
        path,
        headers: request.headers,
        head,
        body: &read[head..head + length],
        close,
        route,
    })
}

/// The paths the gateway answers itself (its health, metrics and API
/// documents), which no route may take from it.
fn answered_by_gateway(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/metrics" | crate::docs::DOCUMENT_PATH | crate::docs::PAGE_PATH
    ) || path.starts_with("/docs/")
}

/// Headers of the client's request that the gateway sets itself, or that
/// concern one connection only: not copied to the instance.
fn not_forwarded(name: &str) -> bool {
    const SET_HERE: [HeaderName; 7] = [
        header::HOST,
        header::CONTENT_LENGTH,
        proxy::CORRELATION,
        proxy::TRACE,
        proxy::FORWARDED_FOR,
        proxy::FORWARDED_HOST,
        proxy::FORWARDED_PROTO,
    ];
    SET_HERE.iter().any(|set| name.eq_ignore_ascii_case(set.as_str())) || hop_by_hop(name)
}

/// The hop-by-hop headers of `proxy::HOP_BY_HOP`.
fn hop_by_hop(name: &str) -> bool {
    proxy::HOP_BY_HOP
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop.as_str()))
}

/// Methods that may be sent again when a reused connection closed before
/// any answer came (RFC 9110, section 9.2.2).
fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Relays `request` to an instance of its route and the answer back to
/// `client`; answers the gateway's own errors as `proxy::forward` does.
async fn exchange(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    peer: SocketAddr,
    gateway: &Gateway,
    upstreams: &Pool,
    request: &Incoming<'_>,
    route_index: usize,
) -> Next {
    let started = Instant::now();
    let correlation = proxy::correlation_id(request.header(proxy::CORRELATION.as_str()));
    let traceparent = proxy::trace(request.header(proxy::TRACE.as_str())).to_string();
    let route = &gateway.routes[route_index];
    let relayed = relay(
        client,
        out,
        peer,
        gateway,
        upstreams,
        (route, started),
        request,
        &correlation,
        &traceparent,
    )
    .await;
    let (status, instance, next, took) = match relayed {
        Ok(Relayed {
            status,
            instance,
            next,
            took,
        }) => (status, Some(instance), next, took),
        Err(Failure::Answer(error)) => {
            let took = started.elapsed();
            let (status, next) = write_own(client, out, error.into_response(), Some(&correlation), request).await;
            (status, None, next, took)
        }
        Err(Failure::Client(status, instance, took)) => (status, Some(instance), Next::Close, took),
    };
    let answered = Answered {
        method: request.method,
        path: request.path,
        route: Some(route_index),
        status,
        instance: instance.as_ref().map_or("-", |instance| instance.id.as_str()),
        correlation: &correlation,
        traceparent: &traceparent,
    };
    gateway.answered(&answered, took);
    next
}

/// An answer relayed: its status, who gave it, what becomes of the
/// client's connection, and how long after the request its head came (what
/// the log and the metrics report, as `proxy::forward` does).
struct Relayed {
    status: u16,
    instance: Picked,
    next: Next,
    took: Duration,
}

enum Failure {
    /// Nothing was written to the client yet: answer this.
    Answer(ApiError),
    /// The client's connection must close: it went away, or the answer
    /// broke off, after the head came from the instance (its status, who
    /// gave it, and when it came).
    Client(u16, Picked, Duration),
}

/// Whether an answer's head turns the request down (see
/// [`proxy::turned_down`]); a head that does not parse does not.
fn turned_down(head: &[u8]) -> bool {
    // The status line's code, before any parsing: `HTTP/1.1 503 …`.
    if head.get(9..12) != Some(b"503") {
        return false;
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut slots);
    answer.parse(head).is_ok()
        && proxy::turned_down(
            answer.code.unwrap_or(0),
            answer.headers.iter().map(|header| header.name),
        )
}

/// The request as sent to `authority`: its head and body, in `out`.
fn write_request(
    out: &mut Vec<u8>,
    request: &Incoming<'_>,
    authority: &str,
    peer: SocketAddr,
    correlation: &HeaderValue,
    traceparent: &str,
) {
    out.clear();
    out.extend_from_slice(request.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(out, b"host", authority.as_bytes());
    for header in request.headers {
        if !not_forwarded(header.name) {
            push_header(out, header.name.as_bytes(), header.value);
        }
    }
    push_header(out, proxy::CORRELATION.as_str().as_bytes(), correlation.as_bytes());
    push_header(out, proxy::TRACE.as_str().as_bytes(), traceparent.as_bytes());
    let forwarded_for = proxy::forwarded_for(request.header(proxy::FORWARDED_FOR.as_str()), peer);
    push_header(out, proxy::FORWARDED_FOR.as_str().as_bytes(), forwarded_for.as_bytes());
    if let Some(host) = request.header(header::HOST.as_str()) {
        push_header(out, proxy::FORWARDED_HOST.as_str().as_bytes(), host);
    }
    push_header(out, proxy::FORWARDED_PROTO.as_str().as_bytes(), b"http");
    // As hyper's client: a length for a body, and for the methods that
    // usually carry one even when empty.
    if !request.body.is_empty() || matches!(request.method, "POST" | "PUT" | "PATCH") {
        push_header(
            out,
            b"content-length",
            itoa::Buffer::new().format(request.body.len()).as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(request.body);
}

#[allow(clippy::too_many_arguments)]
async fn relay(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    peer: SocketAddr,
    gateway: &Gateway,
    upstreams: &Pool,
    (route, started): (&Route, Instant),
    request: &Incoming<'_>,
    correlation: &HeaderValue,
    traceparent: &str,
) -> Result<Relayed, Failure> {
    let service = route.balancer.service();
    let limits = &gateway.limits;
    // Each attempt goes to an instance not tried yet; only a refused
    // connection or a turn-down (nothing was done) is tried again, whatever
    // the method.
    let attempts = route.balancer.instances().len().clamp(1, 3);
    let mut refused = Vec::new();
    let mut tried = Vec::new();
    for attempt in 1..=attempts {
        let Some(instance) = route.balancer.pick_other_than(&tried) else {
            break;
        };
        tried.push(instance.id.clone());
        let authority = instance.authority();
        if let Err(error) = axum::http::uri::Authority::try_from(authority.as_str()) {
            return Err(Failure::Answer(proxy::unusable(service, &instance, &error)));
        }
        write_request(out, request, &authority, peer, correlation, traceparent);
        // A pooled connection the instance closed meanwhile is replaced by
        // a new one, once, when the request may be sent again.
        // The instance has `limits.timeout` from now to start answering.
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let mut pooled = upstreams.take(&authority);
        let connected = loop {
            let reused = pooled.is_some();
            let mut upstream = match pooled.take() {
                Some(upstream) => upstream,
                None => match Upstream::connect(&authority, limits.timeout.min(Duration::from_secs(2))).await {
                    Ok(upstream) => upstream,
                    Err(error) => break Err(error),
                },
            };
            let asked = async {
                upstream
                    .stream
                    .write_all(out)
                    .await
                    .map_err(|error| match error.kind() {
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => HeadError::Closed,
                        _ => HeadError::Io(error),
                    })?;
                upstream.read_head().await
            };
            match tokio::time::timeout_at(deadline, asked).await {
                Err(_) => return Err(Failure::Answer(proxy::timed_out(service, &instance, limits.timeout))),
                Ok(Ok(head)) => break Ok((upstream, head)),
                Ok(Err(HeadError::Closed)) if reused && idempotent(request.method) => continue,
                Ok(Err(error)) => {
                    return Err(Failure::Answer(proxy::failed(
                        route,
                        &instance,
                        &error,
                        limits.eject_for,
                    )));
                }
            }
        };
        let (mut upstream, head) = match connected {
            Ok(connected) => connected,
            Err(error) => {
                proxy::refuse(route, &instance, &error, limits.eject_for);
                refused.push(instance.id.clone());
                continue;
            }
        };
        if attempt < attempts && turned_down(&upstream.read[..head]) {
            // Its body unread, the connection is dropped rather than pooled.
            tracing::debug!(%service, instance = %instance.id, "turned down; trying another instance");
            continue;
        }
        let took = started.elapsed();
        let answered = answer(
            client,
            out,
            &mut upstream,
            head,
            request,
            &instance,
            correlation,
            limits.timeout,
        )
        .await;
        return match answered {
            Ok((status, next, reusable)) => {
                if reusable {
                    upstreams.put(authority, upstream);
                }
                Ok(Relayed {
                    status,
                    instance,
                    next,
                    took,
                })
            }
            Err(AnswerError::Upstream(error)) => Err(Failure::Answer(proxy::failed(
                route,
                &instance,
                &error,
                limits.eject_for,
            ))),
            Err(AnswerError::Broken(status)) => Err(Failure::Client(status, instance, took)),
        };
    }
    Err(Failure::Answer(proxy::none_answered(service, &refused)))
}

enum AnswerError {
    /// The instance's answer cannot be relayed (nothing was written to the
    /// client).
    Upstream(String),
    /// The exchange broke off after the answer's head (status) went out.
    Broken(u16),
}

/// How an answer's body is delimited (RFC 9112, section 6.3).
enum Framing {
    None,
    Length(u64),
    Chunked(Chunks),
    UntilClose,
}

impl Framing {
    /// How many of `bytes` (the next of the answer's) belong to its body,
    /// and whether the body ends with them.
    fn take(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        match self {
            Framing::None => Ok((0, true)),
            Framing::Length(left) => {
                let taken = (*left).min(bytes.len() as u64);
                *left -= taken;
                Ok((taken as usize, *left == 0))
            }
            Framing::Chunked(chunks) => {
                let taken = chunks.scan(bytes)?;
                Ok((taken, matches!(chunks, Chunks::Done)))
            }
            Framing::UntilClose => Ok((bytes.len(), false)),
        }
    }
}

/// Where a chunked body stands, scanned as it is relayed unchanged.
#[derive(Debug, PartialEq)]
enum Chunks {
    /// Before a chunk's size line.
    Size,
    /// In a chunk's data, this many bytes to go.
    Data(u64),
    /// Before the line end after a chunk's data.
    DataEnd,
    /// After the last chunk, in the trailer section.
    Trailers,
    Done,
}

impl Chunks {
    /// Scans `bytes` from where the body stands; returns how many of them
    /// are whole lines or data (a line split across reads waits for the
    /// rest).
    fn scan(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut at = 0;
        loop {
            let rest = &bytes[at..];
            match self {
                Chunks::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((line, size))) => {
                        at += line;
                        *self = if size == 0 {
                            Chunks::Trailers
                        } else {
                            Chunks::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if rest.len() < 1024 => return Ok(at),
                    _ => return Err("a malformed chunk size"),
                },
                Chunks::Data(left) => {
                    let taken = (*left).min(rest.len() as u64);
                    at += taken as usize;
                    *left -= taken;
                    if *left > 0 {
                        return Ok(at);
                    }
                    *self = Chunks::DataEnd;
                }
                Chunks::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("a chunk longer than its size");
                    }
                    at += 2;
                    *self = Chunks::Size;
                }
                Chunks::Trailers => match rest.windows(2).position(|pair| pair == b"\r\n") {
                    // An empty line ends the message; another is a trailer.
                    Some(0) => {
                        at += 2;
                        *self = Chunks::Done;
                    }
                    Some(end) => at += end + 2,
                    None if rest.len() < MAX_HEAD => return Ok(at),
                    None => return Err("a trailer section too long"),
                },
                Chunks::Done => return Ok(at),
            }
        }
    }
}

/// Relays the answer whose head (`head` bytes) is at the start of
/// `upstream`'s buffer: its head rewritten for the client, then its body.
/// Returns the status, what becomes of the client's connection, and whether
/// the instance's connection can be used again.
#[allow(clippy::too_many_arguments)]
async fn answer(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    upstream: &mut Upstream,
    head: usize,
    request: &Incoming<'_>,
    instance: &ServiceInstance,
    correlation: &HeaderValue,
    timeout: Duration,
) -> Result<(u16, Next, bool), AnswerError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut slots);
    answer
        .parse(&upstream.read[..head])
        .map_err(|error| AnswerError::Upstream(format!("a malformed answer: {error}")))?;
    let status = answer.code.unwrap_or(0);
    let version = answer.version.unwrap_or(0);
    // What the answer's headers say of its framing and its connection.
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut closes = version == 0;
    let mut named: Vec<&str> = Vec::new();
    for header in answer.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .ok_or_else(|| AnswerError::Upstream("a malformed content-length".to_owned()))?;
            if length.is_some_and(|seen| seen != value) {
                return Err(AnswerError::Upstream("two different content-lengths".to_owned()));
            }
            length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(header.value).unwrap_or("");
            if chunked || !value.trim().eq_ignore_ascii_case("chunked") {
                return Err(AnswerError::Upstream(format!(
                    "a transfer coding the gateway does not relay: {value}"
                )));
            }
            chunked = true;
        } else if header.name.eq_ignore_ascii_case("connection") {
            for option in std::str::from_utf8(header.value).unwrap_or("").split(',') {
                let option = option.trim();
                if option.eq_ignore_ascii_case("close") {
                    closes = true;
                } else if !option.is_empty() {
                    named.push(option);
                }
            }
        }
    }
    let mut framing = if request.method == "HEAD" || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked(Chunks::Size)
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    let until_close = matches!(framing, Framing::UntilClose);
    let next = if request.close || until_close {
        Next::Close
    } else {
        Next::KeepAlive
    };

    out.clear();
    push_status(out, status, answer.reason.unwrap_or(""));
    let mut dated = false;
    for header in answer.headers.iter() {
        let name = header.name;
        let skipped = hop_by_hop(name)
            || named.iter().any(|option| name.eq_ignore_ascii_case(option))
            || name.eq_ignore_ascii_case(proxy::SERVED_BY_HEADER)
            || name.eq_ignore_ascii_case(crate::api::CORRELATION_HEADER)
            || (chunked && name.eq_ignore_ascii_case("content-length"));
        if !skipped {
            dated |= name.eq_ignore_ascii_case("date");
            push_header(out, name.as_bytes(), header.value);
        }
    }
    if !dated {
        push_header(out, b"date", httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    }
    if chunked && !matches!(framing, Framing::None) {
        push_header(out, b"transfer-encoding", b"chunked");
    }
    if next == Next::Close {
        push_header(out, b"connection", b"close");
    }
    if proxy::visible(instance.id.as_bytes()) {
        push_header(out, proxy::SERVED_BY_HEADER.as_bytes(), instance.id.as_bytes());
    }
    push_header(out, proxy::CORRELATION.as_str().as_bytes(), correlation.as_bytes());
    out.extend_from_slice(b"\r\n");

    // The head and what of the body came with it go out in one write.
    upstream.read.advance(head);
    let (taken, mut done) = framing
        .take(&upstream.read)
        .map_err(|error| AnswerError::Upstream(error.to_owned()))?;
    let written = write_two(client, out, &upstream.read[..taken]).await;
    upstream.read.advance(taken);
    written.map_err(|_| AnswerError::Broken(status))?;
    while !done {
        upstream.read.reserve(READ_SIZE);
        let got = tokio::time::timeout(timeout, upstream.stream.read_buf(&mut upstream.read)).await;
        match got {
            Ok(Ok(0)) if until_close => done = true,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {
                tracing::warn!(instance = %instance.id, "the answer's body broke off; closing the client's connection");
                return Err(AnswerError::Broken(status));
            }
            Ok(Ok(_)) => {
                let (taken, ended) = framing.take(&upstream.read).map_err(|error| {
                    tracing::warn!(instance = %instance.id, %error, "closing the client's connection");
                    AnswerError::Broken(status)
                })?;
                done = ended;
                client
                    .write_all(&upstream.read[..taken])
                    .await
                    .map_err(|_| AnswerError::Broken(status))?;
                upstream.read.advance(taken);
            }
        }
    }
    // Anything more than the answer, or an end by closing, and the
    // connection is not used again.
    let reusable = !closes && !until_close && upstream.read.is_empty();
    Ok((status, next, reusable))
}

/// Answers a request the gateway answers itself, through `app`.
async fn answer_here(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    peer: SocketAddr,
    app: &Router,
    request: &Incoming<'_>,
) -> Next {
    use tower::ServiceExt;
    let mut built = axum::http::Request::builder()
        .method(request.method)
        .uri(request.target)
        .extension(axum::extract::ConnectInfo(peer));
    for header in request.headers {
        built = built.header(header.name, header.value);
    }
    let response = match built.body(axum::body::Body::from(Bytes::copy_from_slice(request.body))) {
        Ok(built) => {
            let Ok(response) = app.clone().oneshot(built).await;
            response
        }
        // What httparse let through and `http` does not take: refused as
        // hyper would.
        Err(_) => ApiError::new(StatusCode::BAD_REQUEST, "a request the gateway cannot read")
            .closing()
            .into_response(),
    };
    write_own(client, out, response, None, request).await.1
}

/// Writes `response`, one the gateway made itself (its body small and in
/// memory), as hyper would serve it: with its length, a date, the
/// `correlation` id when given, and `connection: close` when the client
/// asked or the response says so. Returns its status, and what becomes of
/// the connection (it closes too when the client is gone).
async fn write_own(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    response: axum::response::Response,
    correlation: Option<&HeaderValue>,
    request: &Incoming<'_>,
) -> (u16, Next) {
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return (status, Next::Close);
    };
    let closes = request.close
        || parts
            .headers
            .get(axum::http::header::CONNECTION)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
    out.clear();
    push_status(out, status, "");
    let mut dated = false;
    for (name, value) in &parts.headers {
        let replaced = name == axum::http::header::CONTENT_LENGTH
            || (correlation.is_some() && name.as_str() == crate::api::CORRELATION_HEADER);
        if !replaced && !hop_by_hop(name.as_str()) {
            dated |= name == axum::http::header::DATE;
            push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let bodiless = request.method == "HEAD" || status == 204 || status == 304;
    if !bodiless || !body.is_empty() {
        push_header(
            out,
            b"content-length",
            itoa::Buffer::new().format(body.len()).as_bytes(),
        );
    }
    if !dated {
        push_header(out, b"date", httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    }
    if closes {
        push_header(out, b"connection", b"close");
    }
    if let Some(correlation) = correlation {
        push_header(out, crate::api::CORRELATION_HEADER.as_bytes(), correlation.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(&body);
    }
    match client.write_all(out).await {
        Ok(()) if !closes => (status, Next::KeepAlive),
        _ => (status, Next::Close),
    }
}

/// `HTTP/1.1 <status> <reason>`, the reason as hyper writes it (its
/// canonical one), or `fallback` for a status without one.
fn push_status(out: &mut Vec<u8>, status: u16, fallback: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or(fallback);
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes `first` then `second` to `stream`, in one system call when the
/// socket takes both at once.
async fn write_two(stream: &mut TcpStream, mut first: &[u8], mut second: &[u8]) -> std::io::Result<()> {
    while !first.is_empty() || !second.is_empty() {
        let written = stream
            .write_vectored(&[IoSlice::new(first), IoSlice::new(second)])
            .await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_first = written.min(first.len());
        first = &first[from_first..];
        second = &second[written - from_first..];
    }
    Ok(())
}

/// Why no answer head came from an instance.
#[derive(Debug)]
enum HeadError {
    /// It closed the connection before a byte of an answer.
    Closed,
    Io(std::io::Error),
    Malformed(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Closed => f.write_str("the connection closed before an answer"),
            HeadError::Io(error) => write!(f, "{error}"),
            HeadError::Malformed(error) => write!(f, "a malformed answer: {error}"),
        }
    }
}

/// A connection to an instance, with what was read from it.
struct Upstream {
    stream: TcpStream,
    read: BytesMut,
    /// When it went back to the pool.
    idle_since: Instant,
}

impl Upstream {
    async fn connect(authority: &str, within: Duration) -> std::io::Result<Upstream> {
        let stream = tokio::time::timeout(within, TcpStream::connect(authority))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Upstream {
            stream,
            read: BytesMut::with_capacity(READ_SIZE),
            idle_since: Instant::now(),
        })
    }

    /// Reads until a whole answer head is in the buffer, past any interim
    /// (1xx) answers, which are dropped; returns the head's length. (The
    /// head is parsed once, by `answer`: here only its end is found.)
    async fn read_head(&mut self) -> Result<usize, HeadError> {
        let mut received = false;
        loop {
            if let Some(head) = head_end(&self.read) {
                // `HTTP/1.x 1xx`: an interim answer.
                if self.read.get(9) != Some(&b'1') {
                    return Ok(head);
                }
                self.read.advance(head);
                continue;
            }
            if self.read.len() >= MAX_HEAD {
                return Err(HeadError::Malformed("a head too long".to_owned()));
            }
            self.read.reserve(READ_SIZE);
            match self.stream.read_buf(&mut self.read).await {
                Ok(0) if !received && self.read.is_empty() => return Err(HeadError::Closed),
                Ok(0) => return Err(HeadError::Malformed("the connection closed within the head".to_owned())),
                Ok(_) => received = true,
                Err(error) if !received && error.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(HeadError::Closed)
                }
                Err(error) => return Err(HeadError::Io(error)),
            }
        }
    }

    /// Whether a pooled connection may be used: not idle too long, and not
    /// closed (or sent anything) by the instance meanwhile.
    fn usable(&mut self) -> bool {
        if self.idle_since.elapsed() > IDLE_FOR {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// The length of the head at the start of `bytes`, up to and with the empty
/// line that ends it (CRLF CRLF, or LF LF, which RFC 9112 lets a recipient
/// take as well), if it has ended.
fn head_end(bytes: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', bytes).find_map(|at| match bytes.get(at + 1..) {
        Some([b'\n', ..]) => Some(at + 2),
        Some([b'\r', b'\n', ..]) => Some(at + 3),
        _ => None,
    })
}

/// Idle connections to the instances, by authority, newest last.
#[derive(Default)]
struct Pool {
    idle: Mutex<std::collections::HashMap<String, Vec<Upstream>>>,
}

impl Pool {
    fn take(&self, authority: &str) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let connections = idle.get_mut(authority)?;
        while let Some(mut upstream) = connections.pop() {
            if upstream.usable() {
                return Some(upstream);
            }
        }
        None
    }

    /// Closes the connections idle longer than `IDLE_FOR`, and forgets
    /// instances with none left.
    fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, connections| {
            connections.retain(|upstream| upstream.idle_since.elapsed() <= IDLE_FOR);
            !connections.is_empty()
        });
    }

    fn put(&self, authority: String, mut upstream: Upstream) {
        upstream.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let connections = match idle.get_mut(authority.as_str()) {
            Some(connections) => connections,
            None => idle.entry(authority).or_default(),
        };
        if connections.len() < IDLE_PER_INSTANCE {
            connections.push(upstream);
        }
    }
}

/// A client's connection handed to hyper: the bytes read already come
/// first.
struct Replayed {
    first: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Replayed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.first.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let taken = this.first.len().min(buf.remaining());
        buf.put_slice(&this.first[..taken]);
        this.first.advance(taken);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{head_end, Chunks, Framing};

    #[test]
    fn a_head_ends_at_its_first_empty_line() {
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\na: b\r\n\r\nbody\r\n\r\n"), Some(25));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\na: b\n\nbody"), Some(22));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\na: b\r\n"), None);
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\na: b\r\n\r"), None);
    }

    /// Feeds `body` to a chunk scanner in pieces of `step` bytes, as reads
    /// would bring it; returns the bytes it let through and whether it saw
    /// the end.
    fn scan_in_steps(body: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut framing = Framing::Chunked(Chunks::Size);
        let (mut buffer, mut through, mut done) = (Vec::new(), Vec::new(), false);
        for piece in body.chunks(step) {
            buffer.extend_from_slice(piece);
            let (taken, ended) = framing.take(&buffer).expect("a well-formed body");
            through.extend(buffer.drain(..taken));
            done = ended;
            if done {
                break;
            }
        }
        (through, done)
    }

    #[test]
    fn a_chunked_body_is_let_through_whole_and_its_end_found_however_it_is_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: yes\r\n\r\n";
        for step in 1..=body.len() {
            let (through, done) = scan_in_steps(body, step);
            assert!(done, "the end found with reads of {step} bytes");
            assert_eq!(through, body, "with reads of {step} bytes");
        }
        // Without a trailer; and what follows the end is not taken.
        let mut framing = Framing::Chunked(Chunks::Size);
        assert_eq!(framing.take(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1"), Ok((13, true)));
    }

    #[test]
    fn a_chunk_longer_than_its_size_or_a_bad_size_is_refused() {
        assert!(Framing::Chunked(Chunks::Size).take(b"3\r\nabcd\r\n").is_err());
        assert!(Framing::Chunked(Chunks::Size).take(b"zz\r\nab\r\n").is_err());
    }

    #[tokio::test]
    async fn the_sweep_closes_connections_idle_too_long_and_forgets_instances_left_without() {
        use super::{Pool, Upstream, IDLE_FOR};
        use std::time::{Duration, Instant};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let connect = || Upstream::connect(&address, Duration::from_secs(1));
        let Some(long_ago) = Instant::now().checked_sub(IDLE_FOR + Duration::from_secs(1)) else {
            panic!("this machine's clock started less than {IDLE_FOR:?} ago");
        };
        let (mut old, fresh, mut gone) = (
            connect().await.unwrap(),
            connect().await.unwrap(),
            connect().await.unwrap(),
        );
        old.idle_since = long_ago;
        gone.idle_since = long_ago;
        let pool = Pool::default();
        pool.idle.lock().unwrap().insert(address.clone(), vec![old, fresh]);
        pool.idle
            .lock()
            .unwrap()
            .insert("gone.example:80".to_owned(), vec![gone]);
        pool.sweep();
        let idle = pool.idle.lock().unwrap();
        assert_eq!(idle.keys().collect::<Vec<_>>(), [&address]);
        assert_eq!(idle[&address].len(), 1);
    }

    #[test]
    fn a_length_takes_no_more_than_it_says() {
        let mut framing = Framing::Length(5);
        assert_eq!(framing.take(b"abc"), Ok((3, false)));
        assert_eq!(framing.take(b"defgh"), Ok((2, true)));
    }
}
