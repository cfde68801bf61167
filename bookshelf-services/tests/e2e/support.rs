//! Running the bookshelf's services as real processes, for end-to-end
//! tests: the binaries cargo builds for this crate's tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Kafka brokers the tests use: `KAFKA_BROKERS`, set by
/// `scripts/test.sh`, which starts tansu. A test that needs them and finds
/// none fails saying so.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| {
        panic!("this test needs a Kafka-protocol broker: run scripts/test.sh, which starts tansu, or set KAFKA_BROKERS")
    })
}

/// The flags of one instance of a service on Kafka that finds the others
/// through Consul: the broker, `topic`, the Consul agent, its instance id,
/// its data directory, a 2 s check TTL (so that a killed instance leaves the
/// list quickly), and `more`.
pub fn on_kafka(topic: &str, consul: &str, id: &str, data: &std::path::Path, more: &[&str]) -> Vec<String> {
    on_kafka_at(&brokers(), topic, consul, id, data, more)
}

/// As [`on_kafka`], on the broker at `broker`.
pub fn on_kafka_at(
    broker: &str,
    topic: &str,
    consul: &str,
    id: &str,
    data: &std::path::Path,
    more: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--broker",
        broker,
        "--topic",
        topic,
        "--consul",
        consul,
        "--id",
        id,
        "--data",
        &data.display().to_string(),
        "--check-ttl-ms",
        "2000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

/// An example running as its own process; killed when dropped.
///
/// It runs in a working directory of its own (removed when dropped), so
/// that what a service keeps in its default data directory stays apart
/// from other tests and from the checkout.
pub struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The working directory, when this `Service` made it.
    scratch: Option<PathBuf>,
}

/// The binary of service `name`, as cargo built it for these tests.
fn binary(name: &str) -> PathBuf {
    let path = match name {
        "authors" => env!("CARGO_BIN_EXE_authors"),
        "books" => env!("CARGO_BIN_EXE_books"),
        "changes" => env!("CARGO_BIN_EXE_changes"),
        "gateway" => env!("CARGO_BIN_EXE_gateway"),
        "last_read" => env!("CARGO_BIN_EXE_last_read"),
        "lending" => env!("CARGO_BIN_EXE_lending"),
        "load" => env!("CARGO_BIN_EXE_load"),
        other => panic!("no service binary named {other}"),
    };
    PathBuf::from(path)
}

impl Service {
    /// Starts example `name` with `args` on a free port, and waits until it
    /// prints the URL it listens on.
    pub fn start<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Service {
        let scratch = std::env::temp_dir().join(format!("bookshelf-service-{}", uuid::Uuid::new_v4().simple()));
        let mut service = Service::start_in(&scratch, name, args);
        service.scratch = Some(scratch);
        service
    }

    /// [`Service::start_as`] when `uid` names a user, [`Service::start`]
    /// otherwise.
    pub fn start_as_any<S: AsRef<std::ffi::OsStr>>(uid: Option<u32>, name: &str, args: &[S]) -> Service {
        match uid {
            Some(uid) => Service::start_as(uid, name, args),
            None => Service::start(name, args),
        }
    }

