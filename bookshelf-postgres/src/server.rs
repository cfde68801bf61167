//! The server a store talks to: its connection settings, its pool, and
//! errors that name it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bookshelf_core::StoreError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// How long an append may keep the head locked, or any connection of a
/// store sit idle inside a transaction, before the server ends it: the
/// bound on how long a stalled or abandoned writer holds up the others.
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);

/// How long a request waits for a connection (or to make one) before it
/// fails: a server that is down is an error within this, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A PostgreSQL server and database, as a URL names it.
#[derive(Clone)]
pub(crate) struct Server {
    config: tokio_postgres::Config,
    /// The URL without its password, for messages.
    name: String,
    /// The schema the store's tables are in, when not the default.
    schema: Option<String>,
    /// The channel appends notify and subscriptions listen on.
    channel: String,
}

impl Server {
    /// The server of `url`, with the store's tables in `schema` (made when
    /// missing) rather than the database's default.
    pub(crate) fn parse(url: &str, schema: Option<&str>) -> Result<Server, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Backend(format!("{:?} is not a PostgreSQL URL or connection string: {e}", redact(url)).into())
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if let Some(schema) = schema {
            let valid = schema.len() <= 40
                && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(StoreError::Backend(
                    format!("{schema:?} is not a schema name this store takes (a-z, 0-9 and _, at most 40)").into(),
                ));
            }
        }
        let idle = IDLE_IN_TRANSACTION.as_millis();
        let mut ours = format!("-c idle_in_transaction_session_timeout={idle}");
        if let Some(schema) = schema {
            ours.push_str(&format!(" -c search_path={schema}"));
        }
        let options = match config.get_options() {
            Some(given) => format!("{given} {ours}"),
            None => ours,
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("bookshelf");
        }
        let name = match schema {
            Some(schema) => format!("{} (schema {schema})", describe_config(&config)),
            None => describe_config(&config),
        };
        Ok(Server {
            name,
            config,
            channel: match schema {
                Some(schema) => format!("bookshelf_events_{schema}"),
                None => "bookshelf_events".to_owned(),
            },
            schema: schema.map(str::to_owned),
        })
    }

    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub(crate) fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// A pool of up to `size` connections.
    pub(crate) fn pool(&self, size: usize) -> Result<Pool, StoreError> {
        let manager = Manager::from_config(
            self.config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| self.refused(format!("cannot make a connection pool: {e}")))
    }

    /// A connection of the pool, or an error naming the server.
    pub(crate) async fn get(&self, pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
        self.connection(pool).await.map_err(|f| f.error)
    }

    /// A connection of the pool, or a failure to retry.
    pub(crate) async fn connection(&self, pool: &Pool) -> Result<deadpool_postgres::Object, Failed> {
        pool.get().await.map_err(|e| Failed {
            error: match e {
                deadpool_postgres::PoolError::Backend(e) => self.error("cannot connect", e),
                other => self.refused(format!("cannot connect: {other}")),
            },
            transient: true,
        })
    }

    /// A failure of the server, naming it, and whether to try again.
    pub(crate) fn failed(&self, what: &str, error: tokio_postgres::Error) -> Failed {
        Failed {
            transient: transient(&error),
            error: self.error(what, error),
        }
    }

    /// A failure of the server, naming it.
    pub(crate) fn error(&self, what: &str, error: tokio_postgres::Error) -> StoreError {
        StoreError::Backend(format!("{self}: {what}: {}", explain(&error)).into())
    }

    /// A refusal of ours about the server, naming it.
    pub(crate) fn refused(&self, why: String) -> StoreError {
        StoreError::Backend(format!("{self}: {why}").into())
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A failure, and whether it may pass: the server down, restarting or
/// unreachable, rather than refusing what was asked.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: StoreError,
    pub(crate) transient: bool,
}

impl From<Failed> for StoreError {
    fn from(failed: Failed) -> StoreError {
        failed.error
    }
}

/// Whether `error` says the server is away (the connection failed or was
/// closed, the server is shutting down or starting) rather than that it
/// refused the request.
pub(crate) fn transient(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => lost_connection(error),
        Some(code) => {
            let code = code.code();
            // Class 08: connection exceptions; 57P0x: shutdown, crash,
            // cannot connect now; 53300: too many connections.
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }
    }
}

/// Whether `error` is the connection failing (closed, or an I/O error on
/// it), rather than something refused before or after the server had it.
pub(crate) fn lost_connection(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Runs `attempt` until it succeeds, fails for good, or `patience` has
/// passed: a failure that may pass (see [`transient`]) is tried again
/// after a backoff (100 ms doubling to 2 s), and logged once.
pub(crate) async fn retrying<T, F, Fut>(what: &str, patience: Duration, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failed>>,
{
    let started = tokio::time::Instant::now();
    let mut delays = bookshelf_core::RetryPolicy::forever(Duration::from_millis(100), Duration::from_secs(2)).delays();
    let mut warned = false;
    loop {
        match attempt().await {
            Ok(value) => {
                if warned {
                    tracing::info!("{what}: the database is back");
                }
                return Ok(value);
            }
            Err(failed) if failed.transient && started.elapsed() < patience => {
                if !warned {
                    tracing::warn!(error = %failed.error, "{what}: the database is away; trying again");
                    warned = true;
                }
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
            }
            Err(failed) => return Err(failed.error),
        }
    }
}

/// What went wrong, in the server's words when it said something.
pub(crate) fn explain(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `postgres://user@host:port/db`, without a password.
fn describe_config(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// A URL with its password, if any, hidden.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}:***{}", &url[..scheme + 3 + colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_named_without_its_password() {
        let server = Server::parse("postgres://me:secret@db.example:6543/books", None).expect("a valid URL");
        assert_eq!(server.to_string(), "postgres://me@db.example:6543/books");
        let wrong = Server::parse("postgres://me:secret@db.example:notaport/books", None)
            .err()
            .expect("a bad port");
        assert!(!wrong.to_string().contains("secret"), "{wrong}");
        assert!(wrong.to_string().contains("***"), "{wrong}");
        assert!(Server::parse("postgres://db/books", Some("Robert'); DROP")).is_err());
        let apart = Server::parse("postgres://me@db/books", Some("changes")).expect("a schema name");
        assert_eq!(apart.channel(), "bookshelf_events_changes");
    }
}
