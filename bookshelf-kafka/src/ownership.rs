//! Which instance should own which partition: rendezvous hashing over the
//! healthy instances that discovery lists.
//!
//! Every instance computes the same owner from the same list, and when an
//! instance comes or goes only the partitions it owned, or will own, move.
//! Lists seen at different moments can disagree for a while; the claims in
//! the log (see [`crate::rule`]) decide who really writes.

use std::time::Duration;

use bookshelf_core::{Discovery, RetryPolicy};
use tokio::sync::watch;

use crate::partition::murmur2;

/// The instance among `members` that should own `partition`: the one with
/// the highest hash of (instance, partition), ties going to the smaller id.
/// `None` for no members.
pub fn rendezvous_owner(members: &[String], partition: i32) -> Option<&str> {
    members
        .iter()
        .map(|member| {
            let weight = murmur2(format!("{member}#{partition}").as_bytes()) as u32;
            (weight, std::cmp::Reverse(member.as_str()))
        })
        .max()
        .map(|(_, std::cmp::Reverse(member))| member)
}

/// Follows the healthy instances of `service` in `discovery` as a list of
/// instance ids, for [`crate::KafkaStore::builder`]'s membership: watching
/// again whenever a watch fails or ends, after `retry` the first time and
/// longer pauses (capped at five seconds, or `retry` if longer, and
/// jittered: see [`RetryPolicy`]) while it keeps failing. The task ends when
/// every receiver is dropped.
pub fn members_from_discovery<D: Discovery>(
    discovery: D,
    service: &str,
    retry: Duration,
) -> watch::Receiver<Vec<String>> {
    let (tx, rx) = watch::channel(Vec::new());
    let service = service.to_owned();
    let policy = RetryPolicy::forever(retry, retry.max(Duration::from_secs(5)));
    tokio::spawn(async move {
        let mut delays = policy.delays();
        loop {
            match discovery.watch(&service, &[]).await {
                Ok(mut watch) => {
                    while let Some(instances) = watch.next().await {
                        delays = policy.delays();
                        let mut ids: Vec<String> = instances.into_iter().map(|i| i.id).collect();
                        ids.sort();
                        ids.dedup();
                        if tx.send(ids).is_err() {
                            return;
                        }
                    }
                    tracing::warn!(%service, "discovery watch ended; watching again");
                }
                Err(error) => tracing::warn!(%service, %error, "cannot watch discovery; trying again"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(delays.next().unwrap_or(policy.max_backoff)).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_partition_has_one_owner_and_only_a_leavers_partitions_move() {
        let three = ids(&["books-1", "books-2", "books-3"]);
        let two = ids(&["books-1", "books-3"]);
        let before: Vec<&str> = (0..64).map(|p| rendezvous_owner(&three, p).unwrap()).collect();
        let after: Vec<&str> = (0..64).map(|p| rendezvous_owner(&two, p).unwrap()).collect();
        for (p, (b, a)) in before.iter().zip(&after).enumerate() {
            if *b != "books-2" {
                assert_eq!(b, a, "partition {p} moved although its owner stayed");
            } else {
                assert_ne!(*a, "books-2");
            }
        }
        for member in &three {
            assert!(before.contains(&member.as_str()), "{member} owns some of 64 partitions");
        }
        assert_eq!(rendezvous_owner(&[], 0), None);
        let shuffled = ids(&["books-3", "books-1", "books-2"]);
        assert_eq!(
            rendezvous_owner(&shuffled, 5),
            rendezvous_owner(&three, 5),
            "order does not matter"
        );
    }
}
