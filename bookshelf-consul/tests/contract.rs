//! The discovery contract, checked against the Consul double on every run,
//! and against a real Consul agent when `CONSUL_HTTP_ADDR` is set.
//!
//! Tests named `double_*` use controls only the double has (restarting the
//! agent, rewinding its index, requiring an ACL token).

use std::future::Future;
use std::time::{Duration, Instant};

use bookshelf_consul::{Check, ConsulConfig, ConsulDiscovery};
use bookshelf_core::{Discovery, DiscoveryError, ServiceInstance, Watch};
use bookshelf_testkit::consul::{ConsulDouble, DoubleOptions};
use serde_json::Value;

/// Polls `check` every 20 ms until it holds, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next list from a watch, within 10 s.
async fn next(watch: &mut Watch) -> Vec<ServiceInstance> {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch reports within 10 s")
        .expect("the watch goes on")
}

fn config(base_url: &str) -> ConsulConfig {
    let config = ConsulConfig::new(base_url)
        .watch_wait(Duration::from_secs(2))
        .watch_interval(Duration::from_millis(20));
    match std::env::var("CONSUL_HTTP_TOKEN") {
        Ok(token) if !token.is_empty() => config.token(token),
        _ => config,
    }
}

/// A service name no other run uses, so that a shared real agent is safe.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("bookshelf-test-{name}-{nanos:x}")
}

async fn agent_check(base_url: &str, check_id: &str) -> Option<Value> {
    let checks: Value = reqwest::get(format!("{base_url}/v1/agent/checks"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    checks.get(check_id).cloned()
}

async fn put(base_url: &str, path: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .put(format!("{base_url}{path}"))
        .send()
        .await
        .expect("the agent answers")
        .status()
}

// --- The contract: each function takes the agent's base URL.

async fn heartbeating_service_shows_up_passing_and_stays(base_url: &str) {
    let discovery = ConsulDiscovery::new(config(base_url).check(Check::Ttl {
        ttl: Duration::from_millis(600),
    }))
    .unwrap();
    let name = unique("beat");
    let me = ServiceInstance::new(format!("{name}-1"), &name, "127.0.0.1", 9001).with_tags(["v1"]);
    discovery.register(&me).await.unwrap();
    eventually(Duration::from_secs(10), "registered instance resolves", || async {
        discovery.resolve(&name, &[]).await.unwrap() == vec![me.clone()]
    })
    .await;
    // Three TTLs later the heartbeats have kept it passing.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(discovery.resolve(&name, &[]).await.unwrap(), vec![me.clone()]);
    let check = agent_check(base_url, &format!("service:{}", me.id)).await.unwrap();
    assert_eq!(check["Status"], "passing");
    discovery.deregister(&me.id).await.unwrap();
    eventually(Duration::from_secs(10), "deregistered instance is gone", || async {
        discovery.resolve(&name, &[]).await.unwrap().is_empty()
    })
    .await;
}

async fn stopped_heartbeats_turn_critical_and_leave_resolve(base_url: &str) {
    let ttl = Duration::from_millis(600);
    let name = unique("crash");
    let me = ServiceInstance::new(format!("{name}-1"), &name, "127.0.0.1", 9002);
    let crashing = ConsulDiscovery::new(config(base_url).check(Check::Ttl { ttl })).unwrap();
    crashing.register(&me).await.unwrap();
    let observer = ConsulDiscovery::new(config(base_url)).unwrap();
    eventually(Duration::from_secs(10), "registered instance resolves", || async {
        observer.resolve(&name, &[]).await.unwrap() == vec![me.clone()]
    })
    .await;
    drop(crashing); // heartbeats stop, nothing is deregistered: a crash
    eventually(
        Duration::from_secs(10),
        "the silent instance leaves resolve",
        || async { observer.resolve(&name, &[]).await.unwrap().is_empty() },
    )
    .await;
    let check = agent_check(base_url, &format!("service:{}", me.id)).await.unwrap();
    assert_eq!(check["Status"], "critical");
    assert!(check["Output"].as_str().unwrap().starts_with("TTL expired"), "{check}");
    observer.deregister(&me.id).await.unwrap();
}

async fn an_unhealthy_instance_is_marked_critical_with_its_reason_and_comes_back(base_url: &str) {
    let ttl = Duration::from_millis(600);
    let name = unique("health");
    let me = ServiceInstance::new(format!("{name}-1"), &name, "127.0.0.1", 9003);
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe = {
        let healthy = std::sync::Arc::clone(&healthy);
        std::sync::Arc::new(move || {
            if healthy.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("the broker has not answered for 2s".to_owned())
            }
        })
    };
    let discovery = ConsulDiscovery::new(config(base_url).check(Check::Ttl { ttl }))
        .unwrap()
        .with_health(probe);
    discovery.register(&me).await.unwrap();
    eventually(Duration::from_secs(10), "registered instance resolves", || async {
        discovery.resolve(&name, &[]).await.unwrap() == vec![me.clone()]
    })
    .await;
    healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    // The next heartbeat (a third of the TTL) marks it critical: sooner
    // than the TTL would lapse.
    let began = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the unhealthy instance leaves resolve",
        || async { discovery.resolve(&name, &[]).await.unwrap().is_empty() },
    )
    .await;
    assert!(began.elapsed() < ttl, "marked critical after {:?}", began.elapsed());
    let check = agent_check(base_url, &format!("service:{}", me.id)).await.unwrap();
    assert_eq!(check["Status"], "critical");
    assert_eq!(check["Output"], "the broker has not answered for 2s");
    healthy.store(true, std::sync::atomic::Ordering::Relaxed);
    eventually(Duration::from_secs(10), "the instance passes again", || async {
        discovery.resolve(&name, &[]).await.unwrap() == vec![me.clone()]
    })
    .await;
    discovery.deregister(&me.id).await.unwrap();
}

