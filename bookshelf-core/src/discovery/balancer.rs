//! Spreading calls over the healthy instances of a service, following
//! discovery as instances come and go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Discovery, ServiceInstance};
use crate::retry::RetryPolicy;

/// The healthy instances of one service, kept up to date from a
/// [`Discovery::watch`], handed out in turn.
///
/// * [`pick`](Self::pick) goes round the instances, skipping any that were
///   [`eject`](Self::eject)ed recently (a caller saw it refuse a connection,
///   say) until discovery catches up.
/// * When the watch fails to start or ends, the balancer keeps the last list
///   it had and watches again, backing off from 100 ms to 5 s.
///
/// Cloning gives another handle to the same balancer; the watch stops when
/// the last handle is dropped.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use bookshelf_core::discovery::Balancer;
/// use bookshelf_core::{Discovery, InMemoryDiscovery, ServiceInstance};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let discovery = Arc::new(InMemoryDiscovery::new());
/// discovery.register(&ServiceInstance::new("books-1", "books", "127.0.0.1", 8001)).await?;
/// discovery.register(&ServiceInstance::new("books-2", "books", "127.0.0.1", 8002)).await?;
///
/// let books = Balancer::follow(discovery.clone(), "books", &[]);
/// assert!(books.ready(Duration::from_secs(1)).await);
/// let first = books.pick().map(|i| i.port);
/// let second = books.pick().map(|i| i.port);
/// assert_ne!(first, second, "round robin");
///
/// books.eject("books-1", Duration::from_secs(5)); // it refused a connection
/// assert_eq!(books.pick().map(|i| i.id.clone()), Some("books-2".to_owned()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    instances: watch::Sender<Option<Arc<[ServiceInstance]>>>,
    next: AtomicUsize,
    ejected: Mutex<HashMap<String, Instant>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.shared.name)
            .field("instances", &self.instances().len())
            .finish()
    }
}

impl Balancer {
    /// Follows the healthy instances of `name` that carry all of `tags`.
    /// Must be called within a Tokio runtime: the watch runs as a task.
    pub fn follow<D: Discovery + ?Sized>(discovery: Arc<D>, name: &str, tags: &[String]) -> Balancer {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            instances: watch::Sender::new(None),
            next: AtomicUsize::new(0),
            ejected: Mutex::default(),
            task: Mutex::default(),
        });
        // The task holds only a weak reference, so that dropping the last
        // handle ends it.
        let weak = Arc::downgrade(&shared);
        let (name, tags) = (name.to_owned(), tags.to_vec());
        let task = tokio::spawn(async move {
            let retry = RetryPolicy::forever(Duration::from_millis(100), Duration::from_secs(5));
            let mut delays = retry.delays();
            loop {
                match discovery.watch(&name, &tags).await {
                    Ok(mut watch) => {
                        while let Some(list) = watch.next().await {
                            let Some(shared) = weak.upgrade() else { return };
                            shared.update(list);
                            delays = retry.delays();
                        }
                        tracing::warn!(service = %name, "discovery watch ended; watching again");
                    }
                    Err(error) => tracing::warn!(service = %name, %error, "cannot watch discovery; retrying"),
                }
                if weak.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(delays.next().unwrap_or(retry.max_backoff)).await;
            }
        });
        *shared.lock_task() = Some(task);
        Balancer { shared }
    }

    /// The service this balancer follows.
    pub fn service(&self) -> &str {
        &self.shared.name
    }

    /// Waits until discovery has answered once, up to `timeout`; returns
    /// whether it has. The answer may be an empty list.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut updates = self.shared.instances.subscribe();
        tokio::time::timeout(timeout, updates.wait_for(Option::is_some))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// The healthy instances as discovery last listed them, ejected ones
    /// included.
    pub fn instances(&self) -> Arc<[ServiceInstance]> {
        self.shared.instances.borrow().clone().unwrap_or_else(|| Arc::from([]))
    }

    /// The next instance in turn that is not ejected, or `None` when there is
    /// none. Made for every call a gateway forwards, so it copies nothing:
    /// the [`Picked`] shares the balancer's list.
    pub fn pick(&self) -> Option<Picked> {
        self.pick_other_than::<&str>(&[])
    }

    /// As [`pick`](Self::pick), passing over the instances named in `tried`
    /// as well: what a caller asks for its next try at a request that the
    /// instances it tried turned down.
    pub fn pick_other_than<T: AsRef<str>>(&self, tried: &[T]) -> Option<Picked> {
        let instances = self.instances();
        if instances.is_empty() {
            return None;
        }
        let start = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let mut ejected = self.shared.lock_ejected();
        if !ejected.is_empty() {
            let now = Instant::now();
            ejected.retain(|_, until| *until > now);
        }
        let at = (0..instances.len())
            .map(|offset| (start + offset) % instances.len())
            .find(|&at| {
                let id = &instances[at].id;
                !ejected.contains_key(id) && !tried.iter().any(|t| t.as_ref() == id)
            })?;
        drop(ejected);
        Some(Picked { instances, at })
    }

    /// Leaves instance `id` out of [`pick`](Self::pick) for `period`, or
    /// until discovery lists it again after a change.
    pub fn eject(&self, id: &str, period: Duration) {
        tracing::debug!(service = %self.shared.name, instance = %id, ?period, "instance ejected");
        self.shared
            .lock_ejected()
            .insert(id.to_owned(), Instant::now() + period);
    }
}

