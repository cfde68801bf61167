//! Read barriers: where each partition ended when a read began, asked of the
//! broker once for every read waiting at that moment; and, from the same
//! questions asked every [`PROBE`], whether the broker still answers.
//!
//! A read that waits until the store's follower has read its partition up to
//! such an end sees every event acknowledged before the read began, and
//! every claim written before it: whatever the store read before (its local
//! state after a restart, its view of the partition before a hand-back)
//! cannot be what it answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::reader::{backend, backend_msg};
use bookshelf_core::StoreError;

/// How often a store asks the broker where partition 0 ends, to know that
/// it still answers (see [`Ends::silence`]).
pub(crate) const PROBE: Duration = Duration::from_millis(500);

/// One partition's last known end, and when the broker was asked for it.
type Asked = Option<(Instant, i64)>;

/// The ends of a topic's partitions, asked of the broker on demand.
pub(crate) struct Ends {
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// Per partition: locked while its end is being asked, so that reads
    /// arriving meanwhile wait for that answer or the next one, and at most
    /// one question per partition is ever out.
    asked: Vec<Arc<tokio::sync::Mutex<Asked>>>,
    /// When the broker last answered a question.
    answered: Arc<std::sync::Mutex<Instant>>,
}

impl Ends {
    pub(crate) fn new(consumer: StreamConsumer, topic: &str, partitions: i32) -> Ends {
        Ends {
            consumer: Arc::new(consumer),
            topic: topic.to_owned(),
            asked: (0..partitions)
                .map(|_| Arc::new(tokio::sync::Mutex::new(None)))
                .collect(),
            // The store has just talked to the broker to open.
            answered: Arc::new(std::sync::Mutex::new(Instant::now())),
        }
    }

    /// How long ago the broker last answered a question for an end.
    pub(crate) fn silence(&self) -> Duration {
        self.answered.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    /// The end of `partition` as the broker reported it to a question asked
    /// at or after `since`: the answer to a question already asked since
    /// then is shared, otherwise a new one is asked (waiting up to
    /// `timeout` for the broker).
    ///
    /// The end is the broker's high watermark. tansu 0.6 reports the first
    /// offset of the newest record batch plus one; a follower reads whole
    /// batches, so having read past that offset it has read the batch, and
    /// the partition, to its end as of the question.
    pub(crate) async fn since(&self, partition: i32, since: Instant, timeout: Duration) -> Result<i64, StoreError> {
        let slot = Arc::clone(&self.asked[partition as usize]);
        let mut asked = slot.lock_owned().await;
        if let Some((at, end)) = *asked {
            if at >= since {
                return Ok(end);
            }
        }
        let (consumer, topic, answered) = (
            Arc::clone(&self.consumer),
            self.topic.clone(),
            Arc::clone(&self.answered),
        );
        // The blocking question holds the lock until the broker answers or it
        // times out, even if the read that asked has given up.
        tokio::task::spawn_blocking(move || {
            let at = Instant::now();
            let (_, high) = consumer.fetch_watermarks(&topic, partition, timeout).map_err(backend)?;
            *asked = Some((at, high));
            *answered.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            Ok(high)
        })
        .await
        .map_err(|e| {
            backend_msg(format!(
                "the question for the end of {}/{partition} failed: {e}",
                self.topic
            ))
        })?
    }
}