async fn watch_sees_register_health_change_and_deregister_in_order(base_url: &str) {
    // A long TTL, so that no heartbeat undoes the failure set by hand below.
    let discovery = ConsulDiscovery::new(config(base_url).check(Check::Ttl {
        ttl: Duration::from_secs(60),
    }))
    .unwrap();
    let name = unique("watch");
    let me = ServiceInstance::new(format!("{name}-1"), &name, "127.0.0.1", 9003);
    let check = format!("service:{}", me.id);
    let mut watch = discovery.watch(&name, &[]).await.unwrap();
    assert_eq!(next(&mut watch).await, vec![]);
    discovery.register(&me).await.unwrap();
    assert_eq!(next(&mut watch).await, vec![me.clone()], "register");
    assert_eq!(
        put(base_url, &format!("/v1/agent/check/fail/{check}?note=down")).await,
        200
    );
    assert_eq!(next(&mut watch).await, vec![], "health turned critical");
    assert_eq!(put(base_url, &format!("/v1/agent/check/pass/{check}")).await, 200);
    assert_eq!(next(&mut watch).await, vec![me.clone()], "health passing again");
    discovery.deregister(&me.id).await.unwrap();
    assert_eq!(next(&mut watch).await, vec![], "deregister");
}

async fn resolve_requires_every_tag_and_falls_back_to_the_node_address(base_url: &str) {
    let discovery = ConsulDiscovery::new(config(base_url)).unwrap();
    let name = unique("tags");
    let a = ServiceInstance::new(format!("{name}-a"), &name, "127.0.0.1", 1).with_tags(["v1", "eu"]);
    let b = ServiceInstance::new(format!("{name}-b"), &name, "", 2).with_tags(["v1"]);
    discovery.register(&a).await.unwrap();
    discovery.register(&b).await.unwrap();
    eventually(Duration::from_secs(10), "both instances resolve", || async {
        discovery.resolve(&name, &[]).await.unwrap().len() == 2
    })
    .await;
    let both = discovery.resolve(&name, &["V1".into()]).await.unwrap();
    assert_eq!(both.len(), 2, "tags match without regard to case");
    let eu = discovery.resolve(&name, &["v1".into(), "eu".into()]).await.unwrap();
    assert_eq!(eu, vec![a.clone()], "every tag is required");
    let b_resolved = both.iter().find(|i| i.id == b.id).unwrap();
    assert!(
        !b_resolved.address.is_empty(),
        "an empty service address falls back to the node's"
    );
    for id in [&a.id, &b.id] {
        discovery.deregister(id).await.unwrap();
    }
}

