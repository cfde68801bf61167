//! The gateway: the bookshelf's one HTTP entry point.
//!
//! It routes each request by path prefix to a service, picks a healthy
//! instance of that service in turn, and forwards the request with an
//! `x-correlation-id` (the caller's, or a new one), which the books service
//! records in the events' metadata.
//!
//! ```text
//! cargo run --example last_read &        # books and views on port 8087
//! cargo run --example gateway            # port 8080, in-process discovery
//! curl -s localhost:8080/last-read
//!
//! cargo run --example gateway -- --consul http://127.0.0.1:8500
//! ```
//!
//! Discovery is Consul's when `--consul` is given, with its health checks and
//! watches. Otherwise it is in-process: the instances named by `--service
//! NAME=URL` (by default the embedded `last_read` on port 8087 for every
//! service), which the gateway checks itself on `GET /health` every second.
//!
//! Answers of its own: `GET /health`; the web console at `/console` (see
//! [`console`]); 404 for a path no route takes; 503 when
//! a service has no healthy instance; 502 when every instance tried refused
//! the connection or an upstream failed; 504 when one did not answer within
//! `--timeout-ms`; 413 for a body over `--max-body-bytes`, 408 for one that
//! does not arrive within `--timeout-ms`. All with a JSON `{"error": …}` body.

pub mod console;
pub mod fast;
pub mod proxy;

use crate::{api, docs};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bookshelf::{Balancer, Discovery, Health, InMemoryDiscovery, ServiceInstance};
use clap::Parser;

use proxy::{Gateway, Limits, Route};

/// The bookshelf's one HTTP entry point.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    addr: IpAddr,
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Find services in the Consul agent at this address, such as
    /// http://127.0.0.1:8500, and register the gateway there too.
    #[arg(long)]
    consul: Option<String>,
    /// Without --consul: an instance of a service, as NAME=URL; repeat for
    /// more. Default: books, last-read and authors all at
    /// http://127.0.0.1:8087, the embedded last_read.
    #[arg(long = "service", value_name = "NAME=URL", conflicts_with = "consul")]
    services: Vec<String>,
    /// A route, as PREFIX=SERVICE: paths under PREFIX go, unchanged, to
    /// SERVICE; repeat for more. The longest matching prefix wins.
    #[arg(
        long = "route",
        value_name = "PREFIX=SERVICE",
        default_values = ["/books=books", "/last-read=last-read", "/authors=authors"]
    )]
    routes: Vec<String>,
    /// Only forward to instances with all of these tags, comma-separated.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// How long an upstream has to start answering, and the longest pause
    /// within its body, in milliseconds; also how long a request body may take.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// The largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// How long an instance that refused a connection is left out, in
    /// milliseconds (until discovery lists it again).
    #[arg(long, default_value_t = 5_000)]
    eject_ms: u64,
    /// The instance id to register under in Consul (default: gateway-PORT).
    #[arg(long)]
    id: Option<String>,
    /// Threads that serve requests: 1 runs everything on one thread, as
    /// one nginx worker does (no hand-offs between threads); 0, the
    /// default, one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let _logging = api::init_tracing();
    let route_pairs = parse_pairs(&args.routes, "--route", "PREFIX=SERVICE")?;
    if let Some((prefix, _)) = route_pairs.iter().find(|(prefix, _)| !prefix.starts_with('/')) {
        return Err(format!("--route prefix {prefix:?} must start with /").into());
    }

    let (discovery, kind): (Arc<dyn Discovery>, String) = match &args.consul {
        Some(consul) => {
            let config = bookshelf_consul::ConsulConfig::new(consul.as_str());
            (
                Arc::new(bookshelf_consul::ConsulDiscovery::new(config)?),
                format!("Consul at {consul}"),
            )
        }
        None => {
            let seeds = if args.services.is_empty() {
                ["books", "last-read", "authors"]
                    .map(|name| format!("{name}=http://127.0.0.1:8087"))
                    .to_vec()
            } else {
                args.services.clone()
            };
            let discovery = InMemoryDiscovery::new();
            let instances = seed(&discovery, &parse_pairs(&seeds, "--service", "NAME=URL")?).await?;
            tokio::spawn(check_health(discovery.clone(), instances, Duration::from_secs(1)));
            (Arc::new(discovery), "in-process discovery".to_owned())
        }
    };

    // One balancer per service, shared by the routes to it.
    let mut balancers: BTreeMap<&str, Balancer> = BTreeMap::new();
    let routes: Vec<Route> = route_pairs
        .iter()
        .map(|(prefix, service)| {
            let balancer = balancers
                .entry(service.as_str())
                .or_insert_with(|| Balancer::follow(discovery.clone(), service, &args.tags));
            Route::new(prefix, balancer.clone())
        })
        .collect();
    let limits = Limits {
        timeout: Duration::from_millis(args.timeout_ms),
        max_body: args.max_body_bytes,
        eject_for: Duration::from_millis(args.eject_ms),
    };
    let gateway = Arc::new(Gateway::new(routes, limits));
    if !gateway.ready(Duration::from_secs(10)).await {
        tracing::warn!("discovery has not answered for every service yet; starting anyway");
    }

    let combined = Arc::clone(&gateway);
    let forwarding = Arc::clone(&gateway);
    let app = docs::Api::new()
        .route(proxy::__path_health, proxy::health)
        .route(api::__path_metrics, api::metrics)
        .with_state(Arc::clone(&gateway))
        // The answers the gateway adds to its services' operations use it.
        .schema::<docs::ErrorBody>()
        .serve_docs_from("bookshelf gateway API", move |own| {
            let gateway = Arc::clone(&combined);
            async move { gateway.combined_document(own).await }
        })
        .merge(console::routes(Arc::clone(&gateway)))
        .fallback(move |peer, request| proxy::forward(axum::extract::State(Arc::clone(&forwarding)), peer, request));
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.addr, args.port)).await?;
    let local = listener.local_addr()?;
    let registration = api::Registration::register(
        args.consul.as_deref().map(bookshelf_consul::ConsulConfig::new),
        "gateway",
        args.id.as_deref(),
        &[],
        local,
        None,
    )
    .await?;
    println!("gateway is listening on http://{local}/ ({kind})");
    for (prefix, service) in &route_pairs {
        println!("  {prefix:<12} -> {service}");
    }
    for (service, instances) in gateway.services() {
        println!("  {service}: {instances} healthy instance(s) now");
    }

    // Requests the fast path takes are relayed there; the rest, and the
    // gateway's own paths, are served by `app`.
    let app = app.layer(axum::middleware::from_fn(proxy::require_host));
    fast::serve(listener, api::traced(app), Arc::clone(&gateway), api::shutdown_signal()).await;
    api::finish(registration).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// `KEY=VALUE` flags as pairs, or an error naming the flag.
