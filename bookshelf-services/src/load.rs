//! A load generator for the bookshelf, bounded in requests and in time, that
//! checks every answer and, at the end, that no write was lost or doubled.
//!
//! ```text
//! cargo run --release --example load -- --target http://127.0.0.1:8080 --requests 20000 --concurrency 32
//! ```
//!
//! It adds `--books` books, then sends `--requests` requests from
//! `--concurrency` connections: half mark a book read, two in five ask for
//! the last read books, one in ten reads a book. Each answer is checked (the
//! status, and the body's shape and ids). At the end it reads every book back
//! and compares its read count with the reads that were acknowledged. It
//! prints requests per second and latency percentiles, and exits non-zero
//! when any request failed, was answered wrongly, or a write went missing.
//! With `--rate R` it offers R requests per second at even intervals and
//! measures each latency from when the request was due.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Load for the bookshelf, with every answer checked.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The base URL to send to: the gateway, or a service directly.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// How many requests to send after the books are added.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// How many requests are in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How many books to add first.
    #[arg(long, default_value_t = 200)]
    books: usize,
    /// Stop sending after this many seconds, even if requests are left.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Print the summary as one JSON object too.
    #[arg(long)]
    json: bool,
    /// Offer this many requests per second, at even intervals, instead of
    /// sending as fast as answers come. A request sent late because its
    /// worker was still waiting for an answer counts its latency from when
    /// it was due, so a slow answer shows in the ones it held up too (no
    /// coordinated omission). `--concurrency` bounds the requests in flight.
    #[arg(long)]
    rate: Option<f64>,
    /// What to send: `mixed` (reads, last-read queries and book reads, as
    /// above) or `commands` (only `POST /books/{id}/read`, for a service
    /// that serves the books alone).
    #[arg(long, value_enum, default_value_t = Mix::Mixed)]
    mix: Mix,
}

/// The requests sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mix {
    Mixed,
    Commands,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Read,
    LastRead,
    GetBook,
}

impl Kind {
    /// Half reads, two in five last-read queries, one in ten book reads,
    /// spread evenly by a hash of the request's number.
    fn of(n: u64) -> Kind {
        match mix(n) % 10 {
            0..=4 => Kind::Read,
            5..=8 => Kind::LastRead,
            _ => Kind::GetBook,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Read => "POST /books/{id}/read",
            Kind::LastRead => "GET /last-read",
            Kind::GetBook => "GET /books/{id}",
        }
    }
}

/// SplitMix64: a well-spread hash of `n`, for choosing without a generator.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    latencies: HashMap<Kind, Histogram<u64>>,
    /// Acknowledged reads, per book index.
    reads: HashMap<usize, u64>,
    wrong: u64,
    failed: u64,
    samples: Vec<String>,
}

