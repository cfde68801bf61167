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
