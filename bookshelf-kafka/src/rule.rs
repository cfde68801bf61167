//! Which records of an events topic are part of the log: the one rule every
//! reader applies (the store, [`crate::KafkaLog`] and so every runner, subscriptions).
//!
//! # The protocol
//!
//! Each partition has at most one writer at a time, its **owner**. An owner
//! starts by writing a **claim** record into the partition, carrying an
//! **epoch** higher than any claim before it; every event it writes after
//! that carries the same epoch in the [`EPOCH`] header. Readers go through a
//! partition in offset order, keep the epoch of the last valid claim, and
//! take a record as an event of the log only when its epoch is that epoch.
//! So an owner that lost the partition (paused, cut off, slow) cannot add to
//! the log any more: whatever it writes lands after the claim of the owner
//! that replaced it, under an older epoch, and every reader passes over it.
//! No transactions are needed, only the log's order.
//!
//! The rule, record by record, for a partition whose current epoch is `e`
//! (0 before any claim):
//!
//! * a **claim** (header [`KIND`] = `claim`) with a well-formed body and an
//!   epoch above `e` makes its epoch current; a claim at or below `e` is
//!   stale and changes nothing; a claim that does not parse is broken;
//! * a **CloudEvent of another producer** (a CloudEvents record without an
//!   [`EPOCH`] header: see [`crate::cloudevents`]) is foreign: views and
//!   runners take it, the store keeps it in no aggregate's stream, and no
//!   epoch applies to it (no owner wrote it);
//! * an **event** (any other record) is part of the log when it has a UTF-8
//!   stream key, sits on the partition that key belongs to, and carries
//!   epoch `e` (no header counts as 0). A lower epoch is stale: written by
//!   an owner that had lost the partition. Anything else is broken.
//!
//! Stale and broken records are reported with their topic, partition and
//! offset, and passed over. The verdict depends only on the records before
//! it in the partition, so every reader, at any time, agrees.

use rdkafka::message::{Headers, Message};
use serde::{Deserialize, Serialize};

use crate::partition::partition_for;

/// The header naming a record's kind; absent on events.
pub const KIND: &str = "bookshelf.kind";
/// The value of [`KIND`] on a claim.
pub const CLAIM: &str = "claim";
/// The header carrying the epoch an event was written under (decimal).
pub const EPOCH: &str = "bookshelf.epoch";
/// The key of claim records (never a stream id: stream keys are event records).
pub const CLAIM_KEY: &str = "bookshelf.claim";

/// Who claimed a partition, and under which epoch: the body of a claim
/// record, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The claim's epoch; the events of its owner carry it.
    pub epoch: u64,
    /// The id of the instance that claimed the partition.
    pub owner: String,
    /// Where that instance takes requests (for example `http://127.0.0.1:8088`);
    /// empty when it does not say.
    #[serde(default)]
    pub address: String,
}

/// What one record is, as far as the log is concerned.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An event of the log, written under the current epoch.
    Event {
        /// The stream it belongs to.
        stream: String,
    },
    /// A claim that made its epoch current.
    Claimed(Claim),
    /// A claim at or below the current epoch: it changes nothing.
    StaleClaim(Claim),
    /// An event written under an older epoch, by an owner that had lost the
    /// partition: not part of the log.
    Stale {
        /// The stream it names.
        stream: String,
        /// The epoch it was written under.
        epoch: u64,
        /// The partition's epoch when it was written.
        current: u64,
    },
    /// A record that breaks the protocol; the reason says how.
    Broken(String),
    /// A CloudEvent that another producer wrote (see
    /// [`crate::cloudevents`]): an event for views and runners, in no
    /// aggregate's stream.
    Foreign,
}

/// The state of one partition as a reader goes through it: the current epoch
/// and the claim that set it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionRule {
    epoch: u64,
    claim: Option<Claim>,
}

impl PartitionRule {
    /// A partition whose last valid claim is `claim` (`None`: no claim yet).
    pub fn resume(claim: Option<Claim>) -> Self {
        PartitionRule {
            epoch: claim.as_ref().map_or(0, |c| c.epoch),
            claim,
        }
    }

