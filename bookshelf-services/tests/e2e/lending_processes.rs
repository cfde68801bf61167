//! The lending service as two processes on a three-partition Kafka topic
//! (tansu, from `scripts/test.sh`), found through the Consul double: one
//! writes the topic and runs the loan process; SIGKILL it while loans are
//! under way, and the other takes over and finishes every loan, with every
//! step (charge, lend, release) taken once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::Service;
use bookshelf_testkit::consul::ConsulDouble;
use reqwest::StatusCode;
use serde_json::{json, Value};

const LOANS: usize = 24;
const FEE: u64 = 3;
/// What a rich member has to begin with.
const RICH: u64 = 1000;

struct Lending {
    consul: ConsulDouble,
    /// The broker's `bootstrap.servers`.
    broker: String,
    topic: String,
    data: std::path::PathBuf,
    instances: BTreeMap<String, Service>,
    http: reqwest::Client,
    /// The Unix users to run `lending-N` as (the N-th), when the test cuts
    /// instances off the network.
    users: Vec<(String, u32)>,
}

impl Lending {
    /// No instance yet, on `broker`; instances run as `users` when given.
    async fn new(broker: String, users: Vec<(String, u32)>) -> Lending {
        let topic = format!("bookshelf-lending-{}", uuid::Uuid::new_v4().simple());
        let data = std::env::temp_dir().join(&topic);
        crate::support::open_to(!users.is_empty(), &data);
        Lending {
            consul: ConsulDouble::start().await.expect("the Consul double starts"),
            broker,
            data,
            topic,
            instances: BTreeMap::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            users,
        }
    }

