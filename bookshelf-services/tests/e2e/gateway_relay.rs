//! The gateway's relaying, byte by byte: its fast path (the common request,
//! relayed by the gateway's own code) and hyper's path (everything else)
//! must forward the same request and give back the same answer, keep
//! connections at both ends, and never reuse one an instance has closed.
//!
//! The instance here is a raw HTTP/1.1 server written in this test, so that
//! it can answer in every framing (a length, chunks with a trailer, until
//! close, an interim 103 first, a stall) and echo the request head exactly as
//! it arrived. The client is raw too: it sends exact bytes and reads the
//! framing it is given.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The raw instance: its URL, the connections on which it answered
/// something other than `/health`, and the request lines of the requests
/// it dropped unanswered.
struct Instance {
    url: String,
    used: Arc<Mutex<BTreeSet<usize>>>,
    dropped: Arc<Mutex<Vec<String>>>,
}

/// Reads one request (head and `content-length` body) from `stream`;
/// `None` when the connection ends first.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(String, Vec<u8>, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = request.parse(buffer) {
            let path = request.path.unwrap_or_default().to_owned();
            let length = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            if buffer.len() >= head + length {
                let whole: Vec<u8> = buffer.drain(..head + length).collect();
                let (head_bytes, body) = whole.split_at(head);
                return Some((path, head_bytes.to_vec(), body.to_vec()));
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Answers by path, on every connection, until the gateway closes it.
async fn answer(mut stream: TcpStream, id: usize, used: Arc<Mutex<BTreeSet<usize>>>, dropped: Arc<Mutex<Vec<String>>>) {
    let port = stream.local_addr().map_or(0, |a| a.port()).to_string();
    let mut buffer = Vec::new();
    let mut answered = 0;
    while let Some((path, head, body)) = read_request(&mut stream, &mut buffer).await {
        if path != "/health" {
            used.lock().unwrap().insert(id);
        }
        let route = path.split('?').next().unwrap_or_default();
        answered += 1;
        let written = match route {
            "/health" => stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await,
            // The request as it arrived, with headers the gateway must not
            // pass back (hop-by-hop, and one `Connection` names).
            "/raw/echo" => {
                let mut echoed = head.clone();
                echoed.extend_from_slice(&body);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-upstream: echo\r\nkeep-alive: timeout=5\r\nconnection: keep-alive, x-private\r\nx-private: secret\r\n\r\n",
                    echoed.len()
                );
                let mut bytes = answer.into_bytes();
                if !head.starts_with(b"HEAD ") {
                    bytes.extend_from_slice(&echoed);
                }
                stream.write_all(&bytes).await
            }
            // Chunks (one with an extension) and a trailer, over several
            // writes.
            "/raw/chunked" => {
                let parts: [&[u8]; 4] = [
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-upstream: chunked\r\n\r\n5\r\nhel",
                    b"lo\r\n1a;note=x\r\nabcdefghijklm",
                    b"nopqrstuvwxyz\r\n0\r\n",
                    b"x-checksum: 1\r\n\r\n",
                ];
                let mut result = Ok(());
                for part in parts {
                    result = stream.write_all(part).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result
            }
            "/raw/until-close" => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nx-upstream: until-close\r\n\r\nthe whole ")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = stream.write_all(b"answer").await;
                return;
            }
            "/raw/interim" => {
                stream
                    .write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal")
                    .await
            }
            "/raw/empty" => stream.write_all(b"HTTP/1.1 204 No Content\r\nx-upstream: empty\r\n\r\n").await,
            // Answers, then closes the connection without saying so, as an
            // instance that drops idle connections does.
            "/raw/then-close" => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone").await;
                return;
            }
            // On a connection that has answered before, closes it as the
            // request arrives, unanswered: an instance that drops an idle
            // connection just as the gateway reuses it. On a new one, 200.
            "/raw/fresh-only" if answered > 1 => {
                let line = String::from_utf8_lossy(&head);
                dropped.lock().unwrap().push(line.lines().next().unwrap_or_default().to_owned());
                return;
            }
            "/raw/fresh-only" => stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh").await,
            // Five bytes of ten, then nothing.
            "/raw/stall" => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello").await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            // Taken only by the instance on that port; the others turn it
            // down (nothing done, another instance may take it), or, on
            // `/raw/busy-unless`, answer a plain 503.
            _ if route.starts_with("/raw/owned-by/") || route.starts_with("/raw/busy-unless/") => {
                let owner = route.rsplit('/').next().unwrap_or_default();
                if owner == port {
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nmine").await
                } else if route.starts_with("/raw/owned-by/") {
                    stream
                        .write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\nx-bookshelf-not-owner: true\r\ncontent-length: 9\r\n\r\nnot mine!",
                        )
                        .await
                } else {
                    stream
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
                        .await
                }
            }
            _ => stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await,
        };
        if written.is_err() {
            return;
        }
    }
}

