//! Running a service: the flags every service shares, registration in
//! discovery once it listens, serving until a signal, deregistration.

use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;

use super::*;

/// The flags the bookshelf services share; each adds `--port` and `--name`
/// with its own defaults.
#[derive(Debug, clap::Args)]
pub struct ServiceFlags {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub addr: std::net::IpAddr,
    /// Kafka bootstrap servers: run on Kafka instead of the in-memory store.
    #[arg(long)]
    pub broker: Option<String>,
    /// The Kafka topic of the book events.
    #[arg(long, default_value = "books")]
    pub topic: String,
    /// The Consul agent to register with, such as http://127.0.0.1:8500 or
    /// 127.0.0.1:8500; taken from CONSUL_HTTP_ADDR when not given, as
    /// Consul's own tools do.
    #[arg(long, env = "CONSUL_HTTP_ADDR")]
    pub consul: Option<String>,
    /// The instance id to register under (default: NAME-PORT).
    #[arg(long)]
    pub id: Option<String>,
    /// Tags to register with: `--tags a b`, `--tags a,b`, or `--tags a --tags b`.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub tags: Vec<String>,
    /// The TTL of the instance's Consul check, in milliseconds: how long a
    /// stopped or cut-off instance stays listed as healthy.
    #[arg(long, default_value_t = 10_000)]
    pub check_ttl_ms: u64,
    /// Without `--broker`: keep events and views in memory only (lost when
    /// the process stops) instead of in the data directory.
    #[arg(long)]
    pub in_memory: bool,
    /// Without `--broker`: keep events and views in this PostgreSQL
    /// database (a `postgres://` URL) instead of the data directory; taken
    /// from DATABASE_URL when not given, as the ecosystem's tools do.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub postgres: Option<String>,
}

/// Where a service keeps its events, as its flags choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend<'a> {
    /// `--broker`: on Kafka.
    Kafka(&'a str),
    /// `--in-memory`: nothing kept.
    InMemory,
    /// `--postgres URL` or `DATABASE_URL`: in PostgreSQL.
    Postgres(&'a str),
    /// None of those: the embedded default, SQLite files in the data directory.
    Embedded,
}

/// A store that can keep views (their state and checkpoint) beside its
/// events, as the embedded and PostgreSQL stores do; the in-memory store
/// keeps none.
pub trait KeepsViews {
    /// Where view `name` is saved, if the store keeps views.
    fn saved_view(&self, name: &str) -> Option<Box<dyn bookshelf::ViewStore>>;

    /// Where runners on the store keep their dead letters, if it keeps
    /// them (else in memory, the runner's default).
    fn dead_letters(&self) -> Option<std::sync::Arc<dyn bookshelf::DeadLetters>> {
        None
    }
}

impl KeepsViews for bookshelf::InMemoryStore {
    fn saved_view(&self, _: &str) -> Option<Box<dyn bookshelf::ViewStore>> {
        None
    }
}

impl KeepsViews for bookshelf::sqlite::SqliteStore {
    fn saved_view(&self, name: &str) -> Option<Box<dyn bookshelf::ViewStore>> {
        Some(Box::new(self.view_store(name)))
    }

    fn dead_letters(&self) -> Option<std::sync::Arc<dyn bookshelf::DeadLetters>> {
        Some(std::sync::Arc::new(bookshelf::sqlite::SqliteStore::dead_letters(self)))
    }
}

impl KeepsViews for bookshelf::postgres::PostgresStore {
    fn saved_view(&self, name: &str) -> Option<Box<dyn bookshelf::ViewStore>> {
        Some(Box::new(self.view_store(name)))
    }

    fn dead_letters(&self) -> Option<std::sync::Arc<dyn bookshelf::DeadLetters>> {
        Some(std::sync::Arc::new(bookshelf::postgres::PostgresStore::dead_letters(
            self,
        )))
    }
}

impl ServiceFlags {
    /// The backend the flags choose: `--broker`, then `--in-memory`, then
    /// `--postgres` (or `DATABASE_URL`), else the embedded default.
    pub fn backend(&self) -> Backend<'_> {
        match (&self.broker, self.in_memory, self.postgres_url()) {
            (Some(broker), _, _) => Backend::Kafka(broker),
            (None, true, _) => Backend::InMemory,
            (None, false, Some(url)) => Backend::Postgres(url),
            _ => Backend::Embedded,
        }
    }

    /// The PostgreSQL database `--postgres` or `DATABASE_URL` names, if
    /// any (an empty value names none).
    pub fn postgres_url(&self) -> Option<&str> {
        self.postgres.as_deref().filter(|url| !url.is_empty())
    }

    /// Listens on `--addr` and `port` (0 picks a free one).
    pub async fn listen(&self, port: u16) -> std::io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(std::net::SocketAddr::new(self.addr, port)).await
    }

    /// Registers as `name` at `local` when `--consul` is given.
    pub async fn register(
        &self,
        name: &str,
        local: std::net::SocketAddr,
    ) -> Result<Option<Registration>, bookshelf::DiscoveryError> {
        Registration::register(self.consul_config(), name, self.id.as_deref(), &self.tags, local, None).await
    }

    /// Registers as `name` at `local` when `--consul` is given, with a
    /// check that passes only while `checked`'s probe says so, and that
    /// records in `checked` when it passed.
    pub async fn register_checked(
        &self,
        name: &str,
        local: std::net::SocketAddr,
        checked: Checked,
    ) -> Result<Option<Registration>, bookshelf::DiscoveryError> {
        let (id, tags) = (self.id.as_deref(), &self.tags);
        Registration::register(self.consul_config(), name, id, tags, local, Some(checked)).await
    }

    /// The TTL of the instance's Consul check.
    pub fn check_ttl(&self) -> Duration {
        Duration::from_millis(self.check_ttl_ms.max(100))
    }

    /// How to reach Consul, when `--consul` is given.
    pub fn consul_config(&self) -> Option<bookshelf_consul::ConsulConfig> {
        let ttl = self.check_ttl();
        self.consul
            .as_deref()
            .map(|url| bookshelf_consul::ConsulConfig::new(url).check(bookshelf_consul::Check::Ttl { ttl }))
    }
}

