//! Every service describes its HTTP API in an OpenAPI 3.1 document at
//! `/openapi.json`, generated from its handlers, with a docs page at
//! `/docs/`; the gateway serves its services' documents combined. An API
//! fuzzer that is not ours, schemathesis from PyPI (which `scripts/test.sh`
//! installs into the tests' virtual environment and names through
//! `BOOKSHELF_PYTHON`), then sends each service requests made from its
//! document and fails on any 5xx and on any answer the document does not
//! allow: a status it does not list, a body or header that breaks its
//! schema, another content type, a request the document calls invalid
//! that is accepted, an undocumented method that is not refused.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::{brokers, eventually, get_json, on_kafka, Service};
use bookshelf_testkit::consul::ConsulDouble;
use serde_json::Value;

/// The checks schemathesis runs. Two of its others are left out on
/// purpose: `positive_data_acceptance` (an ISBN with a wrong check digit
/// is refused, a rule no schema can state) and `use_after_free` (a removed
/// book's event log stays readable: removal is one more event).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_schema_conformance,response_headers_conformance,negative_data_rejection,\
ensure_resource_availability,unsupported_method";

fn schemathesis() -> PathBuf {
    let python = std::env::var("BOOKSHELF_PYTHON").unwrap_or_else(|_| {
        panic!(
            "this test needs schemathesis from PyPI: run scripts/test.sh, which installs it, \
             or set BOOKSHELF_PYTHON to a python that has it (scripts/python.sh prints one)"
        )
    });
    let cli = PathBuf::from(python).with_file_name("schemathesis");
    assert!(
        cli.exists(),
        "{} is missing: scripts/python.sh installs schemathesis",
        cli.display()
    );
    cli
}

/// Runs schemathesis against the service at `url`, and fails the test with
/// its report when it finds anything.
async fn fuzz(name: &str, url: &str) {
    let cli = schemathesis();
    let document = format!("{url}/openapi.json");
    // Its working directory, where it keeps a cache: not the checkout.
    let scratch = std::env::temp_dir().join(format!("bookshelf-schemathesis-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).expect("a scratch directory");
    let started = Instant::now();
    let dir = scratch.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(cli)
            .current_dir(dir)
            .args([
                "run",
                &document,
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--workers",
                "1",
            ])
            // No colours, no telemetry, no prompts.
            .env("NO_COLOR", "1")
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .output()
    })
    .await
    .expect("schemathesis runs")
    .expect("schemathesis starts");
    let _ = std::fs::remove_dir_all(&scratch);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found {name} breaking its own document:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cases = stdout
        .lines()
        .skip_while(|line| !line.contains("Test cases:"))
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    println!(
        "{name}: schemathesis passed ({cases}) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        cases.contains("passed"),
        "schemathesis ran no test case on {name}:\n{stdout}"
    );
}

