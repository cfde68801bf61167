//! Log lines written in batches by a thread of their own, woken by a timer
//! rather than by every line.
//!
//! A request's thread appends its formatted line to a shared buffer (a lock
//! and a copy, no system call, no thread woken); the writer thread takes the
//! whole buffer every [`INTERVAL`], or sooner once [`EARLY`] bytes wait, and
//! writes it in one go. No line is dropped: past [`LIMIT`] queued bytes a
//! request's thread waits for the writer. Dropping the [`Flush`] guard
//! writes what is queued and stops the thread; a line logged after that goes
//! straight to standard error.
//!
//! Why not `tracing_appender::non_blocking`: its writer thread is woken for
//! every line, and at tens of thousands of requests a second the gateway
//! spent more time on those wake-ups than on writing (a profile of the
//! gateway under wrk).
//!
//! The lines themselves are `tracing_subscriber`'s default format, with two
//! parts written faster: the fields ([`Fields`]) and the time ([`Time`]).
//! The text is the same (tested against the default formatter); formatting
//! the gateway's request line took about 13,600 instructions the default
//! way, a fifth of everything the gateway does for a request (callgrind).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait to be written.
pub const INTERVAL: Duration = Duration::from_millis(20);
/// Queued bytes that wake the writer before its time.
pub const EARLY: usize = 256 * 1024;
/// Queued bytes past which writers wait.
pub const LIMIT: usize = 16 * 1024 * 1024;

struct Queue {
    bytes: Vec<u8>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer thread early, or at close.
    work: Condvar,
    /// Wakes threads waiting for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves whole lines only: appends
        // are single `extend_from_slice` calls.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the log layer writes: cheap to clone, one per process.
#[derive(Clone)]
pub struct Batched(Arc<Shared>);

/// Writes what is queued and stops the writer thread when dropped.
pub struct Flush {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer thread that writes to `out`, and the handle that feeds it.
pub fn batched(mut out: impl Write + Send + 'static) -> (Batched, Flush) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            bytes: Vec::with_capacity(EARLY),
            closed: false,
        }),
        work: Condvar::new(),
        room: Condvar::new(),
    });
    let writer = Arc::clone(&shared);
    let thread = std::thread::Builder::new().name("logs".to_owned()).spawn(move || {
        let mut taken = Vec::with_capacity(EARLY);
        loop {
            let closed = {
                let mut queue = writer.lock();
                if !queue.closed && queue.bytes.len() < EARLY {
                    queue = writer
                        .work
                        .wait_timeout(queue, INTERVAL)
                        .map(|(queue, _)| queue)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                std::mem::swap(&mut queue.bytes, &mut taken);
                queue.closed
            };
            writer.room.notify_all();
            if !taken.is_empty() {
                // Logging has nowhere to report its own failure but here.
                let _ = out.write_all(&taken).and_then(|()| out.flush());
                taken.clear();
            }
            if closed {
                return;
            }
        }
    });
    let thread = thread.ok();
    if thread.is_none() {
        // No writer thread: every line goes straight to standard error.
        shared.lock().closed = true;
    }
    (Batched(shared.clone()), Flush { shared, thread })
}