async fn instance() -> Instance {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let used = Arc::new(Mutex::new(BTreeSet::new()));
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let (shared, shared_dropped) = (Arc::clone(&used), Arc::clone(&dropped));
    tokio::spawn(async move {
        for id in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(answer(stream, id, Arc::clone(&shared), Arc::clone(&shared_dropped)));
        }
    });
    Instance { url, used, dropped }
}

/// A gateway in front of `instance`, on `/raw`, with a two-second timeout.
fn gateway(instance: &Instance) -> Service {
    Service::start(
        "gateway",
        &[
            "--service",
            &format!("raw={}", instance.url),
            "--route",
            "/raw=raw",
            "--timeout-ms",
            "2000",
        ],
    )
}

/// A raw instance, and a gateway in front of it.
async fn started() -> (Instance, Service) {
    let instance = instance().await;
    let gateway = gateway(&instance);
    (instance, gateway)
}

/// An answer as the client read it: chunked bodies decoded.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Names in lower case, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The headers but those that differ by nature between two answers
    /// (dates, correlation ids) or by framing (which may differ: a body
    /// of unknown length goes to the client chunked from hyper, until close
    /// from the fast path).
    fn comparable_headers(&self) -> BTreeSet<(String, String)> {
        const VARYING: [&str; 5] = [
            "date",
            "x-correlation-id",
            "content-length",
            "transfer-encoding",
            "connection",
        ];
        self.headers
            .iter()
            .filter(|(name, _)| !VARYING.contains(&name.as_str()))
            .cloned()
            .collect()
    }
}

/// Reads one answer from `stream` (`buffer` keeps what came after it).
async fn read_answer(stream: &mut TcpStream, buffer: &mut Vec<u8>, to_head: bool) -> Answer {
    async fn more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
    let (status, headers, head) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(head) = response.parse(buffer).expect("a well-formed answer head") {
            let headers = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            let status = response.code.unwrap_or_default();
            if (100..200).contains(&status) {
                // An interim answer (100 Continue): the final one follows.
                buffer.drain(..head);
                continue;
            }
            break (status, headers, head);
        }
        assert!(more(stream, buffer).await, "the connection ended within an answer head");
    };
    buffer.drain(..head);
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if to_head || status == 204 || status == 304 {
        return answer;
    }
    if answer.header("transfer-encoding") == Some("chunked") {
        loop {
            let (line, size) = loop {
                if let Ok(httparse::Status::Complete(found)) = httparse::parse_chunk_size(buffer) {
                    break found;
                }
                assert!(more(stream, buffer).await, "the connection ended within a chunk size");
            };
            let size = size as usize;
            while buffer.len() < line + size + 2 {
                assert!(more(stream, buffer).await, "the connection ended within a chunk");
            }
            if size == 0 {
                // The trailer section, to its empty line.
                loop {
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        break;
                    }
                    if buffer.starts_with(b"0\r\n\r\n") {
                        buffer.drain(..5);
                        break;
                    }
                    assert!(more(stream, buffer).await, "the connection ended within the trailers");
                }
                return answer;
            }
            answer.body.extend_from_slice(&buffer[line..line + size]);
            buffer.drain(..line + size + 2);
        }
    }
    if let Some(length) = answer.header("content-length") {
        let length: usize = length.parse().expect("a numeric content-length");
        while buffer.len() < length {
            assert!(more(stream, buffer).await, "the connection ended within a body");
        }
        answer.body = buffer.drain(..length).collect();
        return answer;
    }
    while more(stream, buffer).await {}
    answer.body = std::mem::take(buffer);
    answer
}

/// A new connection to the gateway at `url`.
async fn connect(url: &str) -> TcpStream {
    TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .expect("the gateway accepts")
}

/// Sends `request` on a new connection to `gateway` and reads the answer.
async fn ask(gateway: &str, request: &str) -> Answer {
    let mut stream = connect(gateway).await;
    stream.write_all(request.as_bytes()).await.expect("the request is sent");
    let head_only = request.starts_with("HEAD ");
    tokio::time::timeout(
        Duration::from_secs(10),
        read_answer(&mut stream, &mut Vec::new(), head_only),
    )
    .await
    .expect("answered within 10 s")
}

