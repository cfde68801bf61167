//! A database of its own for each test, on the PostgreSQL server that
//! `DATABASE_URL` names (the test scripts start one: `scripts/postgres.sh`).

use std::sync::atomic::{AtomicU64, Ordering};

/// The server's URL from `DATABASE_URL`.
///
/// # Panics
/// When `DATABASE_URL` is not set: the test needs a PostgreSQL server and
/// says so.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "this test needs a PostgreSQL server and DATABASE_URL names none: \
             run it through scripts/test.sh, or start one with `scripts/postgres.sh start` \
             and export the DATABASE_URL it prints"
        )
    })
}

/// Creates a new, empty database named after `hint` on the server of
/// `DATABASE_URL`, and returns its URL. Databases are not dropped: the
/// server is a throwaway one.
///
/// # Panics
/// When `DATABASE_URL` is not set, or the server cannot create a database.
pub async fn fresh_database(hint: &str) -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let url = server_url();
    let tag: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!(
        "t_{tag}_{}_{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL {url}: {e}"));
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name} on {url}: {e}"));
    drop(client);
    let _ = driver.await;
    with_database(&url, &name)
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// A PostgreSQL server of a test's own (started by `scripts/postgres.sh`),
/// for tests that take the server down: stopped and deleted when dropped.
pub struct OwnServer {
    name: String,
    /// The URL of its `bookshelf` database.
    pub url: String,
}

impl OwnServer {
    /// Starts a new server named `name` (unique within the test run).
    ///
    /// # Panics
    /// When the script cannot start one (it says why on stderr).
    pub fn start(name: &str) -> OwnServer {
        let name = format!("{name}-{}", std::process::id());
        let output = script(&name, "start");
        let url = String::from_utf8_lossy(&output)
            .lines()
            .find_map(|line| line.strip_prefix("DATABASE_URL=").map(str::to_owned))
            .expect("scripts/postgres.sh start prints DATABASE_URL=");
        OwnServer { name, url }
    }

    /// Stops the server at once, as a crash would; its data is kept.
    pub fn down(&self) {
        script(&self.name, "down");
    }

    /// Starts the server again, on the same port.
    pub fn up(&self) {
        script(&self.name, "up");
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script_path())
            .arg("stop")
            .env("BOOKSHELF_POSTGRES_NAME", &self.name)
            .status();
    }
}

fn script_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/postgres.sh").to_owned()
}

fn script(name: &str, command: &str) -> Vec<u8> {
    let output = std::process::Command::new("bash")
        .arg(script_path())
        .arg(command)
        .env("BOOKSHELF_POSTGRES_NAME", name)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/postgres.sh {command}: {e}"));
    assert!(
        output.status.success(),
        "scripts/postgres.sh {command} failed ({})",
        output.status
    );
    output.stdout
}