/// What an instance's Consul check says beyond "the process is up".
pub struct Checked {
    /// Asked before each heartbeat: `Err` marks the check critical.
    pub healthy: bookshelf_consul::Health,
    /// Where the heartbeats record when the check last passed.
    pub passing: bookshelf_consul::Passing,
}

/// A service's registration in Consul, made once it listens.
pub struct Registration {
    discovery: bookshelf_consul::ConsulDiscovery,
    id: String,
}

impl Registration {
    /// Registers `name` (`id`, default `NAME-PORT`; `tags`) at `local` with
    /// the Consul agent `consul` describes, if one is given; its check
    /// as `checked` says, if given.
    pub async fn register(
        consul: Option<bookshelf_consul::ConsulConfig>,
        name: &str,
        id: Option<&str>,
        tags: &[String],
        local: std::net::SocketAddr,
        checked: Option<Checked>,
    ) -> Result<Option<Registration>, bookshelf::DiscoveryError> {
        use bookshelf::Discovery;
        let Some(consul) = consul else {
            return Ok(None);
        };
        let url = consul.base_url().to_owned();
        let mut discovery = bookshelf_consul::ConsulDiscovery::new(consul)?;
        if let Some(checked) = checked {
            discovery = discovery.with_health(checked.healthy).with_passing(checked.passing);
        }
        let id = id.map_or_else(|| format!("{name}-{}", local.port()), str::to_owned);
        let me = bookshelf::ServiceInstance::new(&id, name, local.ip().to_string(), local.port()).with_tags(tags);
        discovery.register(&me).await?;
        tracing::info!(%id, consul = %url, "registered");
        Ok(Some(Registration { discovery, id }))
    }

    /// Deregisters, on shutdown.
    pub async fn deregister(self) -> Result<(), bookshelf::DiscoveryError> {
        use bookshelf::Discovery;
        self.discovery.deregister(&self.id).await?;
        tracing::info!(id = %self.id, "deregistered");
        Ok(())
    }
}

/// Serves `app` until SIGINT or SIGTERM, lets requests in flight finish,
/// then deregisters.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    registration: Option<Registration>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Answers go out as soon as they are written, not held for more.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        traced(app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    finish(registration).await
}

/// `app` with a span for each request, its metrics (see
/// [`count_request`](super::count_request)), and server errors logged.
pub fn traced(app: Router) -> Router {
    // A 503 is an answer this service gives on purpose (not the owner, the
    // store unavailable; said with Retry-After and logged where it is
    // decided): not an error of the server. Other 5xx are.
    let on_failure = |class: tower_http::classify::ServerErrorsFailureClass, latency: Duration, _: &tracing::Span| {
        use tower_http::classify::ServerErrorsFailureClass::StatusCode as Status;
        match class {
            Status(StatusCode::SERVICE_UNAVAILABLE) => {}
            class => tracing::error!(%class, latency_ms = latency.as_millis(), "response failed"),
        }
    };
    app.layer(axum::middleware::from_fn(super::count_request))
        .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(on_failure))
}

/// After serving: deregisters, and sends the spans not exported yet.
pub async fn finish(registration: Option<Registration>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(registration) = registration {
        registration.deregister().await?;
    }
    finish_tracing();
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
