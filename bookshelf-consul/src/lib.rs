//! # bookshelf-consul: service discovery on Consul
//!
//! [`ConsulDiscovery`] implements Bookshelf's
//! [`Discovery`](bookshelf_core::Discovery) over a Consul agent's HTTP API:
//! register an instance once it is ready (with a TTL check this library
//! heartbeats, or an HTTP check), deregister it on shutdown, resolve passing
//! instances by name and tags, and watch them with blocking queries.
//!
//! ```
//! use bookshelf_consul::{ConsulConfig, ConsulDiscovery};
//! use bookshelf_core::{Discovery, ServiceInstance};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // Here the agent is the test suite's stand-in for Consul.
//! # let agent = bookshelf_testkit::consul::ConsulDouble::start().await?;
//! # let agent_url = agent.url();
//! // The agent's address, such as "http://127.0.0.1:8500" (or use
//! // ConsulConfig::from_env(), which reads CONSUL_HTTP_ADDR).
//! let discovery = ConsulDiscovery::new(ConsulConfig::new(agent_url))?;
//!
//! let me = ServiceInstance::new("last-read-1", "last-read", "127.0.0.1", 8087).with_tags(["v1"]);
//! discovery.register(&me).await?; // once the service listens
//!
//! // Registration reaches the catalog asynchronously: watch until it shows.
//! let mut watch = discovery.watch("last-read", &["v1".into()]).await?;
//! while watch.next().await != Some(vec![me.clone()]) {}
//!
//! discovery.deregister("last-read-1").await?; // on shutdown
//! # Ok(()) }
//! ```
//!
//! This crate's tests run against a stateful double of the Consul HTTP API
//! (in the workspace's unpublished `bookshelf-testkit`), and against a real
//! agent too when `CONSUL_HTTP_ADDR` names one.
//!
//! ## What to know about Consul
//!
//! * Registration is not visible at once: the agent syncs to the catalog
//!   asynchronously. Wait with a watch or a bounded poll, never a fixed sleep.
//! * `resolve` and `watch` return only instances whose every check passes
//!   (Consul's `?passing`): a `warning` instance is left out, unlike in
//!   Consul's DNS interface.
//! * A crashed process cannot deregister. Its TTL check turns critical when
//!   the heartbeats stop, which removes it from `resolve` at once, and Consul
//!   deregisters it after `DeregisterCriticalServiceAfter` (1 minute at
//!   least; the reaper runs every 30 s).
//! * Reads use Consul's default consistency, which may be briefly stale
//!   around leader elections.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod agent;
mod config;
mod discovery;

pub use config::{Check, ConsulConfig};
pub use discovery::{ConsulDiscovery, Health, Passing};
