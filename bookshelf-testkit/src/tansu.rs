//! A tansu broker of a test's own, with its records in a file, that the
//! test can kill and start again on the same port and file: for tests that
//! take the broker away, which must not disturb the one broker every other
//! test shares (`KAFKA_BROKERS`).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tansu process of its own (`TANSU_BIN`, which `scripts/test.sh` sets),
/// storing in `tansu.db` in a directory of its own (or in memory); killed
/// when dropped.
pub struct OwnBroker {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// tansu's `--storage-engine`.
    storage: &'static str,
}

impl OwnBroker {
    /// Starts one on a free 127.0.0.1 port, storing in a file; panics,
    /// saying what is missing, without `TANSU_BIN`.
    pub fn start() -> OwnBroker {
        OwnBroker::start_with("sqlite://tansu.db")
    }

    /// Starts one that keeps its records in memory: a restart loses them,
    /// but it keeps answering through long runs (tansu 0.6 on file storage
    /// stopped answering for tens of seconds after minutes of the fault
    /// suite's load).
    pub fn start_in_memory() -> OwnBroker {
        OwnBroker::start_with("memory://tansu/")
    }

    /// Whether a restart keeps the records.
    pub fn keeps_records(&self) -> bool {
        self.storage.starts_with("sqlite:")
    }

    fn start_with(storage: &'static str) -> OwnBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free loopback port");
        let dir = std::env::temp_dir().join(format!("bookshelf-tansu-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the broker's directory");
        let mut broker = OwnBroker {
            port,
            dir,
            child: None,
            storage,
        };
        broker.up();
        broker
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker's process where it is (SIGSTOP): it keeps its
    /// connections and answers nothing until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker go on (SIGCONT): it answers what it was sent
    /// meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the broker runs").id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    /// Starts the broker (again) on its port and file, and waits until it
    /// listens. (tansu 0.6 reads a `sqlite://` path relative to its working
    /// directory, even one that looks absolute, so it runs in its
    /// directory.)
    pub fn up(&mut self) {
        self.kill();
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
            panic!("this test runs a broker of its own: run scripts/test.sh, or set TANSU_BIN to a tansu binary")
        });
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .current_dir(&self.dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", self.storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let began = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