fn parse_pairs(values: &[String], flag: &str, form: &str) -> Result<Vec<(String, String)>, String> {
    values
        .iter()
        .map(|value| match value.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(format!("{flag} {value:?} is not of the form {form}")),
        })
        .collect()
}

/// An instance seeded into in-process discovery, and where to check it.
struct Seeded {
    id: String,
    health_url: String,
}

/// Registers each `NAME=URL` (`http://host:port`) in `discovery`.
async fn seed(discovery: &InMemoryDiscovery, services: &[(String, String)]) -> Result<Vec<Seeded>, String> {
    let mut seeded = Vec::new();
    for (name, url) in services {
        let authority = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.contains('/'))
            .ok_or_else(|| format!("--service {name}={url}: the URL must be http://HOST:PORT"))?;
        let (host, port) = authority
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("--service {name}={url}: the URL must name a port"))?;
        let id = format!("{name}-{port}");
        let instance = ServiceInstance::new(&id, name, host, port);
        discovery.register(&instance).await.map_err(|e| e.to_string())?;
        seeded.push(Seeded {
            health_url: format!("http://{}/health", instance.authority()),
            id,
        });
    }
    Ok(seeded)
}

/// Checks each seeded instance's `GET /health` every `interval` (2xx within
/// a second is passing), as Consul's HTTP checks would, and tells discovery.
async fn check_health(discovery: InMemoryDiscovery, instances: Vec<Seeded>, interval: Duration) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(1)).build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the health-check client; instances stay as registered");
            return;
        }
    };
    let mut health: Vec<Option<Health>> = vec![None; instances.len()];
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for (instance, last) in instances.iter().zip(health.iter_mut()) {
            let now = match client.get(&instance.health_url).send().await {
                Ok(response) if response.status().is_success() => Health::Passing,
                _ => Health::Critical,
            };
            if *last != Some(now) {
                tracing::info!(instance = %instance.id, health = ?now, "health check");
                discovery.set_health(&instance.id, now);
                *last = Some(now);
            }
        }
    }
}
