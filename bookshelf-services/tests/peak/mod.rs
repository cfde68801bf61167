//! The process's own resident memory, for the tests that measure what a
//! projection holds. Linux only.

/// A field of `/proc/self/status` in KiB, such as `VmRSS:` or `VmHWM:` (the
/// peak). Linux only.
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable on Linux");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the process's peak resident memory (`VmHWM`) to what it holds now.
pub fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS through /proc/self/clear_refs");
}
