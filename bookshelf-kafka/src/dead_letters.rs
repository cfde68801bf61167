//! Dead letters in a Kafka topic: what the core's runners set aside, when
//! they read a topic, published where operators already look; and their
//! re-drive queue, a topic beside it.
//!
//! Topics are logs: nothing is removed from them. So a letter's fate is
//! written as records of the queue topic (`<letters topic>.redrive`), each
//! keyed by its runner: a letter queued (its ticket is that record's offset
//! plus one; a letter queued twice keeps its first ticket), a runner done
//! with its tickets up to one, a runner that forgot its letters before an
//! offset (it started from the start of the log). A letter put back after a
//! failed re-drive is published again with the new reason and the number
//! of the letter it replaces. [`Fates`] reads both topics and says which
//! letters are still kept: every listing and every queue look-up goes
//! through it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bookshelf_core::{
    async_trait, DeadLetter, DeadLetters, KeptDeadLetter, Poison, RawRecord, RecordedEvent, Redrive, Redriven,
    StoreError,
};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::reader::{backend, backend_msg, Read, Reader};
use crate::store::{admin_create_topics, partition_count};

/// Header names added to a record set aside in the dead-letter topic.
pub mod dead_letter_headers {
    /// Why the record was set aside.
    pub const REASON: &str = "bookshelf.dead_letter.reason";
    /// Where it came from: `topic/partition@offset`.
    pub const SOURCE: &str = "bookshelf.dead_letter.source";
    /// The runner that could not apply it.
    pub const PROJECTION: &str = "bookshelf.dead_letter.projection";
    /// `event` when it holds an event's envelope, `raw` when the record as
    /// its log held it (letters published before this header: read as an
    /// event when the body is an envelope).
    pub const KIND: &str = "bookshelf.dead_letter.kind";
    /// On a letter put back after a failed re-drive: the number of the
    /// letter it replaces.
    pub const REPLACES: &str = "bookshelf.dead_letter.replaces";
    /// When it was set aside (RFC 3339).
    pub const SET_ASIDE_AT: &str = "bookshelf.dead_letter.set_aside_at";
}

/// Header names of the records of the re-drive queue topic; each record is
/// keyed by the runner's name and carries one of the last three.
pub mod redrive_headers {
    /// The runner.
    pub const RUNNER: &str = "bookshelf.redrive.runner";
    /// Letter N is queued; its ticket is this record's offset plus one.
    pub const LETTER: &str = "bookshelf.redrive.letter";
    /// The runner has applied and saved its tickets up to N.
    pub const DONE: &str = "bookshelf.redrive.done";
    /// The runner forgot its letters numbered below N.
    pub const FORGET_BEFORE: &str = "bookshelf.redrive.forget_before";
}

/// A [`DeadLetters`] sink that publishes each letter to a topic (one
/// partition, idempotent producer, acknowledged by all replicas): a record
/// that was not an event as it was (key, body and headers), an event that
/// did not decode as its envelope's JSON keyed by its stream, each with
/// the reason, its source and the runner's name in the
/// [`dead_letter_headers`]. A runner moves its checkpoint past a letter
/// only once the topic has acknowledged it. A letter's number is its offset
/// in the topic. Letters are re-driven through the topic
/// `<letters topic>.redrive`, whose records, keyed by runner, say each
/// letter's fate (see [`redrive_headers`]): a topic is a log, so a letter
/// applied or put back is not removed from the letters topic but left out
/// of [`list`](Self::list) by what the queue topic says.
///
/// ```no_run
/// use bookshelf_core::ProjectionRunner;
/// use bookshelf_kafka::{KafkaConfig, KafkaDeadLetters, KafkaLog};
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] enum Ev { Read }
/// # impl bookshelf_core::DomainEvent for Ev {}
/// # #[derive(Default)] struct Reads(u64);
/// # impl bookshelf_core::View for Reads { type Event = Ev; fn apply(&mut self, _: bookshelf_core::Envelope<Ev>) { self.0 += 1 } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = KafkaConfig::new("127.0.0.1:9092", "books");
/// let reads = ProjectionRunner::<Reads, _>::new("reads", KafkaLog::new(config.clone()))
///     .dead_letters(KafkaDeadLetters::open(&config).await?) // to books.dead-letters
///     .start();
/// # Ok(()) }
/// ```
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    config: KafkaConfig,
    topic: String,
    queue: String,
    /// The letters handed out by [`queued`](DeadLetters::queued), for
    /// putting one back without reading the topic again.
    handed_out: Mutex<BTreeMap<u64, DeadLetter>>,
    /// For the runner's look at its queue every second: the queue topic's
    /// end when a look last found nothing, and a consumer to ask it with.
    /// While the end stays there, nothing was queued since.
    quiet_at: Mutex<Option<i64>>,
    watermarks: Arc<rdkafka::consumer::StreamConsumer>,
}

