//! [`Discovery`] on a Consul agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bookshelf_core::{Discovery, DiscoveryError, RetryPolicy, ServiceInstance, Watch};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::agent::{Agent, Heartbeat};
use crate::config::{Check, ConsulConfig};

/// Service discovery on a Consul agent's HTTP API.
///
/// * `register` registers the instance with its check (see [`Check`]) and,
///   for a TTL check, heartbeats it three times per TTL. When a heartbeat
///   finds the check gone (the agent restarted and forgot it), it registers
///   the instance again.
/// * `deregister` stops the heartbeats and deregisters; an instance the agent
///   does not know counts as already gone. Call it on shutdown: dropping a
///   `ConsulDiscovery` stops its heartbeats but deregisters nothing, as a
///   crash would; `DeregisterCriticalServiceAfter` then removes the instance.
/// * `resolve` asks for passing instances (`?passing`) carrying all the tags;
///   an instance registered without an address gets its node's.
/// * `watch` runs blocking queries: it resets its index when the index goes
///   backwards, never sends 0, waits at most `watch_wait` per query with a
///   client timeout beyond the agent's jitter, limits its rate with a token
///   bucket, and emits a list only when it really changed. Errors are logged
///   and retried with backoff; the watch does not end on them.
///
/// Register and deregister go to the agent this value talks to: Consul keeps
/// registrations per agent.
pub struct ConsulDiscovery {
    agent: Agent,
    heartbeats: Arc<Mutex<HashMap<String, JoinHandle<()>>>>,
    health: Option<Health>,
    passing: Option<Passing>,
}

/// When the agent last took an instance's check as passing (its
/// registration, or a heartbeat that passed it), shared with whoever needs
/// to know whether the instance is still listed: an instance whose check
/// has not passed for a TTL is listed by nobody, even if it cannot hear
/// that from the agent. Cloning gives another handle to the same record.
#[derive(Clone, Debug, Default)]
pub struct Passing(Arc<Mutex<Option<Instant>>>);

impl Passing {
    /// A record of no pass yet.
    pub fn new() -> Passing {
        Passing::default()
    }

    /// How long ago the check last passed, if it ever did.
    pub fn since(&self) -> Option<Duration> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).map(|at| at.elapsed())
    }

    fn passed(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

/// What an instance's heartbeat asks before it says the instance is
/// passing: `Err` with the reason when it is not.
pub type Health = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for ConsulDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulDiscovery")
            .field("agent", &self.agent.config().base_url())
            .finish()
    }
}

