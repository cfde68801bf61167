//! The web console in a real browser: headless Chromium from the system's
//! packages (`scripts/test.sh` installs chromium and chromium-driver when
//! missing), driven through WebDriver (fantoccini) against the gateway in
//! front of an embedded `last_read`. The test opens the console, finds a
//! book's stream and reads an event, watches the `last-read` view's lag
//! drop to 0 after a burst of writes, re-drives a dead letter, and saves a
//! screenshot of each page under `target/tmp/console/`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bookshelf::{EventStore, ExpectedVersion, StreamId};
use fantoccini::{Client, ClientBuilder, Locator};

use crate::support::{add_book, eventually, get_json, read_book, Service};

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let driver = std::env::var("BOOKSHELF_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned());
    assert!(
        std::path::Path::new(&driver).exists(),
        "this test needs Chromium and its WebDriver ({driver}): run scripts/test.sh, which installs \
         the chromium and chromium-driver packages, or set BOOKSHELF_CHROMEDRIVER"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(&driver)
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{driver} does not start: {e}"));
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let chromium = std::env::var("BOOKSHELF_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,900", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(capabilities.clone())
            .connect(&driver.url)
            .await
        {
            Ok(client) => return client,
            Err(error) if std::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("no browser session from {}: {error}", driver.url),
        }
    }
}

/// The text of the first element `css` finds, once there is one. The
/// console draws its tables again every second, so an element found may
/// be gone when read: found again then.
async fn text_of(browser: &Client, css: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = browser.find(Locator::Css(css)).await;
        match found {
            Ok(element) => match element.text().await {
                Ok(text) => return text,
                Err(error) if std::time::Instant::now() > deadline => panic!("{css}: {error}"),
                Err(_) => {}
            },
            Err(error) if std::time::Instant::now() > deadline => panic!("no {css} on the page: {error}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the first element `css` finds, once there is one (found again
/// when it was drawn again in between).
async fn click(browser: &Client, css: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let clicked = match browser.find(Locator::Css(css)).await {
            Ok(element) => element.click().await.map(|_| ()),
            Err(error) => Err(error),
        };
        match clicked {
            Ok(()) => return,
            Err(error) if std::time::Instant::now() > deadline => panic!("cannot click {css}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Saves what the browser shows as `name`.png under `target/tmp/console/`.
async fn screenshot(browser: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).expect("a directory for the screenshots");
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).expect("saved");
    eprintln!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_streams_lag_and_dead_letters_and_redrives_one() {
    let dir = tempfile::tempdir().expect("a directory");
    let shelf = Service::start_in(dir.path(), "last_read", &["--data", "data"]);
    let routes: Vec<String> = ["books", "last-read", "authors"]
        .iter()
        .flat_map(|name| ["--service".to_owned(), format!("{name}={}", shelf.url)])
        .collect();
    let gateway = Service::start("gateway", &routes.iter().map(String::as_str).collect::<Vec<_>>());
    let http = reqwest::Client::new();
    let book = add_book(&http, &gateway.url, "The Left Hand of Darkness").await;
    read_book(&http, &gateway.url, &book).await;

    let driver = start_driver();
    let profile = tempfile::tempdir().expect("a browser profile");
    let browser = browser(&driver, profile.path()).await;
    let console = format!("{}/console", gateway.url);

    // Services and their instances, from discovery, with health.
    browser.goto(&format!("{console}#services")).await.expect("the console");
    let health = text_of(&browser, "#services tbody tr[data-address] td.health").await;
    assert_eq!(health, "passing");
    let services = text_of(&browser, "#services tbody tr[data-address] td:nth-child(3)").await;
    for service in ["books", "last-read", "authors"] {
        assert!(services.contains(service), "{services}");
    }
    screenshot(&browser, "services").await;

    // A book's stream, found among the books read last; an event read.
    browser
        .goto(&format!("{console}#streams"))
        .await
        .expect("the streams page");
    click(&browser, &format!("a.book[data-id='{book}']")).await;
    let first = text_of(&browser, "#events tr.event pre.event-json").await;
    let event: serde_json::Value = serde_json::from_str(&first).expect("the event as JSON");
    assert_eq!(event["payload"]["title"], "The Left Hand of Darkness");
    let correlation = event["metadata"]["correlation_id"]
        .as_str()
        .expect("a correlation id")
        .to_owned();
    assert_eq!(text_of(&browser, "#events tr.event td.type").await, "BookAdded");
    click(&browser, "#events tr.event a.correlation").await;
    let marked = browser
        .find_all(Locator::Css("#events tr.event.same"))
        .await
        .expect("marked rows");
    assert_eq!(marked.len(), 1, "only the event of correlation {correlation}");
    screenshot(&browser, "streams").await;

    // Any stream, of any category: listed by category, and opened.
    let store =
        bookshelf::sqlite::SqliteStore::open(dir.path().join("data").join("bookshelf.sqlite")).expect("the store");
    store
        .append(
            &StreamId::new("account-7"),
            ExpectedVersion::NoStream,
            vec![
                bookshelf_testkit::accounts::deposit(5),
                bookshelf_testkit::accounts::deposit(6),
            ],
        )
        .await
        .expect("appended");
    let category = browser.find(Locator::Css("#category")).await.expect("the category box");
    category.send_keys("account").await.expect("typed");
    click(&browser, "#list-streams").await;
    let listed = "#stream-list tr[data-stream='account-7']";
    assert_eq!(text_of(&browser, &format!("{listed} td.version")).await, "2");
    let rows = browser
        .find_all(Locator::Css("#stream-list tbody tr[data-stream]"))
        .await
        .expect("listed rows");
    assert_eq!(rows.len(), 1, "only the account streams");
    click(&browser, &format!("{listed} a.stream")).await;
    eventually("the account's events", Duration::from_secs(10), || async {
        let types = browser.find_all(Locator::Css("#events tr.event td.type")).await.ok()?;
        let mut seen = Vec::new();
        for cell in types {
            seen.push(cell.text().await.ok()?);
        }
        (seen == ["Deposited", "Deposited"]).then_some(())
    })
    .await;
    let said = text_of(&browser, "#message").await;
    assert!(said.starts_with("account-7: 2 events, from "), "{said}");
    screenshot(&browser, "any-stream").await;

    // A burst of writes: the view's lag drops back to 0.
    browser
        .goto(&format!("{console}#runners"))
        .await
        .expect("the runners page");
    let row = "#runners tr[data-runner='last-read']";
    let before: u64 = text_of(&browser, &format!("{row} td.position"))
        .await
        .parse()
        .expect("a position");
    let burst = 20;
    for n in 0..burst {
        let id = add_book(&http, &gateway.url, &format!("Burst {n}")).await;
        read_book(&http, &gateway.url, &id).await;
    }
    let after = before + 2 * burst;
    eventually(
        "the view caught up, as the console shows",
        Duration::from_secs(30),
        || async {
            let position: u64 = text_of(&browser, &format!("{row} td.position")).await.parse().ok()?;
            let lag = text_of(&browser, &format!("{row} td.lag")).await;
            (position >= after && lag == "0").then_some(())
        },
    )
    .await;
    let points = eventually("the lag chart", Duration::from_secs(10), || async {
        let line = browser
            .find(Locator::Css(&format!("{row} svg.chart polyline")))
            .await
            .ok()?;
        line.attr("points").await.ok().flatten()
    })
    .await;
    assert!(points.split(' ').count() >= 2, "the chart has samples: {points}");
    screenshot(&browser, "runners").await;

    // A poison event, written beside the service (another process on its
    // file): the view sets it aside, and the console re-drives it; the code
    // still cannot read it, so it comes back with the reason.
    let store = bookshelf::sqlite::SqliteStore::open(dir.path().join("data").join("bookshelf.sqlite"))
        .expect("the service's store");
    store
        .append(
            &StreamId::new("book-poison"),
            ExpectedVersion::NoStream,
            vec![bookshelf_testkit::accounts::raw_event("BookRead", 1, r#"{"title": 5}"#)],
        )
        .await
        .expect("appended");
    browser
        .goto(&format!("{console}#letters"))
        .await
        .expect("the letters page");
    let letter = "#letters tr[data-runner='last-read']";
    let reason = text_of(&browser, &format!("{letter} td.reason")).await;
    assert!(reason.contains("BookRead"), "{reason}");
    let set_aside_at = |browser: &Client| {
        let browser = browser.clone();
        async move {
            let cell = browser
                .find(Locator::Css(&format!("{letter} td.set-aside")))
                .await
                .ok()?;
            cell.attr("data-at").await.ok().flatten()
        }
    };
    let set_aside = eventually("when it was set aside", Duration::from_secs(10), || {
        set_aside_at(&browser)
    })
    .await;
    click(&browser, &format!("{letter} button.redrive")).await;
    eventually("the console says it is queued", Duration::from_secs(10), || async {
        let said = text_of(&browser, "#message").await;
        said.contains("queued for re-drive").then_some(())
    })
    .await;
    eventually("the letter put back by the runner", Duration::from_secs(20), || async {
        let again = set_aside_at(&browser).await?;
        let ticket = text_of(&browser, &format!("{letter} td.ticket")).await;
        (again != set_aside && ticket == "-").then_some(())
    })
    .await;
    let runners = get_json(&http, &format!("{}/runners", shelf.url)).await;
    let last_read = runners
        .as_array()
        .and_then(|all| all.iter().find(|r| r["name"] == "last-read"))
        .expect("the view");
    assert_eq!(last_read["set_aside"], 2, "set aside, then put back: {last_read}");
    screenshot(&browser, "letters").await;

    // A rebuild started from the console: version 2 serves once caught up.
    browser
        .goto(&format!("{console}#views"))
        .await
        .expect("the rebuilds page");
    let view = "#views tr[data-view='last-read']";
    assert_eq!(text_of(&browser, &format!("{view} td.serving")).await, "v1");
    click(&browser, &format!("{view} button.rebuild")).await;
    eventually("version 2 serving, version 1 kept", Duration::from_secs(30), || async {
        let serving = text_of(&browser, &format!("{view} td.serving")).await;
        let kept = text_of(&browser, &format!("{view} td.kept")).await;
        (serving == "v2" && kept == "v1").then_some(())
    })
    .await;
    let said = text_of(&browser, "#message").await;
    assert!(said.contains("building version 2 of last-read"), "{said}");
    screenshot(&browser, "views").await;

    // Rolled back to version 1 (it kept reading), then version 2 dropped.
    let shows = |serving: &'static str, kept: &'static str| {
        let browser = browser.clone();
        move || {
            let browser = browser.clone();
            async move {
                let now = (
                    text_of(&browser, &format!("{view} td.serving")).await,
                    text_of(&browser, &format!("{view} td.kept")).await,
                );
                (now == (serving.to_owned(), kept.to_owned())).then_some(())
            }
        }
    };
    click(&browser, &format!("{view} button.roll-back")).await;
    eventually(
        "version 1 serving again, version 2 kept",
        Duration::from_secs(10),
        shows("v1", "v2"),
    )
    .await;
    click(&browser, &format!("{view} button.drop-previous")).await;
    eventually("version 2 dropped", Duration::from_secs(10), shows("v1", "-")).await;
    let said = text_of(&browser, "#message").await;
    assert!(said.contains("dropped; version 1 serves"), "{said}");
    let views = get_json(&http, &format!("{}/views", shelf.url)).await;
    assert_eq!(
        (views[0]["serving"].clone(), views[0]["previous"].clone()),
        (serde_json::json!(1), serde_json::Value::Null)
    );
    browser.close().await.expect("closed");

    // Wrong asks get typed answers, and reach nothing.
    let post = |url: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .expect("an answer")
                .status()
                .as_u16()
        }
    };
    let relay = format!("{}/console/api/redrive", gateway.url);
    let elsewhere = serde_json::json!({"address": "127.0.0.1:9", "runner": "last-read", "all": true});
    assert_eq!(post(relay, elsewhere).await, 404, "only to instances discovery lists");
    let redrive = |runner: &str| format!("{}/runners/{runner}/redrive", shelf.url);
    assert_eq!(post(redrive("nobody"), serde_json::json!({"all": true})).await, 404);
    assert_eq!(post(redrive("last-read"), serde_json::json!({"id": 99})).await, 404);
    assert_eq!(
        post(redrive("last-read"), serde_json::json!({"id": 1, "all": true})).await,
        400
    );
    assert_eq!(
        post(redrive("last-read"), serde_json::json!({"every": true})).await,
        400
    );
}
