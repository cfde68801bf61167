//! The fault suite's nemesis, shared by every service put under it: seeded
//! faults on real processes (each instance run as its own Unix user, on a
//! broker of their own and the Consul double), one or two at a time, and
//! the record of when each began and ended.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bookshelf_testkit::consul::ConsulDouble;
use bookshelf_testkit::tansu::OwnBroker;
use rand::{Rng, SeedableRng};

use crate::support::{fault_users, port_of, Firewall};

/// One fault the nemesis injects, on one instance where it names one.
#[derive(Clone, Debug)]
pub enum Fault {
    /// SIGKILL, then a restart on the same data.
    Kill(String),
    /// SIGSTOP, then SIGCONT.
    Pause(String),
    /// Both directions of its connections to the broker dropped.
    CutFromBroker(String),
    /// Both directions of its connections to Consul dropped.
    CutFromConsul(String),
    /// Its connections to the other instances, and theirs to it, dropped.
    CutFromPeers(String),
    /// The Consul double forgets every registration, as an agent restarted
    /// without its data.
    ConsulRestarted,
    /// The broker killed (SIGKILL), then started again on its file.
    BrokerRestarted,
    /// Two faults at once.
    Both(Box<Fault>, Box<Fault>),
}

impl Fault {
    /// A fault of a kind `rng` picks: on `victim` when it is an instance's;
    /// the broker restarted only when `broker_restarts`.
    fn pick(rng: &mut impl Rng, victim: &str, broker_restarts: bool) -> Fault {
        let victim = victim.to_owned();
        match rng.random_range(0..if broker_restarts { 7 } else { 6 }) {
            0 => Fault::Kill(victim),
            1 => Fault::Pause(victim),
            2 => Fault::CutFromBroker(victim),
            3 => Fault::CutFromConsul(victim),
            4 => Fault::CutFromPeers(victim),
            5 => Fault::ConsulRestarted,
            _ => Fault::BrokerRestarted,
        }
    }

    /// Two faults on two instances, or one on an instance with the broker
    /// or the Consul agent restarted.
    fn two(rng: &mut impl Rng, ids: &[String], broker_restarts: bool) -> Fault {
        let first = rng.random_range(0..ids.len());
        let second = (first + rng.random_range(1..ids.len())) % ids.len();
        let mut one = Fault::pick(rng, &ids[first], broker_restarts);
        let mut other = Fault::pick(rng, &ids[second], broker_restarts);
        // One restart of the same thing at a time.
        if matches!(one, Fault::ConsulRestarted | Fault::BrokerRestarted) {
            one = Fault::Pause(ids[first].clone());
        }
        if matches!(other, Fault::ConsulRestarted) && broker_restarts {
            other = Fault::BrokerRestarted;
        }
        Fault::Both(Box::new(one), Box::new(other))
    }

    /// The fault's kind, for the figures.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::CutFromBroker(_) => "cut from the broker",
            Fault::CutFromConsul(_) => "cut from Consul",
            Fault::CutFromPeers(_) => "cut from the peers",
            Fault::ConsulRestarted => "Consul restarted",
            Fault::BrokerRestarted => "broker restarted",
            Fault::Both(..) => "two at once",
        }
    }
}

/// The instances of a service the nemesis works on.
pub trait Processes {
    /// Kills instance `id` at once (SIGKILL).
    fn crash(&mut self, id: &str);
    /// Starts instance `id` again, on the data it had.
    fn restart(&mut self, id: &str);
    /// The process id of instance `id`.
    fn pid(&self, id: &str) -> u32;
    /// Where instance `id` listens, while it runs.
    fn url(&self, id: &str) -> Option<String>;
    /// Their Consul agent.
    fn consul(&self) -> &ConsulDouble;
}