impl Write for Batched {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut queue = self.0.lock();
        loop {
            if queue.closed {
                // After the guard is gone (or with no writer thread),
                // nothing would take the line from the queue.
                drop(queue);
                return std::io::stderr().write_all(line).map(|()| line.len());
            }
            if queue.bytes.len() < LIMIT {
                break;
            }
            self.0.work.notify_one();
            queue = self.0.room.wait(queue).unwrap_or_else(|p| p.into_inner());
        }
        queue.bytes.extend_from_slice(line);
        if queue.bytes.len() >= EARLY {
            self.0.work.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Batched {
    type Writer = Batched;
    fn make_writer(&'a self) -> Batched {
        self.clone()
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes an event's or a span's fields exactly as the default formatter
/// does (`message` first, then `name=value` separated by spaces, values as
/// `{:?}` shows them), but the common ones (text with nothing to escape,
/// integers, booleans) straight, not through `{:?}`. Everything else, and
/// every field when colours are on, goes to the default formatter's own
/// visitor.
pub struct Fields;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for Fields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut pending = PENDING.take();
        pending.clear();
        let mut visitor = FieldWriter {
            writer,
            empty: true,
            result: Ok(()),
            pending,
        };
        fields.record(&mut visitor);
        visitor.flush();
        PENDING.set(visitor.pending);
        visitor.result
    }
}

thread_local! {
    /// The text of the fields written the fast way, gathered to be written
    /// at once: each write to the formatter's writer goes through a `dyn`
    /// call, and a request's line took about 30 of them.
    static PENDING: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

struct FieldWriter<'writer> {
    writer: tracing_subscriber::fmt::format::Writer<'writer>,
    /// Nothing written yet: no space before the next field.
    empty: bool,
    result: std::fmt::Result,
    /// Fields written the fast way, not yet handed to `writer`.
    pending: String,
}

/// Text `{:?}` writes as it is between quotes (and that the default
/// formatter's escaping of terminal controls leaves alone): printable ASCII
/// but `"` and `\`.
fn plain(text: &str) -> bool {
    // Every byte looked at (no early exit), so that it runs many at a time.
    text.bytes().fold(true, |plain, b| {
        plain & (b' '..=b'~').contains(&b) & (b != b'"') & (b != b'\\')
    })
}

impl FieldWriter<'_> {
    /// Writes a field the fast way: `value` is what follows `name=` (or the
    /// whole of the message). `false`, with nothing written, when the field
    /// is one for the default visitor.
    fn fast(&mut self, field: &tracing::field::Field, value: &[&str]) -> bool {
        let name = field.name();
        // `log.` fields carry a `log` record's metadata: the default visitor
        // leaves them out. With colours on, names are styled.
        if name.starts_with("log.") || self.writer.has_ansi_escapes() {
            return false;
        }
        if self.result.is_err() {
            return true;
        }
        if !std::mem::take(&mut self.empty) {
            self.pending.push(' ');
        }
        if name != "message" {
            self.pending.push_str(name.strip_prefix("r#").unwrap_or(name));
            self.pending.push('=');
        }
        value.iter().for_each(|part| self.pending.push_str(part));
        true
    }

    /// Hands what was written the fast way to the formatter's writer.
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            if self.result.is_ok() {
                self.result = self.writer.write_str(&self.pending);
            }
            self.pending.clear();
        }
    }

    /// Hands the field to the default formatter's visitor.
    fn slow(&mut self, field: &tracing::field::Field, visit: impl FnOnce(&mut dyn tracing::field::Visit)) {
        use tracing_subscriber::field::VisitOutput;
        self.flush();
        if self.result.is_err() {
            return;
        }
        let mut visitor = tracing_subscriber::fmt::format::DefaultVisitor::new(self.writer.by_ref(), self.empty);
        visit(&mut visitor);
        self.result = visitor.finish();
        // It writes every field but the `log.` ones.
        self.empty &= field.name().starts_with("log.");
    }
}

