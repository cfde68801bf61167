//! The lending service as two processes on a three-partition Kafka topic
//! (tansu, from `scripts/test.sh`), found through the Consul double: one
//! writes the topic and runs the loan process; SIGKILL it while loans are
//! under way, and the other takes over and finishes every loan, with every
//! step (charge, lend, release) taken once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::Service;
use bookshelf_testkit::consul::ConsulDouble;
use reqwest::StatusCode;
use serde_json::{json, Value};

const LOANS: usize = 24;
const FEE: u64 = 3;

struct Lending {
    consul: ConsulDouble,
    topic: String,
    data: std::path::PathBuf,
    instances: BTreeMap<String, Service>,
    http: reqwest::Client,
}

impl Lending {
    fn start_instance(&mut self, id: &str) {
        let args = crate::support::on_kafka(&self.topic, &self.consul.url(), id, &self.data, &[]);
        let service = Service::start("lending", &args);
        self.instances.insert(id.to_owned(), service);
    }

    /// The instance that writes the topic, once exactly one says so.
    async fn writer(&self) -> String {
        let start = Instant::now();
        loop {
            let mut writers = Vec::new();
            for (id, service) in &self.instances {
                let role: Option<Value> = match self.http.get(format!("{}/role", service.url)).send().await {
                    Ok(answer) => answer.json().await.ok(),
                    Err(_) => None,
                };
                if role.is_some_and(|r| r["writer"] == true) {
                    writers.push(id.clone());
                }
            }
            if let [writer] = writers.as_slice() {
                return writer.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no single writer within 60 s: {writers:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a command to each instance in turn until one takes it (the
    /// others answer 503: not the writer, nothing stored).
    async fn command(&self, path: &str, body: Value) {
        let start = Instant::now();
        loop {
            for service in self.instances.values() {
                let sent = self
                    .http
                    .post(format!("{}{path}", service.url))
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(answer) if answer.status().is_success() => return,
                    Ok(answer) if answer.status() == StatusCode::SERVICE_UNAVAILABLE => {}
                    Ok(answer) => panic!("{path} {body}: {} {:?}", answer.status(), answer.text().await),
                    Err(_) => {} // an instance that is gone
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no instance took {path} {body} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, id: &str, path: &str) -> Value {
        let answer = self
            .http
            .get(format!("{}{path}", self.instances[id].url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {id}: {e}"));
        assert_eq!(answer.status(), StatusCode::OK, "GET {path} on {id}");
        answer.json().await.expect("JSON")
    }
}

/// How the loan of copy `n` should end: its member, and whether it is lent.
fn plan(n: usize) -> (String, bool) {
    match n % 4 {
        0 | 1 => (format!("rich-{}", n % 3), true),
        2 => ("poor".to_owned(), false),  // the charge is declined
        _ => ("ghost".to_owned(), false), // no such member: the charge is refused
    }
}

/// The events of `stream` (a `GET /copies/..` or `/members/..` answer) about
/// `loan`, by type.
fn about(stream: &Value, loan: &str) -> Vec<String> {
    stream["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["payload"]["loan"] == loan)
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_leaves_every_loan_finished_by_the_other_with_no_step_taken_twice() {
    let topic = format!("bookshelf-lending-{}", uuid::Uuid::new_v4().simple());
    let mut lending = Lending {
        consul: ConsulDouble::start().await.expect("the Consul double starts"),
        data: std::env::temp_dir().join(&topic),
        topic,
        instances: BTreeMap::new(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client"),
    };
    lending.start_instance("lending-1");
    lending.start_instance("lending-2");
    let first = lending.writer().await;

    for n in 0..3 {
        lending
            .command("/members", json!({"id": format!("rich-{n}"), "balance": 1000}))
            .await;
    }
    lending.command("/members", json!({"id": "poor", "balance": 1})).await;
    for n in 0..LOANS {
        lending.command("/copies", json!({"id": format!("copy-{n}")})).await;
    }
    // Half the loans; once the writer's loan process has finished some of
    // them, it dies with the others under way; the other half goes to the
    // survivor once it has taken over.
    let reserve = |n: usize| {
        let (member, _) = plan(n);
        (
            format!("/copies/copy-{n}/reserve"),
            json!({"loan": format!("loan-{n}"), "member": member, "fee": FEE}),
        )
    };
    for n in 0..LOANS / 2 {
        let (path, body) = reserve(n);
        lending.command(&path, body).await;
    }
    let under_way = Instant::now();
    loop {
        let mut ended = 0;
        for n in 0..LOANS / 2 {
            let copy = lending.get(&first, &format!("/copies/copy-{n}")).await;
            if about(&copy, &format!("loan-{n}")).len() > 1 {
                ended += 1;
            }
        }
        if ended >= 2 {
            println!("{ended} of {} loans had ended when {first} was killed", LOANS / 2);
            break;
        }
        assert!(
            under_way.elapsed() < Duration::from_secs(30),
            "the writer's loan process finished no loan in 30 s"
        );
    }
    let killed = lending.instances.remove(&first).expect("the writer runs");
    killed.crash();
    let killed_at = Instant::now();
    for n in LOANS / 2..LOANS {
        let (path, body) = reserve(n);
        lending.command(&path, body).await;
    }
    let survivor = lending.writer().await;
    assert_ne!(survivor, first);
    println!(
        "{survivor} took over {:.1} s after {first} was killed",
        killed_at.elapsed().as_secs_f64()
    );

    // Every loan ends: lent, or released after a declined or refused charge.
    let start = Instant::now();
    let mut copies = BTreeMap::new();
    while copies.len() < LOANS {
        for n in 0..LOANS {
            if copies.contains_key(&n) {
                continue;
            }
            let copy = lending.get(&survivor, &format!("/copies/copy-{n}")).await;
            let ended = about(&copy, &format!("loan-{n}"))
                .iter()
                .any(|t| t == "CopyLent" || t == "CopyReleased");
            if ended {
                copies.insert(n, copy);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "loans not finished after 90 s: {:?} of {LOANS} done",
            copies.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut charged: BTreeMap<String, u64> = BTreeMap::new();
    for (n, copy) in &copies {
        let loan = format!("loan-{n}");
        let (member, lent) = plan(*n);
        let expected = if lent {
            ["CopyReserved", "CopyLent"]
        } else {
            ["CopyReserved", "CopyReleased"]
        };
        assert_eq!(about(copy, &loan), expected, "copy-{n}: each step once");
        let keys: Vec<&str> = copy["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["key"].as_str())
            .collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(keys.len(), unique.len(), "copy-{n}: no key twice: {keys:?}");
        if member != "ghost" {
            let stream = lending.get(&survivor, &format!("/members/{member}")).await;
            let steps = about(&stream, &loan);
            let want = if lent { "MemberCharged" } else { "ChargeDeclined" };
            assert_eq!(steps, [want], "{member}, {loan}: charged once");
            if lent {
                *charged.entry(member).or_default() += FEE;
            }
        }
    }
    for (member, paid) in charged {
        let stream = lending.get(&survivor, &format!("/members/{member}")).await;
        assert_eq!(
            stream["state"]["Active"]["balance"].as_u64(),
            Some(1000 - paid),
            "{member}'s balance"
        );
    }
    let _ = std::fs::remove_dir_all(&lending.data);
}