async fn errors_keep_consuls_status_and_text(base_url: &str) {
    let discovery = ConsulDiscovery::new(config(base_url)).unwrap();
    let bad = ServiceInstance::new(unique("bad"), "bad", "0.0.0.0", 1);
    match discovery.register(&bad).await {
        Err(DiscoveryError::Status { status: 400, body }) => {
            assert!(body.contains("Invalid service address"), "{body}")
        }
        other => panic!("expected a 400 with Consul's text, got {other:?}"),
    }
    // Deregistering what the agent does not know counts as done.
    discovery.deregister(&unique("never-registered")).await.unwrap();
}

async fn http_checks_point_at_the_health_endpoint(base_url: &str) {
    let discovery = ConsulDiscovery::new(config(base_url).check(Check::Http {
        path: "/health".into(),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
    }))
    .unwrap();
    let name = unique("http");
    let me = ServiceInstance::new(format!("{name}-1"), &name, "127.0.0.1", 9004);
    discovery.register(&me).await.unwrap();
    let check = agent_check(base_url, &format!("service:{}", me.id)).await.unwrap();
    assert_eq!(check["Type"], "http");
    discovery.deregister(&me.id).await.unwrap();
}

macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        /// The whole contract against the double.
        mod against_the_double {
            $(
                #[tokio::test]
                async fn $test() {
                    let double = super::ConsulDouble::start().await.unwrap();
                    super::$test(&double.url()).await;
                }
            )*
        }

        /// The whole contract against a real agent, when there is one.
        #[tokio::test]
        async fn contract_against_a_real_agent() {
            let Some(addr) = std::env::var("CONSUL_HTTP_ADDR").ok().filter(|a| !a.is_empty()) else {
                println!("skipped: no real Consul agent (set CONSUL_HTTP_ADDR to run the contract against one)");
                return;
            };
            let base_url = ConsulConfig::new(addr).base_url().to_owned();
            $(
                println!("real agent at {base_url}: {}", stringify!($test));
                $test(&base_url).await;
            )*
        }
    };
}

contract!(
    heartbeating_service_shows_up_passing_and_stays,
    stopped_heartbeats_turn_critical_and_leave_resolve,
    an_unhealthy_instance_is_marked_critical_with_its_reason_and_comes_back,
    watch_sees_register_health_change_and_deregister_in_order,
    resolve_requires_every_tag_and_falls_back_to_the_node_address,
    errors_keep_consuls_status_and_text,
    http_checks_point_at_the_health_endpoint,
);

// --- What only the double can stage.

#[tokio::test]
async fn double_an_agent_restart_is_healed_by_the_next_heartbeat() {
    let double = ConsulDouble::start().await.unwrap();
    let discovery = ConsulDiscovery::new(config(&double.url()).check(Check::Ttl {
        ttl: Duration::from_millis(300),
    }))
    .unwrap();
    let me = ServiceInstance::new("svc-1", "svc", "127.0.0.1", 1);
    discovery.register(&me).await.unwrap();
    double.restart_agent();
    assert!(double.registered().is_empty());
    eventually(
        Duration::from_secs(5),
        "the heartbeat registers the instance again",
        || async { discovery.resolve("svc", &[]).await.unwrap() == vec![me.clone()] },
    )
    .await;
}