/// The service's document, checked to be OpenAPI 3.1 and to list `paths`.
async fn document(http: &reqwest::Client, url: &str, paths: &[&str]) -> Value {
    let document = get_json(http, &format!("{url}/openapi.json")).await;
    let version = document["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "OpenAPI 3.1, not {version:?}");
    let listed: Vec<&String> = document["paths"]
        .as_object()
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    for path in paths {
        assert!(
            listed.iter().any(|listed| listed == path),
            "{url} documents {path}: it lists {listed:?}"
        );
    }
    document
}

/// The docs page and its assets come from the binary.
async fn docs_page(http: &reqwest::Client, url: &str) {
    for (path, kind) in [("/docs/", "text/html"), ("/docs/swagger-ui-bundle.js", "javascript")] {
        let answer = http
            .get(format!("{url}{path}"))
            .send()
            .await
            .expect("the docs page answers");
        assert_eq!(answer.status(), 200, "{path}");
        let content_type = answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(content_type.contains(kind), "{path}: {content_type}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_service_and_the_gateway_hold_to_their_documents() {
    let http = reqwest::Client::new();
    let service = Service::start("last_read", &["--in-memory"]);
    let own = document(
        &http,
        &service.url,
        &[
            "/",
            "/last-read",
            "/authors",
            "/authors/{author}",
            "/books",
            "/books/{id}",
            "/books/{id}/read",
            "/books/{id}/rating",
            "/books/{id}/events",
            "/books/{id}/events/{version}",
            "/health",
            "/metrics",
            "/openapi.json",
            "/docs/",
        ],
    )
    .await;
    // A command's answers, as the handler gives them.
    let add = &own["paths"]["/books"]["post"]["responses"];
    for status in ["201", "400", "409", "413", "415", "503"] {
        assert!(add.get(status).is_some(), "POST /books documents {status}: {add}");
    }
    docs_page(&http, &service.url).await;
    fuzz("last_read", &service.url).await;

    // The gateway in front: its own routes and those it forwards, with the
    // answers it may give itself.
    let services: Vec<String> = ["books", "last-read", "authors"]
        .iter()
        .flat_map(|name| ["--service".to_owned(), format!("{name}={}", service.url)])
        .collect();
    let gateway = Service::start("gateway", &services);
    let combined = document(
        &http,
        &gateway.url,
        &[
            "/books",
            "/books/{id}",
            "/last-read",
            "/authors",
            "/authors/{author}",
            "/health",
            "/metrics",
            "/openapi.json",
        ],
    )
    .await;
    assert!(
        combined["paths"].get("/").is_none(),
        "GET / is last_read's, not a route of the gateway"
    );
    let get_book = &combined["paths"]["/books/{id}"]["get"]["responses"];
    for status in ["200", "404", "502", "503", "504"] {
        assert!(
            get_book.get(status).is_some(),
            "GET /books/{{id}} via the gateway documents {status}"
        );
    }
    assert!(
        combined["components"]["schemas"].get("GatewayHealth").is_some()
            && combined["components"]["schemas"].get("ReadBook").is_some(),
        "the schemas of both"
    );
    docs_page(&http, &gateway.url).await;
    fuzz("the gateway", &gateway.url).await;
}

/// The JSON at `url`, if it answers with some.
async fn json_at(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_on_kafka_hold_to_their_documents() {
    let http = reqwest::Client::new();
    let consul = ConsulDouble::start().await.expect("the Consul double starts");
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let data = std::env::temp_dir().join(format!("bookshelf-openapi-{suffix}"));
    let books_topic = format!("bookshelf-openapi-books-{suffix}");

    let books = Service::start(
        "books",
        &on_kafka(&books_topic, &consul.url(), "books-1", &data.join("books"), &[]),
    );
    let ownership = format!("{}/ownership", books.url);
    eventually("books owns every partition", Duration::from_secs(30), || async {
        let o = json_at(&http, &ownership).await?;
        let all_mine = o["partitions"]
            .as_array()
            .is_some_and(|p| !p.is_empty() && p.iter().all(|p| p["mine"] == true));
        (o["caught_up"] == true && all_mine).then_some(())
    })
    .await;
    document(&http, &books.url, &["/books", "/books/{id}", "/ownership", "/health"]).await;
    fuzz("books", &books.url).await;

    let authors = Service::start("authors", &["--broker", &brokers(), "--topic", &books_topic]);
    document(&http, &authors.url, &["/authors", "/authors/{author}", "/health"]).await;
    fuzz("authors", &authors.url).await;

    let lending = Service::start(
        "lending",
        &on_kafka(
            &format!("bookshelf-openapi-lending-{suffix}"),
            &consul.url(),
            "lending-1",
            &data.join("lending"),
            &[],
        ),
    );
    let role = format!("{}/role", lending.url);
    eventually("lending writes its topic", Duration::from_secs(30), || async {
        (json_at(&http, &role).await?["writer"] == true).then_some(())
    })
    .await;
    document(
        &http,
        &lending.url,
        &[
            "/members",
            "/members/{id}",
            "/copies",
            "/copies/{id}",
            "/copies/{id}/reserve",
            "/role",
        ],
    )
    .await;
    fuzz("lending", &lending.url).await;

    let changes_topic = format!("bookshelf-openapi-changes-{suffix}");
    for (role, paths) in [("feed", vec!["/progress"]), ("replica", vec!["/progress", "/replica"])] {
        let args = on_kafka(
            &books_topic,
            &consul.url(),
            &format!("changes-{role}"),
            &data.join(role),
            &["--changes-topic", &changes_topic, "--role", role],
        );
        let changes = Service::start("changes", &args);
        document(&http, &changes.url, &paths).await;
        fuzz(&format!("changes --role {role}"), &changes.url).await;
    }
    let _ = std::fs::remove_dir_all(&data);
}