impl tracing::field::Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let written = if !plain(value) {
            false
        } else if field.name() == "message" {
            self.fast(field, &[value])
        } else {
            self.fast(field, &["\"", value, "\""])
        };
        if !written {
            self.slow(field, |visitor| visitor.record_str(field, value));
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if !self.fast(field, &[itoa::Buffer::new().format(value)]) {
            self.slow(field, |visitor| visitor.record_u64(field, value));
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if !self.fast(field, &[itoa::Buffer::new().format(value)]) {
            self.slow(field, |visitor| visitor.record_i64(field, value));
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if !self.fast(field, &[if value { "true" } else { "false" }]) {
            self.slow(field, |visitor| visitor.record_bool(field, value));
        }
    }

    // Floats and the rest reach `record_debug` by the trait's defaults; an
    // error needs its own, for the default visitor lists its sources.
    fn record_error(&mut self, field: &tracing::field::Field, value: &(dyn std::error::Error + 'static)) {
        self.slow(field, |visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.slow(field, |visitor| visitor.record_debug(field, value));
    }
}

/// The time as the default formatter writes it (`2026-11-23T12:19:00.123456Z`,
/// UTC, microseconds), with the date and time of day worked out once a
/// second per thread rather than for every line.
pub struct Time;

impl tracing_subscriber::fmt::time::FormatTime for Time {
    fn format_time(&self, writer: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        write_timestamp(since_epoch, writer)
    }
}

thread_local! {
    /// The last second a line was written in, and its text up to the second.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Writes `since_epoch` as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
fn write_timestamp(since_epoch: Duration, out: &mut impl std::fmt::Write) -> std::fmt::Result {
    let seconds = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != seconds {
            let at = i64::try_from(seconds)
                .ok()
                .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
                .unwrap_or_default();
            *text = at.format("%Y-%m-%dT%H:%M:%S").to_string();
            *second = seconds;
        }
        // A million and the microseconds: seven digits, the last six wanted.
        let mut digits = itoa::Buffer::new();
        let fraction = &digits.format(1_000_000 + since_epoch.subsec_micros())[1..];
        out.write_str(text)?;
        out.write_char('.')?;
        out.write_str(fraction)?;
        out.write_char('Z')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what the writer thread writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `emit` logs, formatted without the time by the default
    /// formatter or with [`Fields`].
    fn formatted(fields: bool, emit: &dyn Fn()) -> String {
        let sink = Sink::default();
        let out = sink.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || out.clone());
        if fields {
            tracing::subscriber::with_default(builder.fmt_fields(Fields).finish(), emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        let text = sink.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[derive(Debug)]
    struct Failure(Option<Box<Failure>>);
    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(if self.0.is_some() { "outer \u{1b}[31m" } else { "inner" })
        }
    }
    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.0.as_deref().map(|inner| inner as _)
        }
    }

    #[test]
    fn the_fields_read_as_the_default_formatter_writes_them() {
        let emit = || {
            // The gateway's request line.
            tracing::info!(
                method = %"GET", path = "/last-read", status = 200u16, served_by = "last-read-8087",
                correlation_id = "7f0c2a", trace_id = "4bf92f3577b34da6a3ce929d0e0e4736", ms = 0.4125, "request"
            );
            // Text that must be escaped, or has more than ASCII.
            tracing::info!(
                quoted = "a \"b\"",
                back = "c:\\d",
                tab = "a\tb",
                accents = "été ✓",
                empty = ""
            );
            tracing::info!("message with \u{1b}[1m a terminal control and {} argument", 1);
            tracing::info!(message = "a message given as a field \u{7}", after = 1);
            // Numbers, booleans, debug values, raw names, a `log.` field first.
            tracing::info!(
                log.target = "elsewhere",
                negative = -12i64,
                big = u64::MAX,
                yes = true,
                no = false
            );
            tracing::info!(r#type = "raw", list = ?vec![1, 2], float = 1.0f64, tiny = 1e-9f64, huge = 1e300f64);
            // Errors, with and without sources.
            let inner = Failure(None);
            let outer = Failure(Some(Box::new(Failure(None))));
            tracing::info!(error = &inner as &dyn std::error::Error, "failed");
            tracing::info!(error = &outer as &dyn std::error::Error, "failed");
            // Within spans, whose fields are formatted by `Fields` too.
            let span = tracing::info_span!("outer", id = "a b", n = 3u64, flag = true);
            let _entered = span.enter();
            let inner = tracing::info_span!("inner", path = "/books/1");
            let _inner = inner.enter();
            tracing::warn!(error = %"boom", "inside");
            // No message at all.
            tracing::info!(only = 1u64);
        };
        let default = formatted(false, &emit);
        assert_eq!(default.lines().count(), 10, "{default}");
        assert_eq!(formatted(true, &emit), default);
    }

    #[test]
    fn the_time_reads_as_the_default_formatter_writes_it() {
        use tracing_subscriber::fmt::time::FormatTime;
        for since_epoch in [
            Duration::ZERO,
            Duration::new(1_795_000_000, 999_999_999),
            Duration::new(1_795_000_000, 1_000),
            Duration::new(1_795_000_001, 120_000_000),
            Duration::new(253_402_300_799, 5),
        ] {
            let mut ours = String::new();
            write_timestamp(since_epoch, &mut ours).unwrap();
            let mut theirs = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut theirs))
                .unwrap();
            let at =
                chrono::DateTime::from_timestamp(since_epoch.as_secs() as i64, since_epoch.subsec_nanos()).unwrap();
            assert_eq!(ours, at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
            assert_eq!(ours.len(), theirs.len(), "{ours} beside {theirs}");
        }
        // Now, beside the default, within the same second.
        for _ in 0..3 {
            let mut ours = String::new();
            Time.format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut ours))
                .unwrap();
            let mut theirs = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut theirs))
                .unwrap();
            if ours[..19] == theirs[..19] {
                assert_eq!(ours.len(), theirs.len());
                return;
            }
        }
        panic!("never within the same second as the default formatter");
    }

    #[test]
    fn every_line_is_written_once_in_order_by_the_time_the_guard_is_dropped() {
        let sink = Sink::default();
        let (log, flush) = batched(sink.clone());
        let writers: Vec<_> = (0..4)
            .map(|thread| {
                let mut log = log.clone();
                std::thread::spawn(move || {
                    for n in 0..20_000 {
                        let line = format!("{thread} {n} {}\n", "x".repeat(200));
                        log.write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        drop(flush);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0u32; 4];
        for line in text.lines() {
            let mut words = line.split(' ');
            let thread: usize = words.next().unwrap().parse().unwrap();
            let n: u32 = words.next().unwrap().parse().unwrap();
            assert_eq!(n, next[thread], "thread {thread}'s lines in order, none lost");
            next[thread] += 1;
        }
        assert_eq!(next, [20_000; 4]);
    }

    #[test]
    fn a_line_is_written_within_the_interval_without_more_coming() {
        let sink = Sink::default();
        let (mut log, _flush) = batched(sink.clone());
        log.write_all(b"one line\n").unwrap();
        let deadline = std::time::Instant::now() + INTERVAL * 10;
        while sink.0.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "not written within {:?}",
                INTERVAL * 10
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"one line\n");
    }
}