    /// Starts example `name` with `args` on a free port as the Unix user
    /// `uid` (one of [`fault_users`]), so that firewall rules can single
    /// its traffic out: from a copy of the binary that user can run, in a
    /// working directory it can write.
    pub fn start_as<S: AsRef<std::ffi::OsStr>>(uid: u32, name: &str, args: &[S]) -> Service {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let open = |path: &std::path::Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("cannot open {} to the instances' users: {e}", path.display()))
        };
        // The build's own directory may not be reachable by other users.
        let shared = std::env::temp_dir().join(format!("bookshelf-e2e-bin-{}", std::process::id()));
        std::fs::create_dir_all(&shared).expect("a directory for the binaries");
        open(&shared, 0o755);
        let copy = shared.join(name);
        if !copy.exists() {
            let staged = shared.join(format!("{name}.{}", uuid::Uuid::new_v4().simple()));
            std::fs::copy(binary(name), &staged).expect("a copy of the binary");
            open(&staged, 0o755);
            // Renamed into place whole: tests starting instances at once
            // never run a half-written copy.
            std::fs::rename(&staged, &copy).expect("the copy in place");
        }
        let scratch = std::env::temp_dir().join(format!("bookshelf-service-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&scratch).expect("a working directory for the service");
        open(&scratch, 0o1777);
        let mut command = Command::new(&copy);
        command
            .uid(uid)
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("DATABASE_URL")
            .env("HOME", &scratch)
            .args(["--port", "0"])
            .args(args);
        let mut service = Service::launch(&scratch, name, command);
        service.scratch = Some(scratch);
        service
    }

    /// Starts example `name` with `args` in working directory `dir` (made
    /// if missing, kept when the service is dropped): for a service that is
    /// restarted on the data it kept.
    pub fn start_in<S: AsRef<std::ffi::OsStr>>(dir: &std::path::Path, name: &str, args: &[S]) -> Service {
        let mut command = Command::new(binary(name));
        // A service finds Consul from CONSUL_HTTP_ADDR too: only the Consul
        // a test names.
        command
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("DATABASE_URL")
            .args(["--port", "0"])
            .args(args);
        Service::launch(dir, name, command)
    }

    /// Starts example `name` with exactly `args` (no `--port 0` added) and
    /// the environment variables `env`, in a working directory of its own.
    pub fn start_verbatim(name: &str, args: &[&str], env: &[(&str, &str)]) -> Service {
        let scratch = std::env::temp_dir().join(format!("bookshelf-service-{}", uuid::Uuid::new_v4().simple()));
        let mut command = Command::new(binary(name));
        command
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("DATABASE_URL")
            .args(args)
            .envs(env.iter().copied());
        let mut service = Service::launch(&scratch, name, command);
        service.scratch = Some(scratch);
        service
    }

    fn launch(dir: &std::path::Path, name: &str, mut command: Command) -> Service {
        std::fs::create_dir_all(dir).expect("a working directory for the service");
        let mut child = command
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (found, url) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let _ = found.send(url.trim_end_matches('/').to_owned());
                }
            }
        });
        let url = url
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("example {name} did not say where it listens within 30 s"));
        Service {
            child,
            url,
            scratch: None,
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it
    /// exited successfully.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "could not send SIGTERM to {pid}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting on the child") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the service did not stop within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Service {
    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL): no deregistration, no clean-up,
    /// as a crash would.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs example `name` with `args` to the end; returns whether it succeeded