/// The seed and length of a run: `BOOKSHELF_FAULT_SEED` (a random one when
/// unset) and `BOOKSHELF_FAULT_SECONDS` (`default` when unset). It prints
/// both, and how to run the same faults again.
pub fn seed_and_seconds(default: u64) -> (u64, u64) {
    let seconds = std::env::var("BOOKSHELF_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let seed = std::env::var("BOOKSHELF_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("nemesis seed {seed}, {seconds} s (run it again with BOOKSHELF_FAULT_SEED={seed})");
    (seed, seconds)
}

/// Cuts the `victim`th of `instances` (each its Unix user's id and its
/// URL) off from the others, both ways: its connections to them and theirs
/// to it.
pub fn cut_from_peers(firewall: &Firewall, instances: &[(u32, String)], victim: usize) {
    let (uid, url) = &instances[victim];
    for (n, (other_uid, other_url)) in instances.iter().enumerate() {
        if n != victim {
            firewall.cut(*uid, port_of(other_url));
            firewall.cut(*other_uid, port_of(url));
        }
    }
}

/// The broker a suite runs on: one on file storage, which the nemesis
/// restarts; or, with `BOOKSHELF_FAULT_BROKER=memory` (for long runs), one
/// in memory, which it leaves running.
pub fn broker() -> OwnBroker {
    match std::env::var("BOOKSHELF_FAULT_BROKER").as_deref() {
        Ok("memory") => OwnBroker::start_in_memory(),
        _ => OwnBroker::start(),
    }
}

/// A fault injected, and when it began and ended.
pub type Injected = (Fault, Instant, Instant);

/// The nemesis: the processes, the broker they run on, the firewall, and
/// the Unix user each instance runs as.
pub struct Nemesis<P> {
    pub processes: P,
    broker: OwnBroker,
    firewall: Firewall,
    ids: Vec<String>,
    uids: Vec<u32>,
}

impl<P: Processes> Nemesis<P> {
    /// A nemesis over `processes`, which run on `broker`: the instances
    /// `ids`, the `i`th run as the `i`th user of [`fault_users`].
    pub fn new(processes: P, broker: OwnBroker, ids: Vec<String>) -> Nemesis<P> {
        let users = fault_users();
        let ids = ids.into_iter().zip(users.iter().map(|u| u.1)).collect();
        Nemesis::with_users(processes, broker, ids)
    }

    /// As [`Nemesis::new`], each instance with the uid it runs as (several
    /// may share one: a cut then takes them all).
    pub fn with_users(processes: P, broker: OwnBroker, ids: Vec<(String, u32)>) -> Nemesis<P> {
        let (ids, uids): (Vec<String>, Vec<u32>) = ids.into_iter().unzip();
        let mut distinct = uids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        Nemesis {
            processes,
            broker,
            firewall: Firewall::new(&distinct),
            ids,
            uids,
        }
    }

    fn uid_of(&self, id: &str) -> u32 {
        self.uids[self.ids.iter().position(|i| i == id).expect("an instance")]
    }

    fn signal(&self, id: &str, signal: &str) {
        let pid = self.processes.pid(id).to_string();
        let sent = std::process::Command::new("kill").args([signal, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    /// Cuts `id` off from the peers that run (one killed by the other fault
    /// of two has no port to cut).
    fn cut_from_peers(&self, id: &str) {
        let running: Vec<(&String, (u32, String))> = self
            .ids
            .iter()
            .filter_map(|id| Some((id, (self.uid_of(id), self.processes.url(id)?))))
            .collect();
        if let Some(victim) = running.iter().position(|(i, _)| *i == id) {
            let instances: Vec<(u32, String)> = running.into_iter().map(|(_, instance)| instance).collect();
            cut_from_peers(&self.firewall, &instances, victim);
        }
    }

    fn begin(&mut self, fault: &Fault) {
        match fault {
            Fault::Kill(id) => self.processes.crash(id),
            Fault::Pause(id) => self.signal(id, "-STOP"),
            Fault::CutFromBroker(id) => self.firewall.cut(self.uid_of(id), port_of(&self.broker.address())),
            Fault::CutFromConsul(id) => self
                .firewall
                .cut(self.uid_of(id), port_of(&self.processes.consul().url())),
            Fault::CutFromPeers(id) => self.cut_from_peers(id),
            Fault::ConsulRestarted => self.processes.consul().restart_agent(),
            Fault::BrokerRestarted => self.broker.kill(),
            Fault::Both(one, other) => {
                self.begin(one);
                self.begin(other);
            }
        }
    }

    fn end(&mut self, fault: &Fault) {
        match fault {
            Fault::Kill(id) => self.processes.restart(id),
            Fault::Pause(id) => self.signal(id, "-CONT"),
            Fault::CutFromBroker(_) | Fault::CutFromConsul(_) | Fault::CutFromPeers(_) => self.firewall.heal(),
            Fault::ConsulRestarted => {}
            Fault::BrokerRestarted => tokio::task::block_in_place(|| self.broker.up()),
            Fault::Both(one, other) => {
                self.end(other);
                self.end(one);
            }
        }
    }

    /// Injects seeded faults for `seconds`: each for 1 to 4 s, 1 to 2.5 s
    /// apart, one in four two at once (the broker restarted only when it
    /// keeps its records); `after` is called after each ends.
    pub async fn run(&mut self, seed: u64, seconds: u64, mut after: impl FnMut(&P)) -> Vec<Injected> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let began = Instant::now();
        let mut injected = Vec::new();
        while began.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2500))).await;
            let lasting = Duration::from_millis(rng.random_range(1000..4000));
            let restarts = self.broker.keeps_records();
            let fault = if rng.random_range(0..4) == 0 {
                Fault::two(&mut rng, &self.ids, restarts)
            } else {
                let victim = self.ids[rng.random_range(0..self.ids.len())].clone();
                Fault::pick(&mut rng, &victim, restarts)
            };
            println!("{:>6.1} s: {fault:?} for {lasting:?}", began.elapsed().as_secs_f64());
            let from = Instant::now();
            self.begin(&fault);
            tokio::time::sleep(lasting).await;
            self.end(&fault);
            after(&self.processes);
            injected.push((fault, from, Instant::now()));
        }
        injected
    }
}

/// Prints how much got done per second during each kind of fault, beside
/// between faults (from `began`), as `done_per_second(from, to)` counts it.
pub fn print_rates(injected: &[Injected], began: Instant, done_per_second: impl Fn(Instant, Instant) -> f64) {
    let mut rates: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut since = began;
    for (fault, from, to) in injected {
        for (kind, from, to) in [("no fault", since, *from), (fault.kind(), *from, *to)] {
            let seconds = to.saturating_duration_since(from).as_secs_f64();
            let rate = rates.entry(kind).or_default();
            rate.0 += done_per_second(from, to) * seconds;
            rate.1 += seconds;
        }
        since = *to;
    }
    let per_second = |(done, seconds): &(f64, f64)| done / seconds.max(0.001);
    let quiet = rates.get("no fault").map_or(0.0, per_second);
    for (kind, rate) in &rates {
        println!(
            "  {kind}: {:.1} s, {:.0}/s, {:.2} of without a fault",
            rate.1,
            per_second(rate),
            per_second(rate) / quiet.max(0.001)
        );
    }
}