impl Tally {
    fn problem(&mut self, failed: bool, what: String) {
        if failed {
            self.failed += 1;
        } else {
            self.wrong += 1;
        }
        if self.samples.len() < 10 {
            self.samples.push(what);
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let target = args.target.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;

    // The books, added one after another.
    let mut ids = Vec::with_capacity(args.books);
    for n in 0..args.books {
        let response = client
            .post(format!("{target}/books"))
            .json(&json!({ "title": format!("Load test book {n}"), "author": format!("Author {}", n % 17), "isbn": "9780441013593" }))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body["id"].as_str() {
            Some(id) if status == reqwest::StatusCode::CREATED => ids.push(id.to_owned()),
            _ => return Err(format!("adding book {n} answered {status}: {body}").into()),
        }
    }
    let ids = Arc::new(ids);

    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (client, target, ids, next, tally) =
            (client.clone(), target.clone(), ids.clone(), next.clone(), tally.clone());
        let requests = args.requests;
        let interval = args.rate.filter(|rate| *rate > 0.0).map(|rate| 1.0 / rate);
        let wanted = args.mix;
        workers.push(tokio::spawn(async move {
            let mut mine = Tally::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests || Instant::now() >= deadline {
                    break;
                }
                let kind = match wanted {
                    Mix::Mixed => Kind::of(n),
                    Mix::Commands => Kind::Read,
                };
                let book = (mix(n ^ 0x5151) % ids.len().max(1) as u64) as usize;
                let sent = match interval {
                    // Late because this worker's last request took long: the
                    // wait counts. Early: it waits for the timer, whose
                    // lateness (up to a millisecond) is the generator's own
                    // and does not.
                    Some(interval) => {
                        let due = started + Duration::from_secs_f64(interval * n as f64);
                        if Instant::now() >= due {
                            due
                        } else {
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        }
                    }
                    None => Instant::now(),
                };
                let outcome = send(&client, &target, kind, ids.get(book).map(String::as_str)).await;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                mine.latencies
                    .entry(kind)
                    .or_insert_with(histogram)
                    .saturating_record(micros);
                match outcome {
                    Ok(()) => {
                        if kind == Kind::Read {
                            *mine.reads.entry(book).or_default() += 1;
                        }
                    }
                    Err((failed, what)) => mine.problem(failed, format!("request {n} ({}): {what}", kind.name())),
                }
            }
            let mut all = tally.lock().unwrap_or_else(|p| p.into_inner());
            for (kind, seen) in mine.latencies {
                let merged = all.latencies.entry(kind).or_insert_with(histogram);
                merged.add(&seen).expect("same bounds");
            }
            for (book, reads) in mine.reads {
                *all.reads.entry(book).or_default() += reads;
            }
            all.wrong += mine.wrong;
            all.failed += mine.failed;
            let room = 10usize.saturating_sub(all.samples.len());
            all.samples.extend(mine.samples.into_iter().take(room));
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    let tally = Arc::try_unwrap(tally)
        .map_err(|_| "workers still hold the tally")?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());

    // Every acknowledged read is on its book, once.
    let mut missing = 0u64;
    let mut extra = 0u64;
    for (index, id) in ids.iter().enumerate() {
        let expected = tally.reads.get(&index).copied().unwrap_or(0);
        let body: Value = client.get(format!("{target}/books/{id}")).send().await?.json().await?;
        let Some(recorded) = body["reads"].as_u64() else {
            return Err(format!("book {id} has no read count: {body}").into());
        };
        match recorded.cmp(&expected) {
            std::cmp::Ordering::Less => missing += expected - recorded,
            // More than acknowledged is possible only for a request that failed
            // after the write (a timeout): count it only when none failed.
            std::cmp::Ordering::Greater if tally.failed == 0 => extra += recorded - expected,
            _ => {}
        }
    }

    let mut all = histogram();
    for histogram in tally.latencies.values() {
        all.add(histogram).expect("same bounds");
    }
    let sent = all.len();
    let rate = sent as f64 / elapsed.as_secs_f64();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "{sent} requests in {:.2} s over {} connections to {target}: {rate:.0} requests/s",
        elapsed.as_secs_f64(),
        args.concurrency
    );
    println!(
        "{:<24} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    let mut kinds: Vec<_> = tally.latencies.iter().collect();
    kinds.sort_by_key(|(kind, _)| **kind);
    for (kind, h) in kinds.into_iter().map(|(k, h)| (k.name(), h)).chain([("all", &all)]) {
        println!(
            "{kind:<24} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            h.len(),
            ms(h, 0.5),
            ms(h, 0.9),
            ms(h, 0.99),
            h.max() as f64 / 1e3
        );
    }
    let acknowledged: u64 = tally.reads.values().sum();
    println!(
        "failed: {}, answered wrongly: {}, acknowledged reads: {acknowledged}, missing from the books: {missing}, recorded beyond those acknowledged: {extra}",
        tally.failed, tally.wrong
    );
    for sample in &tally.samples {
        println!("  {sample}");
    }
    if sent < args.requests {
        println!("stopped by --max-seconds after {sent} of {} requests", args.requests);
    }
    if args.json {
        let summary = json!({
            "target": target, "requests": sent, "seconds": elapsed.as_secs_f64(), "requests_per_second": rate,
            "p50_ms": ms(&all, 0.5), "p90_ms": ms(&all, 0.9), "p99_ms": ms(&all, 0.99), "max_ms": all.max() as f64 / 1e3,
            "offered_per_second": args.rate,
            "commands": tally.latencies.get(&Kind::Read).map(|h| json!({
                "p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99), "max_ms": h.max() as f64 / 1e3,
            })),
            "failed": tally.failed, "wrong": tally.wrong, "missing": missing, "extra": extra,
        });
        println!("{summary}");
    }
    if tally.failed + tally.wrong + missing + extra > 0 {
        return Err("some requests failed, were answered wrongly, or writes went missing".into());
    }
    Ok(())
}

/// Sends one request and checks its answer: `Err((failed, what))`, where
/// `failed` means no HTTP answer at all.
async fn send(client: &reqwest::Client, target: &str, kind: Kind, book: Option<&str>) -> Result<(), (bool, String)> {
    let book = book.ok_or((false, "no books to use".to_owned()))?;
    let request = match kind {
        Kind::Read => client.post(format!("{target}/books/{book}/read")),
        Kind::LastRead => client.get(format!("{target}/last-read")),
        Kind::GetBook => client.get(format!("{target}/books/{book}")),
    };
    let response = request.send().await.map_err(|e| (true, e.to_string()))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| (false, format!("{status} with a body that is not JSON: {e}")))?;
    let fine = status == reqwest::StatusCode::OK
        && match kind {
            Kind::Read => body["id"] == book && body["version"].as_u64().is_some_and(|v| v >= 2),
            Kind::LastRead => body.as_array().is_some_and(|list| {
                list.len() <= 5
                    && list
                        .iter()
                        .all(|entry| entry["id"].is_string() && entry["read_at"].is_string())
            }),
            Kind::GetBook => body["id"] == book && body["reads"].is_u64(),
        };
    if fine {
        Ok(())
    } else {
        Err((false, format!("{status}: {body}")))
    }
}
