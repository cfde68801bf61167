//! The calls to Consul's HTTP API that discovery needs, typed.

use std::collections::BTreeMap;
use std::time::Duration;

use bookshelf_core::{DiscoveryError, ServiceInstance};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::{Deserialize, Serialize};

use crate::config::{go_duration, Check, ConsulConfig};

/// A thin client of one Consul agent.
#[derive(Clone, Debug)]
pub(crate) struct Agent {
    http: reqwest::Client,
    config: ConsulConfig,
}

/// What a failed TTL update means for the registration.
pub(crate) enum Heartbeat {
    Sent,
    /// The agent no longer knows the check (it restarted): register again.
    CheckGone,
}

#[derive(Serialize)]
struct RegisterBody<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Tags")]
    tags: &'a [String],
    #[serde(rename = "Address")]
    address: &'a str,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Meta")]
    meta: &'a BTreeMap<String, String>,
    #[serde(rename = "Check")]
    check: CheckBody,
}

#[derive(Serialize)]
struct CheckBody {
    #[serde(rename = "CheckID")]
    check_id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    #[serde(rename = "Interval", skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(rename = "Timeout", skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(rename = "Status")]
    status: &'static str,
    #[serde(rename = "DeregisterCriticalServiceAfter")]
    deregister_critical_service_after: String,
}

/// One entry of `GET /v1/health/service/:name`, read leniently.
#[derive(Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node", default)]
    node: HealthNode,
    #[serde(rename = "Service")]
    service: HealthService,
}

#[derive(Deserialize, Default)]
struct HealthNode {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Service")]
    service: String,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: u16,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
}

/// The check id of an instance: unique per instance, as Consul advises.
pub(crate) fn check_id(instance_id: &str) -> String {
    format!("service:{instance_id}")
}

/// Refuses names Consul would refuse or misroute: empty, or with control
/// characters (a line feed is always rejected).
fn valid_name(what: &str, name: &str) -> Result<(), DiscoveryError> {
    if name.is_empty() {
        return Err(DiscoveryError::Invalid(format!("missing {what}")));
    }
    if name.chars().any(char::is_control) {
        return Err(DiscoveryError::Invalid(format!(
            "{what} {name:?} has control characters"
        )));
    }
    Ok(())
}