    /// A partition at `epoch`, for a reader that saved only the epoch with
    /// its offset.
    pub fn at_epoch(epoch: u64) -> Self {
        PartitionRule { epoch, claim: None }
    }

    /// The current epoch (0 before any claim).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last valid claim, if any.
    pub fn claim(&self) -> Option<&Claim> {
        self.claim.as_ref()
    }

    /// The verdict on the next record of the partition, `partitions` being
    /// the topic's partition count; a claim that makes its epoch current
    /// updates the state.
    pub fn judge<M: Message>(&mut self, record: &M, partitions: i32) -> Verdict {
        let verdict = verdict(record, self.epoch(), partitions);
        if let Verdict::Claimed(claim) = &verdict {
            self.epoch = claim.epoch;
            self.claim = Some(claim.clone());
        }
        verdict
    }
}

fn header<'a, M: Message>(record: &'a M, name: &str) -> Option<Option<&'a [u8]>> {
    let headers = record.headers()?;
    headers.iter().find(|h| h.key == name).map(|h| h.value)
}

fn epoch_of<M: Message>(record: &M) -> Result<u64, String> {
    match header(record, EPOCH) {
        None => Ok(0),
        Some(value) => value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("its {EPOCH} header is not a whole number")),
    }
}

fn verdict<M: Message>(record: &M, current: u64, partitions: i32) -> Verdict {
    if header(record, KIND).flatten() == Some(CLAIM.as_bytes()) {
        let claim = record
            .payload()
            .ok_or_else(|| "a claim without a body".to_owned())
            .and_then(|body| {
                serde_json::from_slice::<Claim>(body).map_err(|e| format!("a claim that is not valid: {e}"))
            });
        return match claim {
            Err(reason) => Verdict::Broken(reason),
            Ok(claim) if claim.owner.is_empty() => Verdict::Broken("a claim without an owner".into()),
            Ok(claim) if claim.epoch <= current => Verdict::StaleClaim(claim),
            Ok(claim) => match epoch_of(record) {
                Ok(epoch) if epoch == claim.epoch => Verdict::Claimed(claim),
                Ok(epoch) => Verdict::Broken(format!(
                    "a claim whose {EPOCH} header ({epoch}) is not its body's epoch ({})",
                    claim.epoch
                )),
                Err(reason) => Verdict::Broken(format!("a claim, but {reason}")),
            },
        };
    }
    if crate::cloudevents::is_foreign(record) {
        return Verdict::Foreign;
    }
    let Some(key) = record.key() else {
        return Verdict::Broken("an event record without a stream key".into());
    };
    let Ok(stream) = std::str::from_utf8(key) else {
        return Verdict::Broken("an event record whose stream key is not UTF-8".into());
    };
    let home = partition_for(stream, partitions);
    if home != record.partition() {
        return Verdict::Broken(format!(
            "an event of stream {stream:?} on partition {}, but that stream belongs on partition {home} of {partitions}",
            record.partition()
        ));
    }
    match epoch_of(record) {
        Err(reason) => Verdict::Broken(format!("an event of stream {stream:?}, but {reason}")),
        Ok(epoch) if epoch == current => Verdict::Event {
            stream: stream.to_owned(),
        },
        Ok(epoch) if epoch < current => Verdict::Stale {
            stream: stream.to_owned(),
            epoch,
            current,
        },
        Ok(epoch) => Verdict::Broken(format!(
            "an event of stream {stream:?} under epoch {epoch}, which no claim before it set (current epoch {current})"
        )),
    }
}

