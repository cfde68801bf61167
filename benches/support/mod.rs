//! What the bench files share.

/// How many events a bench folds: 1,000,000 unless `BOOKSHELF_BENCH_EVENTS`
/// says otherwise (the test suite smoke-runs the benches on a few thousand).
pub fn events() -> u64 {
    std::env::var("BOOKSHELF_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}
