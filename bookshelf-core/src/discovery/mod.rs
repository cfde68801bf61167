//! Service discovery: services register when ready and deregister on
//! shutdown; clients resolve healthy instances by name and tags, and watch for
//! changes.

mod balancer;
mod memory;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use balancer::{Balancer, Picked};
pub use memory::{Health, InMemoryDiscovery};

/// One running instance of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// Unique among all instances, such as `"last-read-1"`.
    pub id: String,
    /// The service's name, shared by its instances, such as `"last-read"`.
    pub name: String,
    /// Free labels to select instances by, such as `"v1"`.
    pub tags: Vec<String>,
    /// The host or IP address the instance listens on.
    pub address: String,
    /// The port it listens on.
    pub port: u16,
    /// Free key-value pairs.
    pub meta: BTreeMap<String, String>,
}

impl ServiceInstance {
    /// An instance with no tags or metadata.
    pub fn new(id: impl Into<String>, name: impl Into<String>, address: impl Into<String>, port: u16) -> Self {
        ServiceInstance {
            id: id.into(),
            name: name.into(),
            address: address.into(),
            port,
            ..ServiceInstance::default()
        }
    }

    /// The same instance with these tags.
    pub fn with_tags<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the instance carries every one of `tags`, compared without
    /// regard to ASCII case (as Consul does).
    pub fn has_tags(&self, tags: &[String]) -> bool {
        tags.iter()
            .all(|wanted| self.tags.iter().any(|tag| tag.eq_ignore_ascii_case(wanted)))
    }

    /// `address:port`, with IPv6 addresses in brackets.
    pub fn authority(&self) -> String {
        let bracketed = self.address.contains(':') && !self.address.starts_with('[');
        // Built by hand, not with `format!`: a gateway builds one per request.
        let mut authority = String::with_capacity(self.address.len() + 8);
        if bracketed {
            authority.push('[');
        }
        authority.push_str(&self.address);
        if bracketed {
            authority.push(']');
        }
        authority.push(':');
        authority.push_str(itoa::Buffer::new().format(self.port));
        authority
    }
}

/// Why a discovery call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The request was refused as invalid (an empty name, say).
    #[error("invalid discovery request: {0}")]
    Invalid(String),
    /// The discovery backend answered with an error status; `body` is its
    /// message as sent.
    #[error("discovery backend answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body, as sent.
        body: String,
    },
    /// The backend could not be reached or answered something unreadable.
    #[error("discovery backend unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A registry of service instances.
///
/// ```
/// use bookshelf_core::{Discovery, InMemoryDiscovery, ServiceInstance};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let discovery = InMemoryDiscovery::new();
/// let instance = ServiceInstance::new("last-read-1", "last-read", "127.0.0.1", 8087).with_tags(["v1"]);
/// discovery.register(&instance).await?;
///
/// let mut watch = discovery.watch("last-read", &[]).await?;
/// assert_eq!(watch.next().await, Some(vec![instance.clone()]));
///
/// assert_eq!(discovery.resolve("last-read", &["v1".into()]).await?, vec![instance]);
/// discovery.deregister("last-read-1").await?;
/// assert_eq!(watch.next().await, Some(vec![]));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// Registers (or replaces) an instance. Call it once the instance is
    /// ready to serve.
    ///
    /// # Errors
    /// Invalid instances and backend failures.
    async fn register(&self, instance: &ServiceInstance) -> Result<(), DiscoveryError>;

    /// Removes an instance. Removing an unknown instance succeeds: it is
    /// already gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn deregister(&self, instance_id: &str) -> Result<(), DiscoveryError>;

    /// The healthy instances of service `name` that carry all of `tags`.
    ///
    /// # Errors
    /// Backend failures.
    async fn resolve(&self, name: &str, tags: &[String]) -> Result<Vec<ServiceInstance>, DiscoveryError>;

    /// The healthy instances of `name` with all of `tags`, now and after each
    /// change. The first item is the current list; later items come only
    /// when the list really changed.
    ///
    /// # Errors
    /// Backend failures when starting the watch.
    async fn watch(&self, name: &str, tags: &[String]) -> Result<Watch, DiscoveryError>;
}

/// A stream of instance lists from [`Discovery::watch`]. Dropping it stops
/// the watch.
#[derive(Debug)]
pub struct Watch {
    updates: mpsc::Receiver<Vec<ServiceInstance>>,
    task: Option<JoinHandle<()>>,
}

impl Watch {
    /// A watch fed by `task` through `updates`; the task is aborted when the
    /// watch is dropped. For implementors of [`Discovery`].
    pub fn new(updates: mpsc::Receiver<Vec<ServiceInstance>>, task: JoinHandle<()>) -> Self {
        Watch {
            updates,
            task: Some(task),
        }
    }

    /// The next list, or `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Vec<ServiceInstance>> {
        self.updates.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServiceInstance;

    #[test]
    fn an_authority_is_the_address_and_port_with_ipv6_in_brackets() {
        let at = |address: &str, port| ServiceInstance::new("i", "s", address, port).authority();
        assert_eq!(at("127.0.0.1", 8080), "127.0.0.1:8080");
        assert_eq!(at("books.local", 0), "books.local:0");
        assert_eq!(at("::1", 65535), "[::1]:65535");
        assert_eq!(at("[::1]", 7), "[::1]:7");
    }
}