impl KafkaDeadLetters {
    /// Letters to `<topic>.dead-letters`, for `config`'s topic; the topic is
    /// created when missing if `config` says
    /// [`create_topic`](KafkaConfig::create_topic).
    ///
    /// # Errors
    /// When the producer cannot be made or the topic created.
    pub async fn open(config: &KafkaConfig) -> Result<Self, StoreError> {
        Self::open_topic(config, &format!("{}.dead-letters", config.topic)).await
    }

    /// Letters to `topic`, on `config`'s brokers.
    ///
    /// # Errors
    /// When the producer cannot be made or the topic created.
    pub async fn open_topic(config: &KafkaConfig, topic: &str) -> Result<Self, StoreError> {
        let queue = format!("{topic}.redrive");
        if config.create_topic {
            admin_create_topics(config, &[topic, &queue], 1).await?;
        }
        let producer = config
            .client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(backend)?;
        Ok(KafkaDeadLetters {
            producer,
            config: config.clone(),
            topic: topic.to_owned(),
            queue,
            handed_out: Mutex::new(BTreeMap::new()),
            quiet_at: Mutex::new(None),
            watermarks: Arc::new(crate::reader::plain_consumer(config)?),
        })
    }

    /// The topic letters go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic of their re-drive queue.
    pub fn queue_topic(&self) -> &str {
        &self.queue
    }

    /// The letters kept (not re-driven and applied, not replaced by one put
    /// back, not forgotten), in the order set aside: every runner's, or
    /// `projection`'s only. Each read reads both topics from their start.
    ///
    /// # Errors
    /// When the topics cannot be read.
    pub async fn list(&self, projection: Option<&str>) -> Result<Vec<KeptDeadLetter>, StoreError> {
        Ok(self
            .fates()
            .await?
            .kept()
            .filter(|kept| projection.is_none_or(|p| p == kept.letter.projection))
            .collect())
    }

    async fn fates(&self) -> Result<Fates, StoreError> {
        // A topic not made yet holds nothing: no letter set aside, or none
        // re-driven. Each read waits for its end: both at once.
        let read = |topic: &str| {
            let topic = topic.to_owned();
            async move {
                match partition_count(&self.config, &topic).await {
                    Ok(_) => read_all(&self.config, &topic).await,
                    Err(_) => Ok(Vec::new()),
                }
            }
        };
        let (letters, queue) = tokio::try_join!(read(&self.topic), read(&self.queue))?;
        Ok(Fates::read(&letters, &queue))
    }

