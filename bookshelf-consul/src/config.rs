//! How to reach Consul, and how instances are checked.

use std::time::Duration;

/// How Consul learns that an instance is healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Check {
    /// A TTL check that this library keeps passing by heartbeats, three
    /// times per `ttl`. It turns critical when the process stops sending
    /// them (a crash, a hang).
    Ttl {
        /// How long a heartbeat keeps the check passing.
        ttl: Duration,
    },
    /// Consul calls `GET {scheme}://{address}:{port}{path}` every `interval`:
    /// 2xx is passing, 429 warning, anything else critical.
    Http {
        /// The health endpoint's path, such as `/health`.
        path: String,
        /// How often Consul calls it.
        interval: Duration,
        /// How long Consul waits for an answer.
        timeout: Duration,
    },
}

/// Configuration of a [`crate::ConsulDiscovery`].
///
/// ```
/// use bookshelf_consul::{Check, ConsulConfig};
/// use std::time::Duration;
/// let config = ConsulConfig::new("http://127.0.0.1:8500")
///     .token("s3cr3t")
///     .datacenter("dc1")
///     .check(Check::Ttl { ttl: Duration::from_secs(10) });
/// assert_eq!(config.base_url(), "http://127.0.0.1:8500");
/// ```
#[derive(Clone, Debug)]
pub struct ConsulConfig {
    pub(crate) base_url: String,
    pub(crate) token: Option<String>,
    pub(crate) datacenter: Option<String>,
    pub(crate) check: Check,
    pub(crate) deregister_critical_after: Duration,
    pub(crate) watch_wait: Duration,
    pub(crate) watch_interval: Duration,
    pub(crate) request_timeout: Duration,
}

impl ConsulConfig {
    /// Talks to the agent at `base_url` (`http://127.0.0.1:8500`, say; a
    /// bare `host:port` gets `http://`), with a 10 s TTL check, critical
    /// instances deregistered after 1 minute, 5 minute blocking waits, and
    /// watches polling at most about once a second.
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into();
        let base_url = if base_url.contains("://") {
            base_url
        } else {
            format!("http://{base_url}")
        };
        ConsulConfig {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: None,
            datacenter: None,
            check: Check::Ttl {
                ttl: Duration::from_secs(10),
            },
            deregister_critical_after: Duration::from_secs(60),
            watch_wait: Duration::from_secs(300),
            watch_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Like Consul's own tools: the address from `CONSUL_HTTP_ADDR` (default
    /// `127.0.0.1:8500`) and the ACL token from `CONSUL_HTTP_TOKEN`, if set.
    pub fn from_env() -> Self {
        let addr = std::env::var("CONSUL_HTTP_ADDR")
            .ok()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "127.0.0.1:8500".to_owned());
        let mut config = ConsulConfig::new(addr);
        config.token = std::env::var("CONSUL_HTTP_TOKEN").ok().filter(|t| !t.is_empty());
        config
    }

    /// The agent's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends this ACL token (as `X-Consul-Token`) with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Reads health from this datacenter (`?dc=`).
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// How registered instances are checked.
    pub fn check(mut self, check: Check) -> Self {
        self.check = check;
        self
    }

    /// How long an instance may stay critical before Consul removes it: the
    /// safety net for a process that died without deregistering. Consul
    /// raises anything under one minute to one minute.
    pub fn deregister_critical_after(mut self, after: Duration) -> Self {
        self.deregister_critical_after = after;
        self
    }

    /// How long one blocking query of a watch may wait for a change (Consul
    /// caps it at 10 minutes).
    pub fn watch_wait(mut self, wait: Duration) -> Self {
        self.watch_wait = wait.min(Duration::from_secs(600));
        self
    }

    /// The least time between a watch's queries on average (bursts of two
    /// are allowed), so that churn cannot make a watch hammer the agent.
    pub fn watch_interval(mut self, interval: Duration) -> Self {
        self.watch_interval = interval;
        self
    }

    /// The timeout of non-blocking requests.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

/// A duration in Go's syntax, as Consul reads it: whole milliseconds, or
/// whole seconds when exact.
pub(crate) fn go_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(ConsulConfig::new("127.0.0.1:8500").base_url(), "http://127.0.0.1:8500");
        assert_eq!(
            ConsulConfig::new("http://consul:8500/").base_url(),
            "http://consul:8500"
        );
    }

    #[test]
    fn durations_are_written_in_go_syntax() {
        assert_eq!(go_duration(Duration::from_secs(90)), "90s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }
}