/// The request head the instance echoed, as (lower-case name, value)
/// pairs, without the values that differ by nature (trace and correlation
/// ids); and the echoed body.
fn echoed(answer: &Answer) -> (String, BTreeSet<(String, String)>, Vec<u8>) {
    let text = &answer.body;
    let end = text.windows(4).position(|w| w == b"\r\n\r\n").expect("an echoed head") + 4;
    let head = String::from_utf8_lossy(&text[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| !["traceparent", "x-correlation-id"].contains(&name.to_ascii_lowercase().as_str()))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (request_line, headers, text[end..].to_vec())
}

/// Asked in plain HTTP/1.1, a request takes the fast path; asked with a
/// `Connection` option the fast path leaves to hyper, hyper's. The two must
/// forward the same request and return the same answer. That the fast path
/// served the first is seen in the header names: it forwards them as sent,
/// hyper in lower case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_and_hypers_forward_and_answer_alike() {
    let (_instance, gateway) = started().await;
    let cases: [(&str, &str); 7] = [
        ("GET /raw/echo?x=1&y=%20 HTTP/1.1", ""),
        ("POST /raw/echo HTTP/1.1", "{\"title\":\"Dune\"}"),
        ("HEAD /raw/echo HTTP/1.1", ""),
        ("GET /raw/chunked HTTP/1.1", ""),
        ("GET /raw/until-close HTTP/1.1", ""),
        ("GET /raw/interim HTTP/1.1", ""),
        ("DELETE /raw/empty HTTP/1.1", ""),
    ];
    for (line, body) in cases {
        let common = format!(
            "host: shelf.example\r\nX-Case: Kept\r\nx-forwarded-for: 10.0.0.1\r\ncontent-length: {}\r\n",
            body.len()
        );
        let fast = ask(&gateway.url, &format!("{line}\r\n{common}\r\n{body}")).await;
        let slow = ask(
            &gateway.url,
            &format!("{line}\r\n{common}connection: keep-alive, x-via-hyper\r\nx-via-hyper: 1\r\n\r\n{body}"),
        )
        .await;
        assert_eq!(fast.status, slow.status, "{line}: {fast:?} / {slow:?}");
        assert_eq!(
            fast.comparable_headers(),
            slow.comparable_headers(),
            "{line}: the answers' headers"
        );
        for answer in [&fast, &slow] {
            assert!(
                answer.header("x-correlation-id").is_some_and(|id| !id.is_empty()),
                "{line}"
            );
            assert!(answer.header("date").is_some(), "{line}: {answer:?}");
            assert_eq!(
                answer.header("x-served-by").map(|id| id.starts_with("raw-")),
                Some(true),
                "{line}"
            );
            for private in ["keep-alive", "x-private"] {
                assert_eq!(answer.header(private), None, "{line}: {private} is not passed back");
            }
        }
        if line.contains("/raw/echo") && !line.starts_with("HEAD") {
            let (fast_line, fast_headers, fast_body) = echoed(&fast);
            let (slow_line, slow_headers, slow_body) = echoed(&slow);
            assert_eq!(fast_line, slow_line);
            assert_eq!(fast_headers, slow_headers, "{line}: the requests forwarded");
            assert_eq!(fast_body, body.as_bytes());
            assert_eq!(slow_body, body.as_bytes());
            let forwarded = |name: &str| fast_headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            assert_eq!(forwarded("x-forwarded-for").as_deref(), Some("10.0.0.1, 127.0.0.1"));
            assert_eq!(forwarded("x-forwarded-host").as_deref(), Some("shelf.example"));
            assert_eq!(forwarded("x-via-hyper"), None);
            let fast_text = String::from_utf8_lossy(&fast.body);
            let slow_text = String::from_utf8_lossy(&slow.body);
            assert!(
                fast_text.contains("\r\nX-Case: Kept\r\n"),
                "the fast path served it: {fast_text}"
            );
            assert!(
                slow_text.contains("\r\nx-case: Kept\r\n"),
                "hyper served it: {slow_text}"
            );
        } else {
            assert_eq!(fast.body, slow.body, "{line}: the bodies");
        }
    }
    let chunked = ask(&gateway.url, "GET /raw/chunked HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(chunked.body, b"helloabcdefghijklmnopqrstuvwxyz");
    let until_close = ask(&gateway.url, "GET /raw/until-close HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(until_close.body, b"the whole answer");
    let interim = ask(&gateway.url, "GET /raw/interim HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!((interim.status, interim.body.as_slice()), (200, &b"final"[..]));
    assert!(gateway.terminate(), "the gateway exits cleanly");
}

/// One client connection: pipelined requests answered in order, and many
/// requests in turn carried over few connections to the instance; a
/// connection the instance closed after answering is not used again, even
/// for a request that may not be sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_kept_at_both_ends_and_a_closed_one_is_not_reused() {
    let (instance, gateway) = started().await;
    let mut stream = connect(&gateway.url).await;
    let mut buffer = Vec::new();
    let pipelined: String = (1..=3)
        .map(|n| format!("GET /raw/echo?n={n} HTTP/1.1\r\nhost: a\r\n\r\n"))
        .collect();
    stream.write_all(pipelined.as_bytes()).await.expect("sent");
    for n in 1..=3 {
        let answer = read_answer(&mut stream, &mut buffer, false).await;
        let (line, _, _) = echoed(&answer);
        assert_eq!(
            line,
            format!("GET /raw/echo?n={n} HTTP/1.1"),
            "answers in the order asked"
        );
    }
    for n in 0..20 {
        let request = format!(
            "POST /raw/echo HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\n{}",
            n % 10
        );
        stream.write_all(request.as_bytes()).await.expect("sent");
        let answer = read_answer(&mut stream, &mut buffer, false).await;
        assert_eq!(answer.status, 200);
        assert_eq!(echoed(&answer).2, (n % 10).to_string().as_bytes());
    }
    let used = instance.used.lock().unwrap().len();
    assert!(used <= 2, "23 requests in turn took {used} connections to the instance");

    // The instance closes its end after this answer; the next request, a
    // POST (never sent twice), must go over a new connection.
    for round in 0..5 {
        for path in ["/raw/then-close", "/raw/echo"] {
            let request = format!("POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("sent");
            let answer = read_answer(&mut stream, &mut buffer, false).await;
            assert_eq!(answer.status, 200, "round {round}, {path}: {answer:?}");
        }
    }
    assert!(gateway.terminate(), "the gateway exits cleanly");
}

/// An instance may close a kept-alive connection just as the gateway sends
/// a request on it. The fast path sends an idempotent request again, on a
/// new connection; any other it answers with 502, and never sends twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_connection_closed_unanswered_is_retried_only_when_idempotent() {
    let (instance, gateway) = started().await;
    let mut stream = connect(&gateway.url).await;
    let mut buffer = Vec::new();
    // A POST sent again would be answered 200 by the new connection. (It
    // comes last: the gateway ejects an instance that failed a request.)
    for (method, expected) in [("GET", 200), ("PUT", 200), ("POST", 502)] {
        // A connection to the instance, answered once and back in the pool
        // (given a moment to be put back).
        stream
            .write_all(b"GET /raw/echo HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("sent");
        assert_eq!(read_answer(&mut stream, &mut buffer, false).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = instance.dropped.lock().unwrap().len();
        let request = format!("{method} /raw/fresh-only HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("sent");
        let answer = read_answer(&mut stream, &mut buffer, false).await;
        assert_eq!(answer.status, expected, "{method}: {answer:?}");
        if expected == 200 {
            assert_eq!(answer.body, b"fresh", "{method}: answered on a new connection");
        }
        let dropped = instance.dropped.lock().unwrap()[before..].to_vec();
        assert_eq!(
            dropped,
            vec![format!("{method} /raw/fresh-only HTTP/1.1")],
            "{method}: dropped once on the reused connection"
        );
    }
    assert!(gateway.terminate(), "the gateway exits cleanly");
}

/// Requests the fast path leaves to hyper are served whole: HTTP/1.0, a
/// chunked body, `Expect: 100-continue`, a head that arrives in two parts.
/// An answer that stalls in its body cuts the client's connection at the
/// timeout instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_left_to_hyper_are_served_whole_and_a_stalled_answer_is_cut() {
    let (_instance, gateway) = started().await;

    let old = ask(&gateway.url, "GET /raw/echo?v=10 HTTP/1.0\r\nhost: a\r\n\r\n").await;
    assert_eq!(old.status, 200);
    assert!(echoed(&old).0.starts_with("GET /raw/echo?v=10 "));

    let chunked = ask(
        &gateway.url,
        "POST /raw/echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n4\r\nDune\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((chunked.status, echoed(&chunked).2), (200, b"Dune".to_vec()));

    let expecting = ask(
        &gateway.url,
        "POST /raw/echo HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\nDune",
    )
    .await;
    assert_eq!((expecting.status, echoed(&expecting).2), (200, b"Dune".to_vec()));

    let mut split = connect(&gateway.url).await;
    split
        .write_all(b"POST /raw/echo HTTP/1.1\r\nhost: a\r\ncont")
        .await
        .expect("sent");
    tokio::time::sleep(Duration::from_millis(100)).await;
    split.write_all(b"ent-length: 4\r\n\r\nDune").await.expect("sent");
    let answer = read_answer(&mut split, &mut Vec::new(), false).await;
    assert_eq!((answer.status, echoed(&answer).2), (200, b"Dune".to_vec()));

    // Five bytes of ten, then the instance says nothing: the client's
    // connection ends at the two-second timeout, the body short.
    let started = Instant::now();
    let mut stalled = connect(&gateway.url).await;
    stalled
        .write_all(b"GET /raw/stall HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("sent");
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection was cut, not left hanging");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "the five bytes and no more: {text}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "cut at the timeout: {waited:?}"
    );
    assert!(gateway.terminate(), "the gateway exits cleanly");
}

/// An instance that turns a request down (503 with
/// `x-bookshelf-not-owner`: it did nothing with it) has it sent to another
/// instance, on both paths and for any method, until one takes it; a plain
/// 503 is the instance's answer and goes back to the client as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_turned_down_goes_to_another_instance_on_both_paths() {
    let instances = [instance().await, instance().await, instance().await];
    let mut flags = vec!["--route".to_owned(), "/raw=raw".to_owned()];
    for instance in &instances {
        flags.extend(["--service".to_owned(), format!("raw={}", instance.url)]);
    }
    let gateway = Service::start("gateway", &flags.iter().map(String::as_str).collect::<Vec<_>>());
    let port = |instance: &Instance| instance.url.rsplit(':').next().unwrap_or_default().to_owned();
    let owner = port(&instances[2]);
    let served_by_owner = format!("raw-{owner}");
    for method in ["GET", "POST"] {
        for via_hyper in [false, true] {
            let extra = if via_hyper {
                "connection: keep-alive, x-via-hyper\r\nx-via-hyper: 1\r\n"
            } else {
                ""
            };
            for n in 0..6 {
                let answer = ask(
                    &gateway.url,
                    &format!("{method} /raw/owned-by/{owner} HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n{extra}\r\n"),
                )
                .await;
                assert_eq!(
                    (answer.status, answer.body.as_slice(), answer.header("x-served-by")),
                    (200, b"mine".as_slice(), Some(served_by_owner.as_str())),
                    "{method} {n} (via hyper: {via_hyper}) reached the owner"
                );
            }
            let mut plain = Vec::new();
            for _ in 0..6 {
                let request = format!(
                    "{method} /raw/busy-unless/{owner} HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n{extra}\r\n"
                );
                plain.push(ask(&gateway.url, &request).await.status);
            }
            assert!(
                plain.contains(&503) && plain.contains(&200),
                "a plain 503 is not tried elsewhere ({method}, via hyper: {via_hyper}): {plain:?}"
            );
        }
    }
    assert!(gateway.terminate(), "the gateway exits cleanly");
}

/// RFC 9112 section 3.2: an HTTP/1.1 request with no `Host`, with two, or
/// with one that is not a host is answered 400 on both paths, and nothing
/// of it reaches the instance; an HTTP/1.0 request needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_exactly_one_valid_host_is_refused_on_both_paths() {
    let (instance, gateway) = started().await;
    let heads = [
        ("no Host", "GET /raw/echo HTTP/1.1\r\n"),
        ("two Hosts", "GET /raw/echo HTTP/1.1\r\nhost: a\r\nHost: b\r\n"),
        ("a Host with a space", "GET /raw/echo HTTP/1.1\r\nhost: a b\r\n"),
        ("a Host with user info", "GET /raw/echo HTTP/1.1\r\nhost: me@a\r\n"),
    ];
    for (what, head) in heads {
        for (path, extra) in [("fast", ""), ("hyper's", "connection: keep-alive, x-via-hyper\r\n")] {
            let answer = ask(&gateway.url, &format!("{head}{extra}\r\n")).await;
            assert_eq!(answer.status, 400, "{what} on {path} path: {answer:?}");
            assert_eq!(answer.header("connection"), Some("close"), "{what} on {path} path");
            let body = String::from_utf8_lossy(&answer.body);
            assert!(
                body.contains("Host"),
                "{what} on {path} path: the answer says why: {body}"
            );
        }
    }
    assert!(
        instance.used.lock().unwrap().is_empty(),
        "no refused request reached the instance"
    );
    let old = ask(&gateway.url, "GET /raw/echo HTTP/1.0\r\n\r\n").await;
    assert_eq!(old.status, 200, "HTTP/1.0 without a Host: {old:?}");
}
