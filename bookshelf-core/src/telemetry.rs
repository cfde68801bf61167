//! The metrics Bookshelf records, through the [`metrics`] facade: nothing is
//! kept unless the application installs a recorder (for Prometheus, the
//! `metrics-exporter-prometheus` crate, as the example services do at
//! `GET /metrics`).
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `bookshelf_commands_total` | counter | `aggregate`, `outcome` | commands through a [`Repository`](crate::Repository); outcome `ok`, `duplicate` (an idempotency key seen before), `rejected` (the aggregate said no), `conflict`, `failed` (the store) |
//! | `bookshelf_command_duration_seconds` | histogram | `aggregate` | load, decide and append, retries included |
//! | `bookshelf_events_appended_total` | counter | `store` | events stored by appends (`memory`, `sqlite`, `postgres`, `kafka`) |
//! | `bookshelf_reader_position` | gauge | `reader`, `partition` | the next offset a projection or runner takes in a partition (the global log is partition `""`) |
//! | `bookshelf_reader_lag` | gauge | `reader`, `partition` | how far behind the partition's end, as last seen |
//! | `bookshelf_dead_letters_total` | counter | `reader` | events or records set aside |
//! | `bookshelf_discovery_instances` | gauge | `service` | healthy instances a [`Balancer`](crate::Balancer) knows |
//!
//! Counters show from the start, at 0: a repository's command counters
//! when it is made, a store's appended events when it is opened, a
//! runner's dead letters, position and lag when it starts.

use std::collections::BTreeMap;
use std::time::Duration;

use metrics::{Key, Label};

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

/// How a command through a [`Repository`](crate::Repository) ended: the
/// `outcome` label of [`COMMANDS`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Ok,
    Duplicate,
    Rejected,
    Conflict,
    Failed,
}

/// The command metrics' keys for one aggregate, made at compile time: with
/// no recorder installed, recording a command costs next to nothing, and
/// with one the key is not built and hashed again for every command.
struct CommandKeys<A>(std::marker::PhantomData<A>);

impl<A: crate::Aggregate> CommandKeys<A> {
    const fn labels(outcome: &'static str) -> [Label; 2] {
        [
            Label::from_static_parts("aggregate", A::CATEGORY),
            Label::from_static_parts("outcome", outcome),
        ]
    }
    const OK_LABELS: &'static [Label] = &Self::labels("ok");
    const OK: Key = Key::from_static_parts(COMMANDS, Self::OK_LABELS);
    const DUPLICATE_LABELS: &'static [Label] = &Self::labels("duplicate");
    const DUPLICATE: Key = Key::from_static_parts(COMMANDS, Self::DUPLICATE_LABELS);
    const REJECTED_LABELS: &'static [Label] = &Self::labels("rejected");
    const REJECTED: Key = Key::from_static_parts(COMMANDS, Self::REJECTED_LABELS);
    const CONFLICT_LABELS: &'static [Label] = &Self::labels("conflict");
    const CONFLICT: Key = Key::from_static_parts(COMMANDS, Self::CONFLICT_LABELS);
    const FAILED_LABELS: &'static [Label] = &Self::labels("failed");
    const FAILED: Key = Key::from_static_parts(COMMANDS, Self::FAILED_LABELS);
    const AGGREGATE: &'static [Label] = &[Label::from_static_parts("aggregate", A::CATEGORY)];
    const DURATION: Key = Key::from_static_parts(COMMAND_DURATION, Self::AGGREGATE);

    fn count(outcome: Outcome) -> Key {
        match outcome {
            Outcome::Ok => Self::OK,
            Outcome::Duplicate => Self::DUPLICATE,
            Outcome::Rejected => Self::REJECTED,
            Outcome::Conflict => Self::CONFLICT,
            Outcome::Failed => Self::FAILED,
        }
    }
}

/// Where the metrics come from, as the `metrics` macros would say.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// A command of aggregate `A` ended with `outcome` after `took`.
pub(crate) fn command<A: crate::Aggregate>(outcome: Outcome, took: Duration) {
    metrics::with_recorder(|recorder| {
        recorder
            .register_counter(&CommandKeys::<A>::count(outcome), &METADATA)
            .increment(1);
        recorder
            .register_histogram(&CommandKeys::<A>::DURATION, &METADATA)
            .record(took.as_secs_f64());
    });
}

/// Shows the command counters of aggregate `A` (each outcome) at 0 until
/// commands move them: a [`Repository`](crate::Repository) calls it when
/// made, so that a scrape before the first command sees them.
pub(crate) fn commands_known<A: crate::Aggregate>() {
    metrics::with_recorder(|recorder| {
        for outcome in [
            Outcome::Ok,
            Outcome::Duplicate,
            Outcome::Rejected,
            Outcome::Conflict,
            Outcome::Failed,
        ] {
            recorder
                .register_counter(&CommandKeys::<A>::count(outcome), &METADATA)
                .increment(0);
        }
    });
}

/// `events` events were stored in a store of kind `store` (each backend
/// names its own: `memory`, `sqlite`, `postgres`, `kafka`). Each store calls
/// it with 0 when made, so that its counter shows before its first append.
pub fn appended(store: &'static str, events: usize) {
    // The in-memory store appends fastest: its key is made once.
    const MEMORY_LABELS: &[Label] = &[Label::from_static_parts("store", "memory")];
    static MEMORY: Key = Key::from_static_parts(EVENTS_APPENDED, MEMORY_LABELS);
    let other;
    let key = if store == "memory" {
        &MEMORY
    } else {
        other = Key::from_parts(EVENTS_APPENDED, vec![Label::from_static_parts("store", store)]);
        &other
    };
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(events as u64));
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

/// Shows `reader`'s dead-letter counter at 0 until it sets something aside
/// (each runner calls it when it starts).
pub fn dead_letters_known(reader: &str) {
    metrics::counter!(DEAD_LETTERS, "reader" => reader.to_owned()).increment(0);
}

/// `reader` set an event or record aside.
pub fn dead_letter(reader: &str) {
    metrics::counter!(DEAD_LETTERS, "reader" => reader.to_owned()).increment(1);
}

/// The healthy instances of `service` a balancer knows.
pub(crate) fn instances(service: &str, count: usize) {
    metrics::gauge!(DISCOVERY_INSTANCES, "service" => service.to_owned()).set(count as f64);
}