    /// Publishes `letter` with `extra` headers; its number once written.
    async fn publish(&self, letter: &DeadLetter, extra: &[(&str, String)]) -> Result<u64, StoreError> {
        let mut headers = OwnedHeaders::new();
        let (key, body, kind): (Option<Vec<u8>>, Option<Vec<u8>>, &str) = match &letter.record {
            Poison::Raw(raw) => {
                for (key, value) in &raw.headers {
                    headers = headers.insert(Header {
                        key: key.as_str(),
                        value: Some(value.as_slice()),
                    });
                }
                (raw.key.clone(), raw.body.clone(), "raw")
            }
            Poison::Event(event) => (
                Some(event.stream_id.as_str().as_bytes().to_vec()),
                Some(event.to_json().into_bytes()),
                "event",
            ),
        };
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let ours = [
            (dead_letter_headers::REASON, letter.reason.as_str()),
            (dead_letter_headers::SOURCE, letter.location.as_str()),
            (dead_letter_headers::PROJECTION, letter.projection.as_str()),
            (dead_letter_headers::KIND, kind),
            (dead_letter_headers::SET_ASIDE_AT, at.as_str()),
        ];
        for (key, value) in ours.into_iter().chain(extra.iter().map(|(k, v)| (*k, v.as_str()))) {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = &key {
            record = record.key(key.as_slice());
        }
        if let Some(body) = &body {
            record = record.payload(body.as_slice());
        }
        self.send(record).await
    }

    /// Sends `record`; its offset once acknowledged.
    async fn send(&self, record: FutureRecord<'_, [u8], [u8]>) -> Result<u64, StoreError> {
        let delivered = self
            .producer
            .send(record, self.config.timeout)
            .await
            .map_err(|(error, _)| backend(error))?;
        Ok(delivered.offset.max(0) as u64)
    }

    /// The queue topic's end (the broker's high watermark: exact here, as
    /// every record of the topic is sent, and so batched, alone); `None`
    /// when the topic does not exist yet.
    async fn queue_end(&self) -> Result<Option<i64>, StoreError> {
        let (consumer, topic, timeout) = (Arc::clone(&self.watermarks), self.queue.clone(), self.config.timeout);
        let asked = tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, 0, timeout))
            .await
            .map_err(backend)?;
        match asked {
            Ok((_, high)) => Ok(Some(high)),
            Err(rdkafka::error::KafkaError::MetadataFetch(_)) => Ok(None),
            Err(error)
                if error.rdkafka_error_code().is_some_and(|code| {
                    matches!(
                        code,
                        rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                            | rdkafka::types::RDKafkaErrorCode::UnknownTopic
                            | rdkafka::types::RDKafkaErrorCode::UnknownPartition
                    )
                }) =>
            {
                Ok(None)
            }
            Err(error) => Err(backend(error)),
        }
    }

    /// Appends a record of `runner`'s fate to the queue topic.
    async fn note(&self, runner: &str, header: &str, value: u64) -> Result<u64, StoreError> {
        let value = value.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: redrive_headers::RUNNER,
                value: Some(runner.as_bytes()),
            })
            .insert(Header {
                key: header,
                value: Some(value.as_bytes()),
            });
        let record = FutureRecord::<[u8], [u8]>::to(&self.queue)
            .key(runner.as_bytes())
            .headers(headers);
        self.send(record).await
    }
}

/// What the two topics say of every letter: the one rule of which letters
/// are kept and which are queued.
#[derive(Debug, Default)]
struct Fates {
    /// Each letter by number, with its first ticket, if queued.
    letters: BTreeMap<u64, (KeptDeadLetter, Option<u64>)>,
    /// Letters replaced by one put back.
    replaced: std::collections::BTreeSet<u64>,
    /// Per runner: the last ticket done, and the number below which its
    /// letters are forgotten.
    done: BTreeMap<String, u64>,
    forgotten_before: BTreeMap<String, u64>,
}