impl Agent {
    pub(crate) fn new(config: ConsulConfig) -> Result<Self, DiscoveryError> {
        Url::parse(&config.base_url)
            .map_err(|e| DiscoveryError::Invalid(format!("bad Consul address {:?}: {e}", config.base_url)))?;
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| DiscoveryError::Unavailable(Box::new(e)))?;
        Ok(Agent { http, config })
    }

    pub(crate) fn config(&self) -> &ConsulConfig {
        &self.config
    }

    /// `{base}/v1/{segments...}`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = Url::parse(&self.config.base_url).expect("the base URL was checked when the agent was built");
        url.path_segments_mut()
            .expect("an http(s) URL has path segments")
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url).timeout(self.config.request_timeout);
        match &self.config.token {
            Some(token) => request.header("X-Consul-Token", token),
            None => request,
        }
    }

    async fn send(request: RequestBuilder) -> Result<Response, DiscoveryError> {
        let response = request
            .send()
            .await
            .map_err(|e| DiscoveryError::Unavailable(Box::new(e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        Err(DiscoveryError::Status { status, body })
    }

    pub(crate) async fn register(&self, instance: &ServiceInstance) -> Result<(), DiscoveryError> {
        valid_name("service name", &instance.name)?;
        let id = if instance.id.is_empty() {
            &instance.name
        } else {
            &instance.id
        };
        valid_name("service id", id)?;
        let deregister_after = go_duration(self.config.deregister_critical_after);
        let check = match &self.config.check {
            Check::Ttl { ttl } => CheckBody {
                check_id: check_id(id),
                name: format!("{} TTL heartbeat", instance.name),
                ttl: Some(go_duration(*ttl)),
                http: None,
                interval: None,
                timeout: None,
                status: "passing",
                deregister_critical_service_after: deregister_after,
            },
            Check::Http {
                path,
                interval,
                timeout,
            } => CheckBody {
                check_id: check_id(id),
                name: format!("{} HTTP {path}", instance.name),
                ttl: None,
                http: Some(format!("http://{}{path}", instance.authority())),
                interval: Some(go_duration(*interval)),
                timeout: Some(go_duration(*timeout)),
                status: "passing",
                deregister_critical_service_after: deregister_after,
            },
        };
        let body = RegisterBody {
            id,
            name: &instance.name,
            tags: &instance.tags,
            address: &instance.address,
            port: instance.port,
            meta: &instance.meta,
            check,
        };
        let url = self.url(&["agent", "service", "register"]);
        Self::send(self.request(Method::PUT, url).json(&body)).await?;
        Ok(())
    }

    /// Deregisters; an unknown service counts as already gone.
    pub(crate) async fn deregister(&self, instance_id: &str) -> Result<(), DiscoveryError> {
        let url = self.url(&["agent", "service", "deregister", instance_id]);
        match Self::send(self.request(Method::PUT, url)).await {
            Ok(_) => Ok(()),
            Err(DiscoveryError::Status { status: 404, .. }) => Ok(()),
            // Older agents answer 500 `Unknown service "<id>"`.
            Err(DiscoveryError::Status { status: 500, body }) if body.contains("Unknown service") => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Marks the instance's TTL check passing.
    pub(crate) async fn pass(&self, instance_id: &str) -> Result<Heartbeat, DiscoveryError> {
        self.mark(instance_id, "pass", "heartbeat").await
    }

    /// Marks the instance's TTL check critical, with `note` saying why:
    /// the agent stops listing it as passing at once.
    pub(crate) async fn fail(&self, instance_id: &str, note: &str) -> Result<Heartbeat, DiscoveryError> {
        self.mark(instance_id, "fail", note).await
    }

    /// Sets the instance's TTL check's status (`pass`, `fail`) with `note`.
    async fn mark(&self, instance_id: &str, status: &str, note: &str) -> Result<Heartbeat, DiscoveryError> {
        let mut url = self.url(&["agent", "check", status, &check_id(instance_id)]);
        url.query_pairs_mut().append_pair("note", note);
        match Self::send(self.request(Method::PUT, url)).await {
            Ok(_) => Ok(Heartbeat::Sent),
            Err(DiscoveryError::Status { status: 404, .. }) => Ok(Heartbeat::CheckGone),
            Err(DiscoveryError::Status { status: 500, body }) if body.contains("does not have associated TTL") => {
                Ok(Heartbeat::CheckGone)
            }
            Err(other) => Err(other),
        }
    }

    /// The passing instances of `name` with every one of `tags`, and the
    /// result's `X-Consul-Index`. With `index > 0`, a blocking query that
    /// returns when the index moves past it or `wait` runs out.
    pub(crate) async fn healthy(
        &self,
        name: &str,
        tags: &[String],
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<ServiceInstance>, u64), DiscoveryError> {
        valid_name("service name", name)?;
        let mut url = self.url(&["health", "service", name]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("passing", "true");
            for tag in tags {
                query.append_pair("tag", tag);
            }
            if let Some(dc) = &self.config.datacenter {
                query.append_pair("dc", dc);
            }
            if index > 0 {
                query.append_pair("index", &index.to_string());
                query.append_pair("wait", &go_duration(wait));
            }
        }
        let mut request = self.request(Method::GET, url);
        if index > 0 {
            // The agent may hold the request for `wait` plus up to wait/16 of
            // jitter: the client must wait longer than that.
            request = request.timeout(wait + wait / 16 + Duration::from_secs(5));
        }
        let response = Self::send(request).await?;
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let entries: Vec<HealthEntry> = response
            .json()
            .await
            .map_err(|e| DiscoveryError::Unavailable(Box::new(e)))?;
        let mut instances: Vec<ServiceInstance> = entries
            .into_iter()
            .map(|entry| ServiceInstance {
                id: entry.service.id,
                name: entry.service.service,
                tags: entry.service.tags.unwrap_or_default(),
                // An empty service address means "the node's address".
                address: if entry.service.address.is_empty() {
                    entry.node.address
                } else {
                    entry.service.address
                },
                port: entry.service.port,
                meta: entry.service.meta.unwrap_or_default(),
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((instances, index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded_in_paths() {
        let agent = Agent::new(ConsulConfig::new("http://127.0.0.1:8500")).unwrap();
        let url = agent.url(&["health", "service", "my service/v1"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/health/service/my%20service%2Fv1"
        );
    }

    #[test]
    fn control_characters_in_names_are_refused() {
        assert!(valid_name("service name", "web\nx").is_err());
        assert!(valid_name("service name", "").is_err());
        assert!(valid_name("service name", "web").is_ok());
    }
}