/// `topic/partition@offset`: how a record is named in reports.
pub fn locate<M: Message>(record: &M) -> String {
    format!("{}/{}@{}", record.topic(), record.partition(), record.offset())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn record(partition: i32, key: Option<&str>, headers: &[(&str, &str)], body: &str) -> OwnedMessage {
        let headers = headers.iter().fold(OwnedHeaders::new(), |all, (key, value)| {
            all.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        });
        OwnedMessage::new(
            Some(body.as_bytes().to_vec()),
            key.map(|k| k.as_bytes().to_vec()),
            "books".into(),
            Timestamp::NotAvailable,
            partition,
            7,
            Some(headers),
        )
    }

    fn claim(epoch: u64, owner: &str) -> OwnedMessage {
        let body = format!(r#"{{"epoch":{epoch},"owner":"{owner}","address":"http://{owner}"}}"#);
        record(0, Some(CLAIM_KEY), &[(KIND, CLAIM), (EPOCH, &epoch.to_string())], &body)
    }

    /// A stream that lives on partition 0 of 3.
    fn stream_on_0() -> &'static str {
        ["book-1", "book-2", "book-3", "book-4", "book-5"]
            .into_iter()
            .find(|s| partition_for(s, 3) == 0)
            .expect("one of five keys hashes to partition 0")
    }

    fn event(epoch: Option<u64>) -> OwnedMessage {
        let epoch = epoch.map(|e| e.to_string());
        let headers: Vec<(&str, &str)> = epoch.iter().map(|e| (EPOCH, e.as_str())).collect();
        record(0, Some(stream_on_0()), &headers, "{}")
    }

    #[test]
    fn events_count_only_under_the_epoch_of_the_last_claim() {
        let mut rule = PartitionRule::default();
        assert!(
            matches!(rule.judge(&event(None), 3), Verdict::Event { .. }),
            "no claim yet: epoch 0"
        );
        assert!(matches!(rule.judge(&claim(1, "a"), 3), Verdict::Claimed(_)));
        assert!(matches!(rule.judge(&event(Some(1)), 3), Verdict::Event { .. }));
        assert!(matches!(
            rule.judge(&event(None), 3),
            Verdict::Stale {
                epoch: 0,
                current: 1,
                ..
            }
        ));
        assert!(matches!(rule.judge(&claim(2, "b"), 3), Verdict::Claimed(_)));
        assert!(
            matches!(
                rule.judge(&event(Some(1)), 3),
                Verdict::Stale {
                    epoch: 1,
                    current: 2,
                    ..
                }
            ),
            "a's late event, after b's claim"
        );
        assert!(matches!(rule.judge(&event(Some(2)), 3), Verdict::Event { .. }));
        assert!(
            matches!(rule.judge(&event(Some(3)), 3), Verdict::Broken(_)),
            "an epoch no claim set"
        );
        assert_eq!(rule.claim().map(|c| c.owner.as_str()), Some("b"));
    }

    #[test]
    fn a_claim_must_raise_the_epoch() {
        let mut rule = PartitionRule::default();
        rule.judge(&claim(5, "a"), 3);
        assert!(matches!(rule.judge(&claim(5, "b"), 3), Verdict::StaleClaim(_)));
        assert!(matches!(rule.judge(&claim(4, "b"), 3), Verdict::StaleClaim(_)));
        assert_eq!(rule.epoch(), 5);
        assert_eq!(rule.claim().map(|c| c.owner.as_str()), Some("a"));
    }

    #[test]
    fn broken_records_say_what_is_wrong() {
        let mut rule = PartitionRule::default();
        let reason = |verdict: Verdict| match verdict {
            Verdict::Broken(reason) => reason,
            other => panic!("expected a broken record, got {other:?}"),
        };
        let bad_claim = record(0, Some(CLAIM_KEY), &[(KIND, CLAIM)], "not json");
        assert!(reason(rule.judge(&bad_claim, 3)).contains("claim that is not valid"));
        let mismatched = record(
            0,
            Some(CLAIM_KEY),
            &[(KIND, CLAIM), (EPOCH, "9")],
            r#"{"epoch":2,"owner":"a"}"#,
        );
        assert!(reason(rule.judge(&mismatched, 3)).contains("not its body's epoch"));
        assert_eq!(rule.epoch(), 0, "a broken claim changes nothing");
        assert!(reason(rule.judge(&record(0, None, &[], "{}"), 3)).contains("without a stream key"));
        let stream = stream_on_0();
        let elsewhere = record(1, Some(stream), &[], "{}");
        assert!(reason(rule.judge(&elsewhere, 3)).contains("belongs on partition 0"));
        let bad_epoch = record(0, Some(stream), &[(EPOCH, "x")], "{}");
        assert!(reason(rule.judge(&bad_epoch, 3)).contains("not a whole number"));
    }
}