impl Fates {
    fn read(letters: &[OwnedMessage], queue: &[OwnedMessage]) -> Self {
        let mut fates = Fates::default();
        for record in letters {
            let id = record.offset().max(0) as u64;
            if let Some(replaced) = header(record, dead_letter_headers::REPLACES).and_then(|v| v.parse().ok()) {
                fates.replaced.insert(replaced);
            }
            match letter_of(record) {
                Ok(kept) => {
                    fates.letters.insert(id, (kept, None));
                }
                // One broken letter must not hide the others.
                Err(why) => tracing::warn!(letter = id, %why, "a dead letter that does not read is left out"),
            }
        }
        for record in queue {
            let Some(runner) = header(record, redrive_headers::RUNNER) else {
                continue;
            };
            let number = |name: &str| header(record, name).and_then(|v| v.parse::<u64>().ok());
            if let Some(id) = number(redrive_headers::LETTER) {
                let ticket = record.offset().max(0) as u64 + 1;
                if let Some((kept, first)) = fates.letters.get_mut(&id) {
                    if kept.letter.projection == runner && first.is_none() {
                        *first = Some(ticket);
                    }
                }
            } else if let Some(through) = number(redrive_headers::DONE) {
                let done = fates.done.entry(runner.to_owned()).or_default();
                *done = (*done).max(through);
            } else if let Some(before) = number(redrive_headers::FORGET_BEFORE) {
                let forgotten = fates.forgotten_before.entry(runner.to_owned()).or_default();
                *forgotten = (*forgotten).max(before);
            }
        }
        fates
    }

    /// The letters still kept, with their tickets, in the order set aside.
    fn kept(self) -> impl Iterator<Item = KeptDeadLetter> {
        let Fates {
            letters,
            replaced,
            done,
            forgotten_before,
        } = self;
        letters.into_values().filter_map(move |(mut kept, ticket)| {
            let runner = &kept.letter.projection;
            let forgotten = forgotten_before.get(runner).is_some_and(|&before| kept.id < before);
            let applied = ticket.is_some_and(|t| done.get(runner).is_some_and(|&d| t <= d));
            if forgotten || applied || replaced.contains(&kept.id) {
                return None;
            }
            kept.ticket = ticket;
            Some(kept)
        })
    }
}

