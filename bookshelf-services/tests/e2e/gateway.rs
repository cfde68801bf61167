//! The bookshelf end to end: the services as separate processes, driven only
//! through the gateway.
//!
//! * On the embedded default: `last_read` (books and views on one SQLite
//!   store) behind a gateway with in-process discovery that checks
//!   `/health` itself.
//! * On Kafka with discovery: `books` writing to a topic on tansu (from
//!   `scripts/test.sh`), two `last_read` instances and an `authors` view
//!   projecting from it, all registered in the Consul double, and a gateway
//!   that finds them there.
//!
//! Both drive the same scenario (add, read, query, conflict, bad input,
//! correlation ids), check the failure answers (502, 503), and put a bounded
//! load through the gateway in which no request may fail, be answered
//! wrongly, or lose its write.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{brokers, eventually, Service};
use bookshelf_testkit::consul::ConsulDouble;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A response's status, correlation id and JSON body.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the gateway answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a whole body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: a body that is not JSON: {text:?}"));
    Answer { status, headers, body }
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no error message in {}", self.status, self.body))
    }
}

/// Add, read, query, conflict, bad input and correlation ids, all through the
/// gateway at `gateway`. Returns the id of the book it added.
async fn scenario(gateway: &str) -> String {
    let http = reqwest::Client::new();
    let title = format!("Dune {}", uuid::Uuid::new_v4().simple());
    let author = "Frank Herbert";

    // Add, with our correlation id.
    let added = send(
        http.post(format!("{gateway}/books"))
            .header("x-correlation-id", "e2e-add")
            .json(&json!({ "title": title, "author": author, "isbn": "978-0-441-01359-3" })),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    assert_eq!(added.header("x-correlation-id"), "e2e-add");
    let id = added.body["id"].as_str().expect("the new book's id").to_owned();
    assert_eq!(added.body["version"], 1);
    assert_eq!(added.header("location"), format!("/books/{id}"));

    // Read it, at the version we saw; again at that version is a conflict.
    let read = send(
        http.post(format!("{gateway}/books/{id}/read"))
            .header("if-match", "\"1\""),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["version"], 2);
    let generated = read.header("x-correlation-id").to_owned();
    assert!(
        !generated.is_empty() && generated != "e2e-add",
        "the gateway made one up"
    );
    let stale = send(
        http.post(format!("{gateway}/books/{id}/read"))
            .header("if-match", "\"1\""),
    )
    .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    assert!(
        stale.error().contains('2'),
        "the conflict names the version: {}",
        stale.body
    );

    // Bad input: malformed JSON, a missing field, an invalid ISBN, a body
    // over the gateway's limit, an unknown book, a path no service serves.
    let malformed = send(
        http.post(format!("{gateway}/books"))
            .header("content-type", "application/json")
            .body("{\"title\": \"Dune\", "),
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(!malformed.error().is_empty());
    let missing = send(http.post(format!("{gateway}/books")).json(&json!({ "title": "Dune" }))).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.error().contains("author"), "{}", missing.body);
    let isbn = send(
        http.post(format!("{gateway}/books"))
            .json(&json!({ "title": "Dune", "author": author, "isbn": "978-0-441-01359-4" })),
    )
    .await;
    assert_eq!(isbn.status, StatusCode::BAD_REQUEST);
    assert!(isbn.error().contains("ISBN"), "{}", isbn.body);
    let huge = "x".repeat(70_000);
    let too_large = send(
        http.post(format!("{gateway}/books"))
            .json(&json!({ "title": huge, "author": author, "isbn": "9780441013593" })),
    )
    .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(too_large.error().contains("65536"), "{}", too_large.body);
    // The rest of that body is unread: the connection is not used again.
    assert_eq!(too_large.header("connection"), "close");
    let unknown = send(http.post(format!("{gateway}/books/no-such-book/read"))).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let nowhere = send(http.get(format!("{gateway}/nowhere"))).await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert!(nowhere.error().contains("/nowhere"), "{}", nowhere.body);

    // The correlation ids are in the events' metadata.
    let log = send(http.get(format!("{gateway}/books/{id}/events"))).await;
    assert_eq!(log.status, StatusCode::OK);
    let events = log.body["events"].as_array().expect("a list of events");
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["metadata"]["correlation_id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(kinds, [("BookAdded", "e2e-add"), ("BookRead", generated.as_str())]);
    assert_eq!(log.body["_links"]["book"]["href"], format!("/books/{id}"));

    // The views show it (eventually, on Kafka).
    let list = eventually("the last-read view shows the book", Duration::from_secs(30), || async {
        let list = send(http.get(format!("{gateway}/last-read"))).await;
        (list.status == StatusCode::OK && list.body[0]["id"] == id.as_str()).then_some(list.body)
    })
    .await;
    assert_eq!(list[0]["title"], title.as_str());
    assert_eq!(list[0]["author"], author);
    let shelf = eventually("the authors view shows the read", Duration::from_secs(30), || async {
        let shelf = send(http.get(format!("{gateway}/authors/Frank%20Herbert"))).await;
        let book = shelf.body["books"]
            .as_array()?
            .iter()
            .find(|b| b["id"] == id.as_str())?
            .clone();
        (book["reads"] == 1).then_some(book)
    })
    .await;
    assert_eq!(shelf["title"], title.as_str());
    id
}

/// A bounded load through the gateway, every answer and write checked.
fn load(gateway: &str) -> String {
    let (ok, printed) = crate::support::run(
        "load",
        &[
            "--target",
            gateway,
            "--requests",
            "1500",
            "--concurrency",
            "16",
            "--books",
            "20",
            "--max-seconds",
            "120",
        ],
    );
    println!("{printed}");
    assert!(ok, "the load run found problems:\n{printed}");
    assert!(printed.contains("failed: 0, answered wrongly: 0"), "{printed}");
    printed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_bookshelf_through_the_gateway() {
    let shelf = Service::start::<&str>("last_read", &[]);
    let slow = slow_service().await;
    let mut args: Vec<String> = Vec::new();
    for name in ["books", "last-read", "authors"] {
        args.extend(["--service".into(), format!("{name}={}", shelf.url)]);
        args.extend(["--route".into(), format!("/{name}={name}")]);
    }
    args.extend([
        "--service".into(),
        format!("slow={slow}"),
        "--route".into(),
        "/slow=slow".into(),
    ]);
    args.extend(["--max-body-bytes", "65536", "--timeout-ms", "500"].map(String::from));
    let gateway = Service::start("gateway", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let http = reqwest::Client::new();

    let health = send(http.get(format!("{}/health", gateway.url))).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        health.body["services"],
        json!({ "authors": 1, "books": 1, "last-read": 1, "slow": 1 })
    );

    scenario(&gateway.url).await;
    load(&gateway.url);

    // An upstream that takes too long: 504 at the timeout, not a hang.
    let started = Instant::now();
    let late = send(http.get(format!("{}/slow", gateway.url))).await;
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT, "{}", late.body);
    assert!(late.error().contains("500 ms"), "{}", late.body);
    assert!(started.elapsed() < Duration::from_secs(3), "answered at the timeout");

    // A body that stops arriving: 408 at the timeout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = gateway.url.trim_start_matches("http://");
    let mut slow_client = tokio::net::TcpStream::connect(address)
        .await
        .expect("the gateway accepts");
    slow_client
        .write_all(b"POST /books HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"title\"")
        .await
        .expect("the start of a request is sent");
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), slow_client.read(&mut answer))
        .await
        .expect("answered before the client gave up")
        .expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 500 ms"), "{answer}");

    // The service stops: its health check fails, and the gateway says so.
    assert!(shelf.terminate(), "last_read exits cleanly on SIGTERM");
    let unavailable = eventually("the gateway answers 503", Duration::from_secs(10), || async {
        let answer = send(http.get(format!("{}/last-read", gateway.url))).await;
        (answer.status == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
    })
    .await;
    assert_eq!(unavailable.error(), "no healthy instance of last-read");
    assert!(gateway.terminate(), "the gateway exits cleanly on SIGTERM");
}

/// A service in this process whose `/slow` takes five seconds; returns its
/// URL.
async fn slow_service() -> String {
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                axum::Json(json!([]))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bookshelf_on_kafka_and_consul_through_the_gateway() {
    let consul = ConsulDouble::start().await.expect("the Consul double starts");
    let (brokers, consul_url) = (brokers(), consul.url());
    let topic = format!("bookshelf-e2e-{}", uuid::Uuid::new_v4().simple());
    let on = |name: &'static str, id: &'static str| -> Vec<String> {
        [
            "--broker",
            &brokers,
            "--topic",
            &topic,
            "--consul",
            &consul_url,
            "--name",
            name,
            "--id",
            id,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let start = |example: &str, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::start(example, &args)
    };
    // Two books instances share the topic's partitions (each owns some and
    // forwards the others' books to their owner), each with its own state.
    let data = std::env::temp_dir().join(&topic);
    let with_data = |id: &'static str| {
        let mut args = on("books", id);
        args.extend(["--data".to_owned(), data.display().to_string()]);
        args
    };
    let books = start("books", &with_data("books-1"));
    let books_2 = start("books", &with_data("books-2"));
    let view_a = start("last_read", &on("last-read", "last-read-a"));
    let view_b = start("last_read", &on("last-read", "last-read-b"));
    let authors = start("authors", &on("authors", "authors-1"));
    let gateway = Service::start("gateway", &["--consul", &consul_url, "--max-body-bytes", "65536"]);
    let http = reqwest::Client::new();

    // The gateway finds them all (and itself registers).
    eventually("the gateway sees every instance", Duration::from_secs(20), || async {
        let health = send(http.get(format!("{}/health", gateway.url))).await;
        (health.body["services"] == json!({ "authors": 1, "books": 2, "last-read": 2 })).then_some(())
    })
    .await;
    assert!(consul.registered().iter().any(|id| id.starts_with("gateway-")));

    let id = scenario(&gateway.url).await;

    // Both books instances serve the book, whichever owns its partition.
    let mut served_books = BTreeSet::new();
    for _ in 0..6 {
        let answer = send(http.get(format!("{}/books/{id}", gateway.url))).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        served_books.insert(answer.header("x-served-by").to_owned());
    }
    assert_eq!(
        served_books,
        BTreeSet::from(["books-1".to_owned(), "books-2".to_owned()])
    );

    // The book's stream, from the instance that keeps its partition; a
    // topic of several partitions has no index of its streams to list.
    let mut held = Vec::new();
    for instance in [&books, &books_2] {
        let answer = send(http.get(format!("{}/streams/book-{id}/events", instance.url))).await;
        if answer.status == StatusCode::OK {
            assert_eq!(answer.body["events"][0]["type"], "BookAdded", "{}", answer.body);
            held.push(instance.url.clone());
        } else {
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
        }
    }
    assert!(!held.is_empty(), "an instance holds the book's stream");
    let listed = send(http.get(format!("{}/streams", books.url))).await;
    assert_eq!(listed.status, StatusCode::NOT_FOUND, "{}", listed.body);

    // Balanced across both view instances, each of which catches up.
    let mut caught_up = BTreeSet::new();
    let mut served = Vec::new();
    let start = Instant::now();
    while caught_up.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "both view instances serve the book: only {caught_up:?} do"
        );
        let answer = send(http.get(format!("{}/last-read", gateway.url))).await;
        assert_eq!(answer.status, StatusCode::OK);
        let by = answer.header("x-served-by").to_owned();
        served.push(by.clone());
        if answer
            .body
            .as_array()
            .is_some_and(|l| l.iter().any(|b| b["id"] == id.as_str()))
        {
            caught_up.insert(by);
        }
    }
    assert_eq!(
        caught_up,
        BTreeSet::from(["last-read-a".to_owned(), "last-read-b".to_owned()])
    );
    assert!(
        served.windows(2).all(|pair| pair[0] != pair[1]),
        "round robin alternates: {served:?}"
    );

    load(&gateway.url);

    // The authors view rebuilt from the topic beside the one serving, once
    // that one has read it all (its answer no longer moves): the new
    // version answers the same.
    let before = eventually("authors has read the whole topic", Duration::from_secs(30), || async {
        let first = send(http.get(format!("{}/authors", gateway.url))).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let then = send(http.get(format!("{}/authors", gateway.url))).await;
        (first.body == then.body).then_some(then)
    })
    .await;
    let started = send(http.post(format!("{}/views/authors/rebuild", authors.url))).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    assert_eq!(started.body["runner"], "authors@v2");
    eventually("version 2 of authors serves", Duration::from_secs(30), || async {
        let views = send(http.get(format!("{}/views", authors.url))).await;
        (views.body[0]["serving"] == 2 && views.body[0]["previous"] == 1).then_some(())
    })
    .await;
    let after = send(http.get(format!("{}/authors", gateway.url))).await;
    assert_eq!(after.body, before.body, "the rebuilt version answers the same");
    assert!(after.body.as_array().is_some_and(|a| !a.is_empty()), "{}", after.body);

    // One view instance stops and deregisters: the other serves everything.
    assert!(view_a.terminate(), "last_read exits cleanly on SIGTERM");
    eventually(
        "the gateway follows the deregistration",
        Duration::from_secs(10),
        || async {
            let health = send(http.get(format!("{}/health", gateway.url))).await;
            (health.body["services"]["last-read"] == 1).then_some(())
        },
    )
    .await;
    for _ in 0..6 {
        let answer = send(http.get(format!("{}/last-read", gateway.url))).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-served-by"), "last-read-b");
    }

    // The other crashes: still registered (its TTL has not run out), it
    // refuses connections: 502 naming it, then it is left out: 503.
    view_b.crash();
    let refused = send(http.get(format!("{}/last-read", gateway.url))).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{}", refused.body);
    assert!(refused.error().contains("last-read-b"), "{}", refused.body);
    let unavailable = send(http.get(format!("{}/last-read", gateway.url))).await;
    assert_eq!(
        unavailable.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        unavailable.body
    );
    assert_eq!(unavailable.error(), "no healthy instance of last-read");
    // The other services are unaffected.
    let book = send(http.get(format!("{}/books/{id}", gateway.url))).await;
    assert_eq!(book.status, StatusCode::OK);

    assert!(gateway.terminate(), "the gateway exits cleanly on SIGTERM");
    assert!(authors.terminate(), "authors exits cleanly on SIGTERM");
    assert!(books.terminate(), "books exits cleanly on SIGTERM");
    assert!(books_2.terminate(), "the second books exits cleanly on SIGTERM");
    let _ = std::fs::remove_dir_all(&data);
    assert!(
        consul.registered().iter().all(|id| id == "last-read-b"),
        "all but the crashed instance deregistered: {:?}",
        consul.registered()
    );
}

