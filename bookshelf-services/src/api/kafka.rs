//! An instance of a service on Kafka among the others of its name: the
//! members its store shares the partitions out with, and a Consul check
//! that passes only while the instance can serve them.

use std::sync::Arc;
use std::time::Duration;

use bookshelf_consul::Passing;
use bookshelf_kafka::{members_from_discovery, KafkaStore, KafkaStoreBuilder};
use tokio::sync::watch;

use super::{Checked, Registration, ServiceFlags};

/// How often [`listed_while_passing`] looks at the check's last pass.
const LOOK_EVERY: Duration = Duration::from_millis(100);

impl ServiceFlags {
    /// `builder` sharing its partitions out among the instances of `name`
    /// that Consul lists (when `--consul` is given), leaving this instance
    /// (`id`) out while its check, which `passing` follows, has lapsed.
    pub fn share_partitions(
        &self,
        builder: KafkaStoreBuilder,
        name: &str,
        id: &str,
        passing: &Passing,
    ) -> Result<KafkaStoreBuilder, bookshelf::DiscoveryError> {
        let Some(consul) = self.consul_config() else {
            return Ok(builder);
        };
        let discovery = bookshelf_consul::ConsulDiscovery::new(consul)?;
        let members = members_from_discovery(discovery, name, Duration::from_secs(1));
        let listed = listed_while_passing(members, id.to_owned(), passing.clone(), self.check_ttl());
        Ok(builder.members(listed))
    }

    /// Registers as `name` at `local` (when `--consul` is given) with a
    /// check that fails while `store` has not heard from its broker for
    /// half the check's TTL (at least a second), so that the others take
    /// its partitions over, and that records its passes in `passing`.
    pub async fn register_on_kafka(
        &self,
        name: &str,
        local: std::net::SocketAddr,
        store: &KafkaStore,
        passing: Passing,
    ) -> Result<Option<Registration>, bookshelf::DiscoveryError> {
        let store = store.clone();
        let silent_for = (self.check_ttl() / 2).max(Duration::from_secs(1));
        let healthy: bookshelf_consul::Health = Arc::new(move || {
            let silence = store.broker_silence();
            if silence > silent_for {
                Err(format!(
                    "the Kafka broker has not answered for {} ms",
                    silence.as_millis()
                ))
            } else {
                Ok(())
            }
        });
        self.register_checked(name, local, Checked { healthy, passing }).await
    }
}

/// `members` without this instance (`id`) while its Consul check has not
/// passed for longer than the check's `ttl`: Consul no longer lists it then,
/// so the others take its partitions over, and it must not take them back.
/// (Cut off from Consul, it cannot hear the list change: its own list still
/// names it, and it would claim again and again.)
fn listed_while_passing(
    mut members: watch::Receiver<Vec<String>>,
    id: String,
    passing: Passing,
    ttl: Duration,
) -> watch::Receiver<Vec<String>> {
    let (tell, listed) = watch::channel(members.borrow().clone());
    tokio::spawn(async move {
        loop {
            let mut now = members.borrow_and_update().clone();
            if passing.since().is_some_and(|since| since > ttl) {
                now.retain(|member| *member != id);
            }
            tell.send_if_modified(|told| {
                let changed = *told != now;
                *told = now;
                changed
            });
            tokio::select! {
                changed = members.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(LOOK_EVERY) => {}
                () = tell.closed() => return,
            }
        }
    });
    listed
}