impl ConsulDiscovery {
    /// Discovery through the agent `config` names.
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] for an unusable base URL.
    pub fn new(config: ConsulConfig) -> Result<Self, DiscoveryError> {
        Ok(ConsulDiscovery {
            agent: Agent::new(config)?,
            heartbeats: Arc::default(),
            health: None,
            passing: None,
        })
    }

    /// Records in `passing` when the agent takes a registered instance's
    /// TTL check as passing: at registration, and at each heartbeat that
    /// passes it.
    pub fn with_passing(mut self, passing: Passing) -> Self {
        self.passing = Some(passing);
        self
    }

    /// Heartbeats of TTL checks ask `health` first: while it says the
    /// instance cannot serve, each heartbeat marks the check critical with
    /// the reason (Consul stops listing the instance at once) instead of
    /// passing it. For an instance cut off from what it needs (its broker,
    /// its database) while it can still reach Consul.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Discovery configured from `CONSUL_HTTP_ADDR` and `CONSUL_HTTP_TOKEN`.
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] for an unusable address.
    pub fn from_env() -> Result<Self, DiscoveryError> {
        ConsulDiscovery::new(ConsulConfig::from_env())
    }

    fn heartbeats(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        // Only inserts and removes of whole entries happen under the lock.
        self.heartbeats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ConsulDiscovery {
    fn drop(&mut self) {
        for (_, task) in self.heartbeats().drain() {
            task.abort();
        }
    }
}

async fn heartbeat(
    agent: Agent,
    instance: ServiceInstance,
    ttl: Duration,
    health: Option<Health>,
    passing: Option<Passing>,
) {
    let id = if instance.id.is_empty() {
        instance.name.clone()
    } else {
        instance.id.clone()
    };
    let mut ticks = tokio::time::interval(ttl / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; registration just passed the check
    loop {
        ticks.tick().await;
        let verdict = health.as_ref().map_or(Ok(()), |health| health());
        let sent = match &verdict {
            Ok(()) => agent.pass(&id).await,
            Err(reason) => {
                tracing::warn!(instance = %id, %reason, "unhealthy: marking the check critical");
                agent.fail(&id, reason).await
            }
        };
        match sent {
            Ok(Heartbeat::Sent) => {
                if verdict.is_ok() {
                    if let Some(passing) = &passing {
                        passing.passed();
                    }
                }
            }
            Ok(Heartbeat::CheckGone) => {
                tracing::warn!(instance = %id, "the agent forgot this instance's check; registering it again");
                if let Err(error) = agent.register(&instance).await {
                    tracing::warn!(instance = %id, %error, "registering again failed; will retry");
                }
            }
            Err(error) => tracing::warn!(instance = %id, %error, "heartbeat failed; will retry"),
        }
    }
}

/// A token bucket: bursts of `capacity`, then one token per `interval`.
struct RateLimit {
    capacity: f64,
    tokens: f64,
    interval: Duration,
    last: Instant,
}

impl RateLimit {
    fn new(capacity: u32, interval: Duration) -> Self {
        RateLimit {
            capacity: f64::from(capacity),
            tokens: f64::from(capacity),
            interval,
            last: Instant::now(),
        }
    }

    async fn acquire(&mut self) {
        if self.interval.is_zero() {
            return;
        }
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() / self.interval.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = now;
        if self.tokens < 1.0 {
            let short = (1.0 - self.tokens) * self.interval.as_secs_f64();
            tokio::time::sleep(Duration::from_secs_f64(short)).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

async fn watch_loop(agent: Agent, name: String, tags: Vec<String>, updates: mpsc::Sender<Vec<ServiceInstance>>) {
    let wait = agent.config().watch_wait;
    let mut limit = RateLimit::new(2, agent.config().watch_interval);
    let mut index = 0u64;
    let mut last: Option<Vec<ServiceInstance>> = None;
    let retry = RetryPolicy::forever(Duration::from_millis(100), Duration::from_secs(30));
    let mut delays = retry.delays();
    loop {
        limit.acquire().await;
        match agent.healthy(&name, &tags, index, wait).await {
            Ok((instances, new_index)) => {
                delays = retry.delays();
                index = if new_index < index {
                    // A snapshot restore, a new cluster, an upgrade: start over
                    // with a non-blocking read.
                    tracing::info!(service = %name, from = index, to = new_index, "Consul index went backwards; resetting");
                    0
                } else {
                    new_index.max(1)
                };
                // Waking up is no proof of change: compare.
                if last.as_ref() != Some(&instances) {
                    if updates.send(instances.clone()).await.is_err() {
                        return;
                    }
                    last = Some(instances);
                }
            }
            Err(error) => {
                let backoff = delays.next().unwrap_or(retry.max_backoff);
                tracing::warn!(service = %name, %error, retry_in = ?backoff, "watch query failed");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

#[async_trait]
impl Discovery for ConsulDiscovery {
    async fn register(&self, instance: &ServiceInstance) -> Result<(), DiscoveryError> {
        self.agent.register(instance).await?;
        if let Check::Ttl { ttl } = self.agent.config().check {
            // Registering passes the check.
            if let Some(passing) = &self.passing {
                passing.passed();
            }
            let task = tokio::spawn(heartbeat(
                self.agent.clone(),
                instance.clone(),
                ttl,
                self.health.clone(),
                self.passing.clone(),
            ));
            let id = if instance.id.is_empty() {
                &instance.name
            } else {
                &instance.id
            };
            if let Some(old) = self.heartbeats().insert(id.clone(), task) {
                old.abort();
            }
        }
        Ok(())
    }

    async fn deregister(&self, instance_id: &str) -> Result<(), DiscoveryError> {
        if let Some(task) = self.heartbeats().remove(instance_id) {
            task.abort();
        }
        self.agent.deregister(instance_id).await
    }

    async fn resolve(&self, name: &str, tags: &[String]) -> Result<Vec<ServiceInstance>, DiscoveryError> {
        let (instances, _) = self.agent.healthy(name, tags, 0, Duration::ZERO).await?;
        Ok(instances)
    }

    async fn watch(&self, name: &str, tags: &[String]) -> Result<Watch, DiscoveryError> {
        // A first read here, so that a bad name or an unreachable agent is an
        // error now rather than a log line later.
        self.agent.healthy(name, tags, 0, Duration::ZERO).await?;
        let (updates, receiver) = mpsc::channel(16);
        let task = tokio::spawn(watch_loop(self.agent.clone(), name.to_owned(), tags.to_vec(), updates));
        Ok(Watch::new(receiver, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_allows_a_burst_of_two_then_one_per_interval() {
        let mut limit = RateLimit::new(2, Duration::from_secs(1));
        let start = Instant::now();
        limit.acquire().await;
        limit.acquire().await;
        assert!(start.elapsed() < Duration::from_millis(10));
        limit.acquire().await;
        limit.acquire().await;
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed < Duration::from_millis(2100),
            "{elapsed:?}"
        );
    }
}