/// On PostgreSQL: two `books` instances, a `last_read` and an `authors` on
/// one database, registered in the Consul double, behind the gateway. Any
/// books instance serves any book at once (no owners), and `If-Match` races
/// across the two have one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bookshelf_on_postgres_through_the_gateway() {
    let database = bookshelf_testkit::postgres::fresh_database("gateway").await;
    let consul = ConsulDouble::start().await.expect("the Consul double starts");
    let consul_url = consul.url();
    let on = |name: &str, id: &str| -> Vec<String> {
        [
            "--postgres",
            &database,
            "--consul",
            &consul_url,
            "--name",
            name,
            "--id",
            id,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let start = |example: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::start(example, &args)
    };
    let books_1 = start("books", on("books", "books-1"));
    let books_2 = start("books", on("books", "books-2"));
    let view = start("last_read", on("last-read", "last-read-1"));
    let authors = start("authors", on("authors", "authors-1"));
    let gateway = Service::start("gateway", &["--consul", &consul_url, "--max-body-bytes", "65536"]);
    let http = reqwest::Client::new();
    eventually("the gateway sees every instance", Duration::from_secs(20), || async {
        let health = send(http.get(format!("{}/health", gateway.url))).await;
        (health.body["services"] == json!({ "authors": 1, "books": 2, "last-read": 1 })).then_some(())
    })
    .await;

    let id = scenario(&gateway.url).await;

    // Both instances serve the book, each at its latest version at once.
    let mut served = BTreeSet::new();
    for _ in 0..6 {
        let answer = send(http.get(format!("{}/books/{id}", gateway.url))).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["version"], 2, "{}", answer.body);
        served.insert(answer.header("x-served-by").to_owned());
    }
    assert_eq!(served, BTreeSet::from(["books-1".to_owned(), "books-2".to_owned()]));

    // A write on one instance is read on the other right after.
    let rated = send(
        http.put(format!("{}/books/{id}/rating", books_1.url))
            .json(&json!({ "stars": 4 })),
    )
    .await;
    assert_eq!(rated.status, StatusCode::OK, "{}", rated.body);
    let read_back = send(http.get(format!("{}/books/{id}", books_2.url))).await;
    assert_eq!(read_back.body["version"], 3, "{}", read_back.body);

    // If-Match races across both instances: exactly one winner per round.
    for round in 0..10 {
        let version = 3 + round;
        let tries: Vec<_> = [&books_1.url, &books_2.url, &books_1.url, &books_2.url]
            .into_iter()
            .map(|url| {
                http.post(format!("{url}/books/{id}/read"))
                    .header("if-match", format!("\"{version}\""))
                    .send()
            })
            .collect();
        let statuses: Vec<u16> = futures_statuses(tries).await;
        assert_eq!(
            statuses.iter().filter(|&&s| s == 200).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|&&s| s == 409).count(),
            3,
            "round {round}: {statuses:?}"
        );
    }

    load(&gateway.url);
    for service in [books_1, books_2, view, authors, gateway] {
        assert!(service.terminate(), "exits cleanly on SIGTERM");
    }
}

/// The statuses of requests sent at once.
async fn futures_statuses(
    requests: Vec<impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static>,
) -> Vec<u16> {
    let sent: Vec<_> = requests.into_iter().map(tokio::spawn).collect();
    let mut statuses = Vec::new();
    for request in sent {
        let response = request.await.expect("no panic").expect("an answer");
        statuses.push(response.status().as_u16());
    }
    statuses
}