/// and what it printed.
pub fn run(name: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(binary(name))
        .env_remove("DATABASE_URL")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run example {name}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Runs example `name` with `args` in working directory `dir` to the end;
/// returns whether it succeeded and what it wrote to stderr.
pub fn run_in(dir: &std::path::Path, name: &str, args: &[&str]) -> (bool, String) {
    std::fs::create_dir_all(dir).expect("a working directory");
    let output = Command::new(binary(name))
        .env_remove("DATABASE_URL")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run example {name}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(scratch) = &self.scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

/// The JSON answer of `GET url`.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Polls `probe` every 50 ms until it returns `Some`, for up to `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds a book titled `title` through the service or gateway at `url`: its
/// id.
pub async fn add_book(http: &reqwest::Client, url: &str, title: &str) -> String {
    let added: serde_json::Value = http
        .post(format!("{url}/books"))
        .json(&serde_json::json!({"title": title, "author": "Somebody", "isbn": "9780441013593"}))
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("JSON");
    added["id"].as_str().expect("an id").to_owned()
}

/// Marks book `id` read through the service or gateway at `url`, and checks
/// it was.
pub async fn read_book(http: &reqwest::Client, url: &str, id: &str) {
    let read = http
        .post(format!("{url}/books/{id}/read"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(read.status(), 200);
}

/// Makes `dir` (when `users` is not empty) a directory every one of those
/// users can write in, for the data of instances run as them.
pub fn open_to(users: bool, dir: &std::path::Path) {
    if users {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).expect("the data directory");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))
            .expect("the data directory open to the instances' users");
    }
}

/// The uid of the `N`th of `users` for instance `PREFIX-N`, if any.
pub fn nth_user(id: &str, users: &[(String, u32)]) -> Option<u32> {
    let n: usize = id.rsplit('-').next()?.parse().ok()?;
    users.get(n.checked_sub(1)?).map(|user| user.1)
}

/// The Unix users network-fault tests run instances as, with their uids:
/// `BOOKSHELF_FAULT_USERS`, which `scripts/test.sh` sets through
/// `scripts/fault-env.sh` (it makes them, and installs nftables). A test
/// that needs them and finds none fails saying so.
pub fn fault_users() -> Vec<(String, u32)> {
    let names = std::env::var("BOOKSHELF_FAULT_USERS")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "this test cuts instances off the network with nftables rules per Unix user: run scripts/test.sh, \
             or export what scripts/fault-env.sh prints (as root)"
            )
        });
    names
        .split(',')
        .map(|name| {
            let output = Command::new("id").args(["-u", name]).output().expect("id runs");
            let uid = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("no Unix user {name}: run scripts/fault-env.sh"));
            (name.to_owned(), uid)
        })
        .collect()
}

/// Firewall rules of one test, in an nftables table of its own (removed,
/// with every rule, when dropped): every connection a chosen user opens is
/// marked with its uid, so that a cut can drop both directions of that
/// user's connections to a loopback port, as a real network cut would
/// (the answers of a server to that user included).
pub struct Firewall {
    table: String,
}

impl Firewall {
    /// Marks the connections of each of `uids` from now on.
    pub fn new(uids: &[u32]) -> Firewall {
        let table = format!(
            "bookshelf_e2e_{}_{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let firewall = Firewall { table };
        let table = firewall.table.as_str();
        firewall.nft(&["add", "table", "inet", table]);
        firewall.nft(&[
            "add",
            "chain",
            "inet",
            table,
            "track",
            "{ type filter hook output priority -10 ; policy accept ; }",
        ]);
        firewall.nft(&[
            "add",
            "chain",
            "inet",
            table,
            "cuts",
            "{ type filter hook output priority 0 ; policy accept ; }",
        ]);
        for uid in uids {
            let uid = uid.to_string();
            firewall.nft(&[
                "add", "rule", "inet", table, "track", "meta", "skuid", &uid, "ct", "state", "new", "ct", "mark",
                "set", &uid,
            ]);
        }
        firewall
    }

    fn nft(&self, args: &[&str]) {
        let output = Command::new("nft")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("this test needs nft (nftables): run scripts/test.sh, which installs it ({e})"));
        assert!(
            output.status.success(),
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Drops every packet of the connections user `uid` opened to
    /// 127.0.0.1:`port`, both ways, and every new one.
    pub fn cut(&self, uid: u32, port: u16) {
        let (uid, port) = (uid.to_string(), port.to_string());
        for direction in ["dport", "sport"] {
            self.nft(&[
                "add",
                "rule",
                "inet",
                &self.table,
                "cuts",
                "ct",
                "mark",
                &uid,
                "tcp",
                direction,
                &port,
                "drop",
            ]);
        }
    }

    /// Takes every cut away.
    pub fn heal(&self) {
        self.nft(&["flush", "chain", "inet", &self.table, "cuts"]);
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

/// The port of `url` (`http://host:port...` or `host:port`).
pub fn port_of(url: &str) -> u16 {
    let authority = url.split("://").last().unwrap_or(url).split('/').next().unwrap_or(url);
    authority
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}