/// A header's value as text.
fn header<'a>(record: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let headers = record.headers()?;
    (0..headers.count())
        .map(|i| headers.get(i))
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The letter a record of the letters topic holds; why not, when it holds
/// none.
fn letter_of(record: &OwnedMessage) -> Result<KeptDeadLetter, String> {
    let id = record.offset().max(0) as u64;
    let text = |name: &str| header(record, name).unwrap_or_default().to_owned();
    let location = text(dead_letter_headers::SOURCE);
    let as_event = || {
        let body = std::str::from_utf8(record.payload()?).ok()?;
        RecordedEvent::from_json(body).ok()
    };
    let kind = header(record, dead_letter_headers::KIND);
    let event = if kind == Some("raw") { None } else { as_event() };
    let record_of = match event {
        Some(event) => Poison::Event(Arc::new(event)),
        None if kind == Some("event") => {
            return Err(format!("dead letter {id}: its event does not read"));
        }
        None => {
            let ours = |key: &str| key.starts_with("bookshelf.dead_letter.");
            let headers = record
                .headers()
                .map(|h| {
                    (0..h.count())
                        .map(|i| h.get(i))
                        .filter(|h| !ours(h.key))
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            Poison::Raw(Box::new(RawRecord {
                location: location.clone(),
                key: record.key().map(<[u8]>::to_vec),
                body: record.payload().map(<[u8]>::to_vec),
                headers,
            }))
        }
    };
    let set_aside_at = header(record, dead_letter_headers::SET_ASIDE_AT)
        .and_then(bookshelf_core::timestamp::parse)
        .or_else(|| {
            record
                .timestamp()
                .to_millis()
                .and_then(chrono::DateTime::from_timestamp_millis)
        })
        .unwrap_or_default();
    Ok(KeptDeadLetter {
        id,
        set_aside_at,
        ticket: None,
        letter: DeadLetter {
            projection: text(dead_letter_headers::PROJECTION),
            location,
            record: record_of,
            reason: text(dead_letter_headers::REASON),
        },
    })
}

/// Every record of partition 0 of `topic`, from its start.
async fn read_all(config: &KafkaConfig, topic: &str) -> Result<Vec<OwnedMessage>, StoreError> {
    let mut reader = Reader::open(config, &[(topic, 0, 0)], &[]).await?;
    let mut records = Vec::new();
    loop {
        match reader.next_within(config.timeout).await? {
            Some(Read::Record(message)) => records.push(message.detach()),
            Some(Read::End { .. }) => return Ok(records),
            None => return Err(backend_msg(format!("reading topic {topic:?} timed out"))),
        }
    }
}

#[async_trait]
impl DeadLetters for KafkaDeadLetters {
    async fn put(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.publish(&letter, &[]).await.map(|_| ())
    }

    async fn kept_letters(&self, runner: Option<&str>) -> Result<Vec<KeptDeadLetter>, StoreError> {
        self.list(runner).await.map_err(|e| {
            let topic = &self.topic;
            StoreError::Backend(format!("topic {topic}: {e}").into())
        })
    }

    fn redrives(&self) -> bool {
        true
    }

    async fn redrive(&self, runner: &str, which: Redrive) -> Result<usize, StoreError> {
        admin_create_topics(&self.config, &[&self.queue], 1).await?;
        let kept: Vec<KeptDeadLetter> = self.list(Some(runner)).await?;
        let chosen: Vec<&KeptDeadLetter> = kept
            .iter()
            .filter(|k| match which {
                Redrive::Letter(id) => k.id == id,
                Redrive::All => true,
            })
            .collect();
        if let (Redrive::Letter(id), true) = (which, chosen.is_empty()) {
            return Err(backend_msg(format!("{}: no dead letter {id} of {runner}", self.topic)));
        }
        let mut queued = 0;
        // One at a time, so that tickets follow the order set aside.
        for kept in chosen.into_iter().filter(|k| k.ticket.is_none()) {
            self.note(runner, redrive_headers::LETTER, kept.id).await?;
            queued += 1;
        }
        Ok(queued)
    }

    async fn queued(&self, runner: &str, after: u64) -> Result<Vec<Redriven>, StoreError> {
        // Asked every second by a runner: the topics are read only when the
        // queue has grown since a look that found nothing.
        let end = self.queue_end().await?;
        let Some(end) = end else {
            return Ok(Vec::new());
        };
        if *self.quiet_at.lock().unwrap_or_else(|p| p.into_inner()) == Some(end) {
            return Ok(Vec::new());
        }
        let mut queued: Vec<Redriven> = self
            .list(Some(runner))
            .await?
            .into_iter()
            .filter_map(|kept| kept.queued_after(after))
            .collect();
        queued.sort_by_key(|r| r.ticket);
        if queued.is_empty() {
            *self.quiet_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
        }
        let mut handed_out = self.handed_out.lock().unwrap_or_else(|p| p.into_inner());
        handed_out.clear();
        handed_out.extend(queued.iter().map(|r| (r.id, r.letter.clone())));
        Ok(queued)
    }

    async fn put_back(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        let handed_out = self.handed_out.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let letter = match handed_out {
            Some(letter) => letter,
            None => {
                let fates = self.fates().await?;
                let Some((kept, _)) = fates.letters.get(&id) else {
                    return Err(backend_msg(format!("{}: no dead letter {id}", self.topic)));
                };
                kept.letter.clone()
            }
        };
        let again = DeadLetter {
            reason: reason.to_owned(),
            ..letter
        };
        self.publish(&again, &[(dead_letter_headers::REPLACES, id.to_string())])
            .await
            .map(|_| ())
    }

    async fn forget(&self, runner: &str, through: Option<u64>) -> Result<(), StoreError> {
        match through {
            // Nothing was ever re-driven.
            Some(0) => Ok(()),
            Some(ticket) => self.note(runner, redrive_headers::DONE, ticket).await.map(|_| ()),
            // Every letter of the runner so far: those after the last kept.
            None => match self.list(Some(runner)).await?.iter().map(|k| k.id).max() {
                Some(last) => self
                    .note(runner, redrive_headers::FORGET_BEFORE, last + 1)
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
        }
    }
}