/// An instance [`Balancer::pick`] chose. It reads as the
/// [`ServiceInstance`] (it dereferences to one) and shares the balancer's
/// list instead of copying the instance out of it; cloning it is cheap.
#[derive(Clone)]
pub struct Picked {
    instances: Arc<[ServiceInstance]>,
    at: usize,
}

impl std::ops::Deref for Picked {
    type Target = ServiceInstance;
    fn deref(&self) -> &ServiceInstance {
        &self.instances[self.at]
    }
}

impl std::fmt::Debug for Picked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for Picked {
    fn eq(&self, other: &Picked) -> bool {
        **self == **other
    }
}

impl Eq for Picked {}

impl Shared {
    fn update(&self, list: Vec<ServiceInstance>) {
        tracing::info!(
            service = %self.name,
            instances = ?list.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            "instances changed"
        );
        // A new list is discovery's latest word: an instance listed again
        // (restarted, say) gets a fresh chance.
        self.lock_ejected().clear();
        crate::telemetry::instances(&self.name, list.len());
        self.instances.send_replace(Some(list.into()));
    }

    fn lock_ejected(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        // Each change is one insert, retain or clear: a panic cannot leave it half-done.
        self.ejected.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_task(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use async_trait::async_trait;

    use super::*;
    use crate::{DiscoveryError, Health, InMemoryDiscovery, Watch};

    fn books(n: u16) -> ServiceInstance {
        ServiceInstance::new(format!("books-{n}"), "books", "127.0.0.1", 8000 + n)
    }

    /// Waits until the balancer lists `n` instances.
    async fn until_listed(balancer: &Balancer, n: usize) {
        let mut updates = balancer.shared.instances.subscribe();
        tokio::time::timeout(
            Duration::from_secs(5),
            updates.wait_for(|list| list.as_ref().is_some_and(|l| l.len() == n)),
        )
        .await
        .expect("the balancer follows the watch")
        .expect("the balancer is alive");
    }

    #[tokio::test]
    async fn goes_round_the_instances_and_follows_changes() {
        let discovery = Arc::new(InMemoryDiscovery::new());
        let balancer = Balancer::follow(discovery.clone(), "books", &[]);
        assert!(balancer.ready(Duration::from_secs(5)).await);
        assert_eq!(balancer.pick(), None, "no instance yet");

        for n in 1..=3 {
            discovery.register(&books(n)).await.unwrap();
        }
        until_listed(&balancer, 3).await;
        let mut seen: Vec<u16> = (0..6).filter_map(|_| balancer.pick()).map(|i| i.port).collect();
        assert_eq!(seen[..3], seen[3..], "the same turn twice");
        seen.sort_unstable();
        assert_eq!(seen, [8001, 8001, 8002, 8002, 8003, 8003]);

        // A picked instance is the one listed, and stays readable (it holds
        // the list it came from) after the list changes.
        let held: Vec<Picked> = (0..3).filter_map(|_| balancer.pick()).collect();
        let listed: Vec<ServiceInstance> = balancer.instances().to_vec();
        assert!(held.iter().all(|picked| listed.contains(&**picked)));
        discovery.set_health("books-2", Health::Critical);
        until_listed(&balancer, 2).await;
        assert!((0..10).filter_map(|_| balancer.pick()).all(|i| i.id != "books-2"));
        let mut ids: Vec<&str> = held.iter().map(|picked| picked.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["books-1", "books-2", "books-3"]);

        discovery.deregister("books-1").await.unwrap();
        discovery.deregister("books-3").await.unwrap();
        until_listed(&balancer, 0).await;
        assert_eq!(balancer.pick(), None);
    }

    #[tokio::test]
    async fn ejected_instances_are_skipped_until_their_time_is_up() {
        let discovery = Arc::new(InMemoryDiscovery::new());
        discovery.register(&books(1)).await.unwrap();
        discovery.register(&books(2)).await.unwrap();
        let balancer = Balancer::follow(discovery.clone(), "books", &[]);
        until_listed(&balancer, 2).await;

        balancer.eject("books-1", Duration::from_millis(200));
        assert!((0..6).filter_map(|_| balancer.pick()).all(|i| i.id == "books-2"));
        balancer.eject("books-2", Duration::from_millis(200));
        assert_eq!(balancer.pick(), None, "every instance is ejected");

        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut ids: Vec<String> = (0..2).filter_map(|_| balancer.pick()).map(|i| i.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["books-1", "books-2"], "back in turn once their time is up");

        // A change in discovery clears ejections: its list is the latest word.
        balancer.eject("books-1", Duration::from_secs(60));
        discovery.register(&books(3)).await.unwrap();
        until_listed(&balancer, 3).await;
        assert!((0..3).filter_map(|_| balancer.pick()).any(|i| i.id == "books-1"));
    }

    #[tokio::test]
    async fn a_next_try_passes_over_the_instances_already_tried() {
        let discovery = Arc::new(InMemoryDiscovery::new());
        for n in 1..=3 {
            discovery.register(&books(n)).await.unwrap();
        }
        let balancer = Balancer::follow(discovery.clone(), "books", &[]);
        until_listed(&balancer, 3).await;
        for _ in 0..6 {
            let first = balancer.pick().expect("an instance");
            let second = balancer.pick_other_than(&[&first.id]).expect("another instance");
            let third = balancer
                .pick_other_than(&[&first.id, &second.id])
                .expect("the last instance");
            let mut ids = [first.id.as_str(), second.id.as_str(), third.id.as_str()];
            ids.sort_unstable();
            assert_eq!(ids, ["books-1", "books-2", "books-3"], "each tried once");
            assert_eq!(balancer.pick_other_than(&[&first.id, &second.id, &third.id]), None);
        }
        balancer.eject("books-2", Duration::from_secs(60));
        assert_eq!(
            balancer.pick_other_than(&["books-1"]).map(|i| i.id.clone()),
            Some("books-3".to_owned()),
            "neither tried nor ejected"
        );
    }

    /// Discovery whose watches fail to start twice, then end after one list.
    struct Flaky {
        inner: InMemoryDiscovery,
        watches: AtomicU32,
    }

    #[async_trait]
    impl Discovery for Flaky {
        async fn register(&self, instance: &ServiceInstance) -> Result<(), DiscoveryError> {
            self.inner.register(instance).await
        }
        async fn deregister(&self, id: &str) -> Result<(), DiscoveryError> {
            self.inner.deregister(id).await
        }
        async fn resolve(&self, name: &str, tags: &[String]) -> Result<Vec<ServiceInstance>, DiscoveryError> {
            self.inner.resolve(name, tags).await
        }
        async fn watch(&self, name: &str, tags: &[String]) -> Result<Watch, DiscoveryError> {
            if self.watches.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(DiscoveryError::Invalid("not yet".into()));
            }
            let list = self.inner.resolve(name, tags).await?;
            let (send, receive) = tokio::sync::mpsc::channel(1);
            let task = tokio::spawn(async move {
                let _ = send.send(list).await;
            });
            Ok(Watch::new(receive, task))
        }
    }

    #[tokio::test]
    async fn watches_again_when_the_watch_fails_or_ends_and_keeps_the_last_list() {
        let flaky = Arc::new(Flaky {
            inner: InMemoryDiscovery::new(),
            watches: AtomicU32::new(0),
        });
        flaky.register(&books(1)).await.unwrap();
        let balancer = Balancer::follow(flaky.clone(), "books", &[]);
        until_listed(&balancer, 1).await;
        assert!(flaky.watches.load(Ordering::SeqCst) >= 3, "two failures, then a watch");

        flaky.register(&books(2)).await.unwrap();
        until_listed(&balancer, 2).await; // from a later watch, after the first ended
        assert_eq!(balancer.pick().map(|i| i.port), Some(8001));
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_watch() {
        let discovery = Arc::new(InMemoryDiscovery::new());
        let balancer = Balancer::follow(discovery.clone(), "books", &[]);
        assert!(balancer.ready(Duration::from_secs(5)).await);
        let copy = balancer.clone();
        drop(balancer);
        assert_eq!(copy.service(), "books", "a clone keeps it alive");
        let weak = Arc::downgrade(&copy.shared);
        drop(copy);
        assert!(weak.upgrade().is_none());
        // The aborted task lets go of discovery once the runtime drops it.
        tokio::time::timeout(Duration::from_secs(5), async {
            while Arc::strong_count(&discovery) > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the watch task ended and let go of discovery");
    }
}