#[tokio::test]
async fn double_a_watch_survives_the_index_going_backwards() {
    let double = ConsulDouble::start().await.unwrap();
    let discovery = ConsulDiscovery::new(config(&double.url()).check(Check::Ttl {
        ttl: Duration::from_secs(60),
    }))
    .unwrap();
    let a = ServiceInstance::new("svc-a", "svc", "127.0.0.1", 1);
    let b = ServiceInstance::new("svc-b", "svc", "127.0.0.1", 2);
    let mut watch = discovery.watch("svc", &[]).await.unwrap();
    assert_eq!(next(&mut watch).await, vec![]);
    discovery.register(&a).await.unwrap();
    assert_eq!(next(&mut watch).await, vec![a.clone()]);
    // The watch now blocks on an index far above what the agent will report:
    // the agent holds that query for its whole wait and then answers with the
    // lower index, which the watch must adopt by starting over.
    double.rewind_index();
    discovery.register(&b).await.unwrap();
    assert_eq!(next(&mut watch).await, vec![a.clone(), b.clone()]);
    // Recovered: the next change arrives at once, not after another full
    // wait (2 s here), as it would for a client that kept its old index.
    let start = Instant::now();
    discovery.deregister("svc-a").await.unwrap();
    assert_eq!(next(&mut watch).await, vec![b.clone()]);
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "the change after the reset took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn double_the_acl_token_is_sent_only_when_set() {
    let double = ConsulDouble::start_with(DoubleOptions {
        acl_token: Some("s3cr3t".into()),
        ..DoubleOptions::default()
    })
    .await
    .unwrap();
    let me = ServiceInstance::new("svc-1", "svc", "127.0.0.1", 1);
    let anonymous = ConsulDiscovery::new(ConsulConfig::new(double.url())).unwrap();
    match anonymous.register(&me).await {
        Err(DiscoveryError::Status { status: 403, body }) => assert_eq!(body, "Permission denied"),
        other => panic!("expected 403, got {other:?}"),
    }
    let trusted = ConsulDiscovery::new(ConsulConfig::new(double.url()).token("s3cr3t")).unwrap();
    trusted.register(&me).await.unwrap();
    assert_eq!(double.tokens_seen(), vec![None, Some("s3cr3t".to_owned())]);
    trusted.deregister("svc-1").await.unwrap();
}

#[tokio::test]
async fn double_follows_consuls_http_rules() {
    let double = ConsulDouble::start().await.unwrap();
    let url = double.url();
    let http = reqwest::Client::new();
    // Verbs: register is PUT only.
    let get = http
        .get(format!("{url}/v1/agent/service/register"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "PUT");
    assert_eq!(get.text().await.unwrap(), "method GET not allowed");
    // Unknown paths.
    let unknown = http.get(format!("{url}/v1/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.text().await.unwrap(),
        "Invalid URL path: not a recognized HTTP API endpoint"
    );
    // Unknown ids, with Consul's texts.
    let gone = http
        .put(format!("{url}/v1/agent/service/deregister/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    assert!(gone.text().await.unwrap().starts_with("Unknown service ID \"x\""));
    let no_check = http.put(format!("{url}/v1/agent/check/pass/x")).send().await.unwrap();
    assert_eq!(no_check.status(), 404);
    // Health: a missing service is [] with an index of at least 1.
    let health = http
        .get(format!("{url}/v1/health/service/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let index: u64 = health.headers()["x-consul-index"].to_str().unwrap().parse().unwrap();
    assert!(index >= 1);
    assert_eq!(health.text().await.unwrap(), "[]");
    for (query, message) in [
        ("passing=maybe", "Invalid value for ?passing"),
        ("index=abc", "Invalid index"),
        ("index=5&wait=forever", "Invalid wait time"),
    ] {
        let bad = http
            .get(format!("{url}/v1/health/service/x?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400, "{query}");
        assert_eq!(bad.text().await.unwrap(), message);
    }
    // A blocking query with nothing changing returns after its wait, same index.
    let start = Instant::now();
    let blocked = http
        .get(format!("{url}/v1/health/service/missing?index={index}&wait=300ms"))
        .send()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(blocked.headers()["x-consul-index"].to_str().unwrap(), index.to_string());
}
