//! The Consul double driven by a standard Consul client library, py-consul
//! from PyPI (`tests/py/standard_client.py`), which `scripts/test.sh`
//! installs into a cached virtual environment and names in
//! `BOOKSHELF_PYTHON`.

use bookshelf_testkit::consul::ConsulDouble;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_client_registers_passes_reads_blocks_and_deregisters() {
    let python = std::env::var("BOOKSHELF_PYTHON").unwrap_or_else(|_| {
        panic!(
            "this test needs py-consul from PyPI: run scripts/test.sh, which installs it, \
             or set BOOKSHELF_PYTHON to a python that has it (scripts/python.sh prints one)"
        )
    });
    let double = ConsulDouble::start().await.expect("the Consul double starts");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/standard_client.py");
    let url = double.url();
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(python).arg(script).arg(url).output())
        .await
        .expect("the client runs")
        .expect("python starts");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "the standard client disagreed with the double:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK:"), "{stdout}");
}
