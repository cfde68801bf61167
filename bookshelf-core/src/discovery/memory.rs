//! Discovery inside one process: the embedded default, and a stand-in for
//! tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::{Discovery, DiscoveryError, ServiceInstance, Watch};

/// The health of a registered instance. Only passing instances resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Serving.
    Passing,
    /// Serving, with a problem; not resolved (as with Consul's `passing` filter).
    Warning,
    /// Not serving.
    Critical,
}

/// Service discovery within one process. Registered instances start passing;
/// [`set_health`](Self::set_health) changes that. Cloning gives another handle
/// to the same registry.
#[derive(Clone)]
pub struct InMemoryDiscovery {
    shared: Arc<Shared>,
}

struct Shared {
    instances: Mutex<BTreeMap<String, (ServiceInstance, Health)>>,
    changed: watch::Sender<()>,
}

impl Default for InMemoryDiscovery {
    fn default() -> Self {
        InMemoryDiscovery {
            shared: Arc::new(Shared {
                instances: Mutex::default(),
                changed: watch::Sender::new(()),
            }),
        }
    }
}

impl std::fmt::Debug for InMemoryDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryDiscovery")
            .field("instances", &self.shared.lock().len())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (ServiceInstance, Health)>> {
        // Every change is one insert or remove: a panic cannot leave it half-done.
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn healthy(&self, name: &str, tags: &[String]) -> Vec<ServiceInstance> {
        self.lock()
            .values()
            .filter(|(instance, health)| *health == Health::Passing && instance.name == name && instance.has_tags(tags))
            .map(|(instance, _)| instance.clone())
            .collect()
    }
}

impl InMemoryDiscovery {
    /// An empty registry.
    pub fn new() -> Self {
        InMemoryDiscovery::default()
    }

    /// Sets a registered instance's health; returns whether it was registered.
    pub fn set_health(&self, instance_id: &str, health: Health) -> bool {
        let found = match self.shared.lock().get_mut(instance_id) {
            Some(entry) => {
                entry.1 = health;
                true
            }
            None => false,
        };
        if found {
            self.shared.changed.send_modify(|_| {});
        }
        found
    }
}

#[async_trait]
impl Discovery for InMemoryDiscovery {
    async fn register(&self, instance: &ServiceInstance) -> Result<(), DiscoveryError> {
        if instance.name.is_empty() {
            return Err(DiscoveryError::Invalid("missing service name".into()));
        }
        let id = if instance.id.is_empty() {
            instance.name.clone()
        } else {
            instance.id.clone()
        };
        let instance = ServiceInstance {
            id: id.clone(),
            ..instance.clone()
        };
        self.shared.lock().insert(id, (instance, Health::Passing));
        self.shared.changed.send_modify(|_| {});
        Ok(())
    }

    async fn deregister(&self, instance_id: &str) -> Result<(), DiscoveryError> {
        if self.shared.lock().remove(instance_id).is_some() {
            self.shared.changed.send_modify(|_| {});
        }
        Ok(())
    }

    async fn resolve(&self, name: &str, tags: &[String]) -> Result<Vec<ServiceInstance>, DiscoveryError> {
        Ok(self.shared.healthy(name, tags))
    }

    async fn watch(&self, name: &str, tags: &[String]) -> Result<Watch, DiscoveryError> {
        let (updates, receiver) = mpsc::channel(16);
        let shared = Arc::clone(&self.shared);
        let mut changed = shared.changed.subscribe();
        let (name, tags) = (name.to_owned(), tags.to_vec());
        let task = tokio::spawn(async move {
            let mut last = None;
            loop {
                changed.borrow_and_update();
                let now = shared.healthy(&name, &tags);
                if last.as_ref() != Some(&now) {
                    if updates.send(now.clone()).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Watch::new(receiver, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolve_filters_by_name_all_tags_and_health() {
        let discovery = InMemoryDiscovery::new();
        let a = ServiceInstance::new("a", "books", "127.0.0.1", 1).with_tags(["v1", "eu"]);
        let b = ServiceInstance::new("b", "books", "127.0.0.1", 2).with_tags(["v1"]);
        let c = ServiceInstance::new("c", "gateway", "127.0.0.1", 3).with_tags(["v1"]);
        for instance in [&a, &b, &c] {
            discovery.register(instance).await.unwrap();
        }
        assert_eq!(
            discovery.resolve("books", &[]).await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(
            discovery.resolve("books", &["V1".into(), "eu".into()]).await.unwrap(),
            vec![a.clone()]
        );
        assert!(discovery.set_health("a", Health::Warning));
        assert_eq!(discovery.resolve("books", &[]).await.unwrap(), vec![b.clone()]);
        assert!(!discovery.set_health("nope", Health::Passing));
    }

    #[tokio::test]
    async fn watch_sees_register_health_change_and_deregister_in_order() {
        let discovery = InMemoryDiscovery::new();
        let mut watch = discovery.watch("books", &[]).await.unwrap();
        assert_eq!(watch.next().await, Some(vec![]));
        let a = ServiceInstance::new("a", "books", "127.0.0.1", 1);
        discovery.register(&a).await.unwrap();
        assert_eq!(watch.next().await, Some(vec![a.clone()]));
        // A change to another service is not a change of this list.
        discovery
            .register(&ServiceInstance::new("g", "gateway", "127.0.0.1", 9))
            .await
            .unwrap();
        discovery.set_health("a", Health::Critical);
        assert_eq!(watch.next().await, Some(vec![]));
        discovery.set_health("a", Health::Passing);
        assert_eq!(watch.next().await, Some(vec![a.clone()]));
        discovery.deregister("a").await.unwrap();
        assert_eq!(watch.next().await, Some(vec![]));
        discovery.deregister("a").await.unwrap();
    }

    #[tokio::test]
    async fn registering_without_a_name_is_refused() {
        let discovery = InMemoryDiscovery::new();
        let err = discovery.register(&ServiceInstance::default()).await.unwrap_err();
        assert!(matches!(err, DiscoveryError::Invalid(_)));
    }
}
