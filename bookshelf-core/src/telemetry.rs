//! The metrics Bookshelf records, through the [`metrics`] facade: nothing is
//! kept unless the application installs a recorder (for Prometheus, the
//! `metrics-exporter-prometheus` crate, as the example services do at
//! `GET /metrics`).
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `bookshelf_commands_total` | counter | `aggregate`, `outcome` | commands through a [`Repository`](crate::Repository); outcome `ok`, `duplicate` (an idempotency key seen before), `rejected` (the aggregate said no), `conflict`, `failed` (the store) |
//! | `bookshelf_command_duration_seconds` | histogram | `aggregate` | load, decide and append, retries included |
//! | `bookshelf_events_appended_total` | counter | `store` | events stored by appends (`memory`, `sqlite`, `kafka`) |
//! | `bookshelf_reader_position` | gauge | `reader`, `partition` | the next offset a projection or runner takes in a partition (the global log is partition `""`) |
//! | `bookshelf_reader_lag` | gauge | `reader`, `partition` | how far behind the partition's end, as last seen |
//! | `bookshelf_dead_letters_total` | counter | `reader` | events or records set aside |
//! | `bookshelf_discovery_instances` | gauge | `service` | healthy instances a [`Balancer`](crate::Balancer) knows |

use std::collections::BTreeMap;
use std::time::Duration;

use crate::source::PartitionProgress;

/// `bookshelf_commands_total`.
pub const COMMANDS: &str = "bookshelf_commands_total";
/// `bookshelf_command_duration_seconds`.
pub const COMMAND_DURATION: &str = "bookshelf_command_duration_seconds";
/// `bookshelf_events_appended_total`.
pub const EVENTS_APPENDED: &str = "bookshelf_events_appended_total";
/// `bookshelf_reader_position`.
pub const READER_POSITION: &str = "bookshelf_reader_position";
/// `bookshelf_reader_lag`.
pub const READER_LAG: &str = "bookshelf_reader_lag";
/// `bookshelf_dead_letters_total`.
pub const DEAD_LETTERS: &str = "bookshelf_dead_letters_total";
/// `bookshelf_discovery_instances`.
pub const DISCOVERY_INSTANCES: &str = "bookshelf_discovery_instances";

/// A command of `aggregate` ended with `outcome` after `took`.
pub(crate) fn command(aggregate: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!(COMMANDS, "aggregate" => aggregate, "outcome" => outcome).increment(1);
    metrics::histogram!(COMMAND_DURATION, "aggregate" => aggregate).record(took.as_secs_f64());
}

/// `events` events were stored in a store of kind `store`.
pub fn appended(store: &'static str, events: usize) {
    metrics::counter!(EVENTS_APPENDED, "store" => store).increment(events as u64);
}

/// Where `reader` stands in each partition.
pub fn progress(reader: &str, partitions: &BTreeMap<String, PartitionProgress>) {
    for (partition, at) in partitions {
        let labels = [("reader", reader.to_owned()), ("partition", partition.clone())];
        metrics::gauge!(READER_POSITION, &labels).set(at.position as f64);
        if let Some(lag) = at.lag() {
            metrics::gauge!(READER_LAG, &labels).set(lag as f64);
        }
    }
}

/// `reader` set an event or record aside.
pub fn dead_letter(reader: &str) {
    metrics::counter!(DEAD_LETTERS, "reader" => reader.to_owned()).increment(1);
}

/// The healthy instances of `service` a balancer knows.
pub(crate) fn instances(service: &str, count: usize) {
    metrics::gauge!(DISCOVERY_INSTANCES, "service" => service.to_owned()).set(count as f64);
}