    fn start_instance(&mut self, id: &str) {
        let args = crate::support::on_kafka_at(&self.broker, &self.topic, &self.consul.url(), id, &self.data, &[]);
        let service = Service::start_as_any(crate::support::nth_user(id, &self.users), "lending", &args);
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
    let mut lending = Lending::new(crate::support::brokers(), Vec::new()).await;
    lending.start_instance("lending-1");
    lending.start_instance("lending-2");
    let first = lending.writer().await;

    for n in 0..3 {
        lending
            .command("/members", json!({"id": format!("rich-{n}"), "balance": RICH}))
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

    check_loans(&lending, &survivor, &(0..LOANS).collect::<Vec<_>>(), RICH, false).await;
    let _ = std::fs::remove_dir_all(&lending.data);
}

/// Every loan in `loans` ends, as `survivor` reads them: lent, or released
/// after a declined or refused charge; each step once, and every member
/// charged once per loan lent; a rich member began with `rich`.
///
/// With `timeouts_allowed`, a loan the plan would lend may instead have been
/// called off because its charge did not happen in time (the process's
/// deadline, which a long outage can pass): then its copy is released and
/// its member was not charged, or was refunded.
async fn check_loans(lending: &Lending, survivor: &str, loans: &[usize], rich: u64, timeouts_allowed: bool) {
    let start = Instant::now();
    let mut copies = BTreeMap::new();
    while copies.len() < loans.len() {
        for &n in loans {
            if copies.contains_key(&n) {
                continue;
            }
            let copy = lending.get(survivor, &format!("/copies/copy-{n}")).await;
            let ended = about(&copy, &format!("loan-{n}"))
                .iter()
                .any(|t| t == "CopyLent" || t == "CopyReleased");
            if ended {
                copies.insert(n, copy);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "loans not finished after 90 s: {:?} of {loans:?} done",
            copies.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut charged: BTreeMap<String, u64> = BTreeMap::new();
    for (n, copy) in &copies {
        let loan = format!("loan-{n}");
        let (member, planned) = plan(*n);
        let steps = about(copy, &loan);
        let lent = steps.last().is_some_and(|t| t == "CopyLent");
        assert!(
            lent == planned || (timeouts_allowed && planned && !lent),
            "copy-{n}: {steps:?}, though the plan says {}",
            if planned { "lent" } else { "released" }
        );
        let expected = if lent {
            ["CopyReserved", "CopyLent"]
        } else {
            ["CopyReserved", "CopyReleased"]
        };
        assert_eq!(steps, expected, "copy-{n}: each step once");
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
            let stream = lending.get(survivor, &format!("/members/{member}")).await;
            let steps = about(&stream, &loan);
            if lent {
                assert_eq!(steps, ["MemberCharged"], "{member}, {loan}: charged once");
            } else if planned {
                // Called off: never charged, or charged too late and
                // refunded.
                assert!(
                    steps.is_empty() || steps == ["MemberCharged", "MemberRefunded"],
                    "{member}, {loan}: released, yet {steps:?}"
                );
            } else if timeouts_allowed && steps.is_empty() {
                // Called off before the charge was even tried.
            } else {
                assert_eq!(steps, ["ChargeDeclined"], "{member}, {loan}: declined once");
            }
            if lent {
                *charged.entry(member).or_default() += FEE;
            }
        }
    }
    for (member, paid) in charged {
        let stream = lending.get(survivor, &format!("/members/{member}")).await;
        assert_eq!(
            stream["state"]["Active"]["balance"].as_u64(),
            Some(rich - paid),
            "{member}'s balance"
        );
    }
}

impl crate::nemesis::Processes for Lending {
    fn crash(&mut self, id: &str) {
        self.instances.remove(id).expect("the victim runs").crash();
    }
    fn restart(&mut self, id: &str) {
        self.start_instance(id);
    }
    fn pid(&self, id: &str) -> u32 {
        self.instances[id].pid()
    }
    fn url(&self, id: &str) -> Option<String> {
        self.instances.get(id).map(|s| s.url.clone())
    }
    fn consul(&self) -> &ConsulDouble {
        &self.consul
    }
}

/// How a reservation sent during the faults ended for its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// Answered 2xx.
    Done,
    /// No instance took it within the time allowed: each said it stored
    /// nothing (503 with `x-bookshelf-not-owner`) or refused the connection.
    Refused,
    /// It may or may not have been stored: no answer in time, or a 503
    /// without that header.
    Unknown,
}

/// Sends one reservation to the instances listed at `urls` in turn until
/// one takes it, for up to 20 s; never sends it again once an answer left
/// its outcome unknown (the client has no idempotency key to send).
async fn reserve_once(http: &reqwest::Client, urls: &std::sync::Mutex<Vec<String>>, n: usize) -> (Sent, String) {
    let (member, _) = plan(n);
    let body = json!({"loan": format!("loan-{n}"), "member": member, "fee": FEE});
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(20) {
        let targets = urls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for url in targets {
            match http
                .post(format!("{url}/copies/copy-{n}/reserve"))
                .json(&body)
                .send()
                .await
            {
                Ok(answer) if answer.status().is_success() => return (Sent::Done, String::new()),
                Ok(answer)
                    if answer.status() == StatusCode::SERVICE_UNAVAILABLE
                        && answer.headers().contains_key("x-bookshelf-not-owner") =>
                {
                    last = answer.text().await.unwrap_or_default();
                }
                Ok(answer) => {
                    let status = answer.status();
                    let text = answer.text().await.unwrap_or_default();
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "reserve copy-{n}: {text}");
                    return (Sent::Unknown, text);
                }
                Err(error) if error.is_connect() => last = error.to_string(),
                Err(error) => return (Sent::Unknown, error.to_string()),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (Sent::Refused, last)
}

/// The fault suite over the loan process: two `lending` instances (each as
/// its own Unix user) on a broker of their own and the Consul double;
/// reservations sent all along while the nemesis kills and restarts,
/// pauses, and cuts off the instances, and restarts the broker and the
/// Consul agent. Then every loan whose reservation was acknowledged ends
/// right, with each step (charge, lend or release) once; one whose outcome
/// is unknown either did not happen at all or ended the same way; one
/// refused left nothing; every member's balance is its charges.
/// (`BOOKSHELF_FAULT_SECONDS`, default 30, and `BOOKSHELF_FAULT_SEED` as
/// for the books' suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_loan_ends_right_under_the_nemesis() {
    let (seed, seconds) = crate::nemesis::seed_and_seconds(30);
    let broker = crate::nemesis::broker();
    let mut lending = Lending::new(broker.address(), crate::support::fault_users()).await;
    lending.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    lending.start_instance("lending-1");
    lending.start_instance("lending-2");
    lending.writer().await;
    // Enough copies for a reservation every 70 ms or so all along, and
    // enough money for the rich to pay for every one.
    let copies = (seconds as usize * 14).max(400);
    let rich = RICH.max(FEE * copies as u64);
    for n in 0..3 {
        lending
            .command("/members", json!({"id": format!("rich-{n}"), "balance": rich}))
            .await;
    }
    lending.command("/members", json!({"id": "poor", "balance": 1})).await;
    for n in 0..copies {
        lending.command("/copies", json!({"id": format!("copy-{n}")})).await;
    }

    let urls = Arc::new(std::sync::Mutex::new(
        lending.instances.values().map(|s| s.url.clone()).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (http, urls, stop) = (lending.http.clone(), Arc::clone(&urls), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for n in 0..copies {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let (outcome, detail) = reserve_once(&http, &urls, n).await;
                sent.push((n, outcome, detail));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        })
    };
    let ids: Vec<String> = lending.instances.keys().cloned().collect();
    let mut nemesis = crate::nemesis::Nemesis::new(lending, broker, ids);
    let injected = nemesis
        .run(seed, seconds, |lending| {
            *urls.lock().unwrap_or_else(|p| p.into_inner()) =
                lending.instances.values().map(|s| s.url.clone()).collect();
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = client.await.expect("the client");
    let lending = &nemesis.processes;
    let count = |outcome: Sent| sent.iter().filter(|s| s.1 == outcome).count();
    println!(
        "lending under the nemesis (seed {seed}): {} faults; reservations {} done, {} refused, {} unknown",
        injected.len(),
        count(Sent::Done),
        count(Sent::Refused),
        count(Sent::Unknown)
    );

    // Once the faults are over, one instance writes the topic again; its
    // loan process finishes what was under way. A reservation whose outcome
    // is unknown may still land meanwhile (its record held by the
    // producer): it is looked for after a pause.
    let writer = lending.writer().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut loans = Vec::new();
    for (n, outcome, detail) in &sent {
        match outcome {
            Sent::Done => loans.push(*n),
            Sent::Refused | Sent::Unknown => {
                let copy = lending.get(&writer, &format!("/copies/copy-{n}")).await;
                let steps = about(&copy, &format!("loan-{n}"));
                if *outcome == Sent::Refused {
                    assert!(steps.is_empty(), "copy-{n} refused ({detail}) has {steps:?}");
                } else if !steps.is_empty() {
                    loans.push(*n);
                }
            }
        }
    }
    assert!(count(Sent::Done) >= 20, "the loans went on under the faults");
    check_loans(lending, &writer, &loans, rich, true).await;
    let _ = std::fs::remove_dir_all(&lending.data);
}
