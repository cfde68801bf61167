//! Projections from Kafka topics of any number of partitions, with each
//! partition's offset saved together with the view's state.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bookshelf_core::{
    Checkpoint, DecodeError, Envelope, EventCodec, Mark, PartitionProgress, Position, ProjectionError, StoreError,
    UnknownEvents, View, ViewPersistence, ViewStore,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::KafkaConfig;
use crate::reader::{Read, Reader};
use crate::rule::{locate, PartitionRule, Verdict};
use crate::source::{partition_key, Ends};
use crate::store::{admin_create_topics, partition_count};

/// Header names added to a record set aside in the dead-letter topic.
pub mod dead_letter_headers {
    /// Why the record was set aside.
    pub const REASON: &str = "bookshelf.dead_letter.reason";
    /// Where it came from: `topic/partition@offset`.
    pub const SOURCE: &str = "bookshelf.dead_letter.source";
    /// The projection that could not apply it.
    pub const PROJECTION: &str = "bookshelf.dead_letter.projection";
}

/// Configures and starts a projection of view `V` from Kafka topics.
///
/// * The view's checkpoint is the next offset of every partition it reads,
///   saved in the same document as its state (see [`bookshelf_core::StoredView`]), after
///   `save_every` events, whenever it has caught up, and when stopped. A
///   restart resumes from there: no event lost, none applied twice; a record
///   at an offset before the checkpoint is skipped.
/// * Partitions are assigned, not joined through a consumer group: the view's
///   own state, not the broker, says where to resume. Reads start through
///   the crate's reader, which reads around brokers that answer a fetch
///   from inside a record batch with the next batch (tansu does).
/// * Records are judged by the log's rule ([`crate::rule`]): claims and
///   stale events (written by an owner that had lost its partition) are
///   passed over, as every other reader passes them over; each partition's
///   epoch is saved with its offset (key `topic/partition:epoch`).
/// * A record that breaks the protocol (no stream key, on the wrong
///   partition, a broken claim) or does not decode (not UTF-8, not an
///   envelope, bad payload, unknown type, schema version from the future)
///   is logged with its topic,
///   partition and offset, published to the dead-letter topic with the reason
///   in headers, and passed over; the projection goes on. Its offset is
///   checkpointed only once the dead-letter topic has acknowledged it.
pub struct KafkaProjection<V: View> {
    name: String,
    config: KafkaConfig,
    topics: Vec<String>,
    codec: EventCodec<V::Event>,
    batch_size: usize,
    save_every: u64,
    persistence: Option<ViewPersistence<V>>,
    dead_letter_topic: String,
    unknown: UnknownEvents,
    rebuild: bool,
}

impl<V: View> KafkaProjection<V> {
    /// A projection named `name` of `config`'s topic; dead letters go to
    /// `<topic>.dead-letters`.
    pub fn new(name: impl Into<String>, config: KafkaConfig) -> Self {
        KafkaProjection {
            name: name.into(),
            topics: vec![config.topic.clone()],
            dead_letter_topic: format!("{}.dead-letters", config.topic),
            config,
            codec: EventCodec::new(),
            batch_size: 512,
            save_every: 10_000,
            persistence: None,
            unknown: UnknownEvents::DeadLetter,
            rebuild: false,
        }
    }

    /// Reads these topics (instead of the configured one).
    pub fn topics<T: Into<String>>(mut self, topics: impl IntoIterator<Item = T>) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Saves the view's state and offsets in `store`, and resumes from them.
    pub fn persist_to(mut self, store: impl ViewStore) -> Self
    where
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.persistence = Some(ViewPersistence::new(store));
        self
    }

    /// Saves after this many events (default 10,000), besides when caught up
    /// and when stopped.
    pub fn save_every(mut self, events: u64) -> Self {
        self.save_every = events.max(1);
        self
    }

    /// Takes up to this many records at a time (default 512).
    pub fn batch_size(mut self, records: usize) -> Self {
        self.batch_size = records.max(1);
        self
    }

    /// Where undecodable records go.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = topic.into();
        self
    }

    /// What to do with events of types the view does not know: by default,
    /// dead-letter them, as a topic should carry only the events its views
    /// expect; [`UnknownEvents::Skip`] for a topic shared with others.
    pub fn unknown_events(mut self, policy: UnknownEvents) -> Self {
        self.unknown = policy;
        self
    }

    /// Starts from an empty view at the start of every partition, replacing
    /// what was saved at the first save.
    pub fn rebuild(mut self) -> Self {
        self.rebuild = true;
        self
    }

    /// Restores the view, assigns the partitions, and starts consuming on the
    /// current tokio runtime.
    ///
    /// # Errors
    /// When the saved view cannot be loaded or decoded, or Kafka cannot be
    /// reached.
    pub async fn start(self) -> Result<RunningKafkaProjection<V>, ProjectionError> {
        let (view, saved, taken) = self.restore().await?;
        if self.config.create_topic {
            let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
            admin_create_topics(&self.config, &topics, self.config.partitions).await?;
        }
        let mut offsets = BTreeMap::new();
        let mut from = Vec::new();
        let mut rules = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for topic in &self.topics {
            let partitions = partition_count(&self.config, topic).await?;
            counts.insert(topic.clone(), partitions);
            for partition in 0..partitions {
                let key = partition_key(topic, partition);
                let mark = saved.get(&key);
                if mark.next > 0 {
                    offsets.insert(key.clone(), mark.next);
                }
                rules.insert(key, PartitionRule::at_epoch(mark.epoch));
                from.push((topic.as_str(), partition, mark.next as i64));
            }
        }
        let reader = Reader::open(&self.config, &from, &[("enable.partition.eof", "false")]).await?;
        let mut ends = Ends::new(&self.config, &from);
        ends.refresh();
        if self.config.create_topic {
            admin_create_topics(&self.config, &[self.dead_letter_topic.as_str()], 1).await?;
        }
        let producer: FutureProducer = self
            .config
            .client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(store_error)?;
        let shared = Arc::new(RwLock::new(view));
        let at = Progress {
            offsets,
            rules,
            taken,
            ends: ends.get(),
            ended: None,
        };
        let (progress_tx, progress) = watch::channel(at.clone());
        let (stop_tx, stop) = watch::channel(false);
        tracing::info!(projection = %self.name, topics = ?self.topics, offsets = ?at.offsets, "Kafka projection started");
        let task = tokio::spawn(self.run(
            Arc::clone(&shared),
            (reader, ends),
            counts,
            producer,
            at,
            progress_tx,
            stop,
        ));
        Ok(RunningKafkaProjection {
            handle: KafkaViewHandle { shared, progress },
            stop: stop_tx,
            task,
        })
    }

    async fn restore(&self) -> Result<(V, Checkpoint, u64), ProjectionError> {
        let Some(persistence) = &self.persistence else {
            return Ok((V::default(), Checkpoint::new(), 0));
        };
        if self.rebuild {
            return Ok((V::default(), Checkpoint::new(), 0));
        }
        Ok(match persistence.restore(&self.name).await? {
            Some(saved) => {
                let checkpoint = Checkpoint::from_saved(Position(0), &saved.offsets);
                (saved.view, checkpoint, saved.checkpoint.0)
            }
            None => (V::default(), Checkpoint::new(), 0),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        self,
        shared: Arc<RwLock<V>>,
        (mut reader, mut ends): (Reader, Ends),
        counts: BTreeMap<String, i32>,
        producer: FutureProducer,
        mut at: Progress,
        progress: watch::Sender<Progress>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let result = self
            .consume(
                &shared,
                (&mut reader, &mut ends),
                &counts,
                &producer,
                &mut at,
                &progress,
                &mut stop,
            )
            .await;
        let saved = self.save(&shared, &at).await;
        let result = result.and(saved);
        at.ended = Some(result.as_ref().err().map(ToString::to_string));
        progress.send_replace(at);
        tracing::info!(projection = %self.name, ok = result.is_ok(), "Kafka projection stopped");
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn consume(
        &self,
        shared: &RwLock<V>,
        (reader, ends): (&mut Reader, &mut Ends),
        counts: &BTreeMap<String, i32>,
        producer: &FutureProducer,
        at: &mut Progress,
        progress: &watch::Sender<Progress>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let mut batch: Vec<OwnedMessage> = Vec::with_capacity(self.batch_size);
        let mut decoded = Vec::with_capacity(self.batch_size);
        let mut unsaved = 0u64;
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                read = reader.next() => read?,
            };
            batch.clear();
            if let Read::Record(message) = first {
                batch.push(message.detach());
            }
            let mut drained = false;
            while batch.len() < self.batch_size {
                match reader.next_within(Duration::ZERO).await? {
                    Some(Read::Record(message)) => batch.push(message.detach()),
                    Some(Read::End { .. }) => {}
                    None => {
                        drained = true;
                        break;
                    }
                }
            }
            for message in &batch {
                let key = partition_key(message.topic(), message.partition());
                if at
                    .offsets
                    .get(&key)
                    .is_some_and(|&next| (message.offset() as u64) < next)
                {
                    continue; // applied before the checkpoint: never twice
                }
                let partitions = counts.get(message.topic()).copied().unwrap_or(1);
                let verdict = at.rules.entry(key).or_default().judge(message, partitions);
                match verdict {
                    Verdict::Event { .. } | Verdict::Foreign => match self.decode(message) {
                        Ok(Some(event)) => decoded.push(event),
                        Ok(None) => {}
                        Err(reason) => self.dead_letter(producer, message, &reason).await?,
                    },
                    Verdict::Claimed(_) | Verdict::StaleClaim(_) => {}
                    Verdict::Stale { stream, epoch, current } => tracing::warn!(
                        projection = %self.name,
                        record = %locate(message),
                        %stream,
                        epoch,
                        current,
                        "event passed over: written under an epoch the partition had left"
                    ),
                    Verdict::Broken(reason) => self.dead_letter(producer, message, &reason).await?,
                }
            }
            {
                let mut view = shared.write().unwrap_or_else(|p| p.into_inner());
                for event in decoded.drain(..) {
                    let _span =
                        bookshelf_core::trace::event_span(&self.name, &event.event_type, &event.metadata).entered();
                    view.apply(event);
                }
            }
            for message in &batch {
                let key = partition_key(message.topic(), message.partition());
                let next = message.offset() as u64 + 1;
                let slot = at.offsets.entry(key).or_insert(0);
                if next > *slot {
                    *slot = next;
                    at.taken += 1;
                    unsaved += 1;
                }
            }
            for message in &batch {
                ends.saw(message.topic(), message.partition(), message.offset() as u64 + 1);
            }
            ends.refresh();
            at.ends = ends.get();
            if unsaved > 0 && (unsaved >= self.save_every || drained) {
                match self.save(shared, at).await {
                    Ok(()) => unsaved = 0,
                    Err(error) => {
                        tracing::warn!(projection = %self.name, %error, "could not save the view; will retry")
                    }
                }
            }
            bookshelf_core::telemetry::progress(&self.name, &at.partitions());
            progress.send_replace(at.clone());
        }
    }

    /// The event in a record; `Ok(None)` for an event type the view skips.
    fn decode(&self, message: &OwnedMessage) -> Result<Option<Envelope<V::Event>>, String> {
        let decoded = if crate::cloudevents::is_foreign(message) {
            let recorded = crate::cloudevents::envelope_of(message)?;
            self.codec.decode_envelope(&recorded)
        } else {
            let body = message.payload().ok_or("the record has no body")?;
            let json = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
            self.codec.decode_json(json)
        };
        match decoded {
            Ok(mut event) => {
                event.position = Position(message.offset() as u64);
                Ok(Some(event))
            }
            Err(DecodeError::UnknownEventType { .. }) if self.unknown == UnknownEvents::Skip => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn dead_letter(
        &self,
        producer: &FutureProducer,
        message: &OwnedMessage,
        reason: &str,
    ) -> Result<(), ProjectionError> {
        let source = locate(message);
        bookshelf_core::telemetry::dead_letter(&self.name);
        tracing::warn!(projection = %self.name, %source, %reason, "poison record sent to {}", self.dead_letter_topic);
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        for (key, value) in [
            (dead_letter_headers::REASON, reason),
            (dead_letter_headers::SOURCE, source.as_str()),
            (dead_letter_headers::PROJECTION, self.name.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.dead_letter_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(body) = message.payload() {
            record = record.payload(body);
        }
        producer
            .send(record, self.config.timeout)
            .await
            .map_err(|(error, _)| store_error(error))?;
        Ok(())
    }

    async fn save(&self, shared: &RwLock<V>, at: &Progress) -> Result<(), ProjectionError> {
        match &self.persistence {
            Some(persistence) => {
                let mut checkpoint = Checkpoint::new();
                for (key, &next) in &at.offsets {
                    let epoch = at.rules.get(key).map_or(0, PartitionRule::epoch);
                    checkpoint.set(key, Mark { next, epoch });
                }
                let (_, offsets) = checkpoint.to_saved();
                persistence.save(&self.name, shared, Position(at.taken), offsets).await
            }
            None => Ok(()),
        }
    }
}

fn store_error(error: rdkafka::error::KafkaError) -> ProjectionError {
    ProjectionError::Store(StoreError::Backend(Box::new(error)))
}

impl Progress {
    /// Each partition's position and end as last seen.
    fn partitions(&self) -> BTreeMap<String, PartitionProgress> {
        let mut partitions: BTreeMap<String, PartitionProgress> = self
            .ends
            .iter()
            .map(|(key, &end)| {
                let position = self.offsets.get(key).copied().unwrap_or(0);
                (
                    key.clone(),
                    PartitionProgress {
                        position,
                        end: Some(end),
                    },
                )
            })
            .collect();
        for (key, &position) in &self.offsets {
            partitions
                .entry(key.clone())
                .or_insert(PartitionProgress { position, end: None });
        }
        partitions
    }
}

#[derive(Clone, Debug)]
struct Progress {
    /// The next offset of every partition that has delivered a record.
    offsets: BTreeMap<String, u64>,
    /// Where the log's rule stands in each partition.
    rules: BTreeMap<String, PartitionRule>,
    /// How many records the view has taken (applied, skipped or set aside).
    taken: u64,
    /// Each partition's end as last seen.
    ends: BTreeMap<String, u64>,
    /// `Some(None)` once stopped, `Some(Some(reason))` once failed.
    ended: Option<Option<String>>,
}

/// A running Kafka projection.
pub struct RunningKafkaProjection<V> {
    handle: KafkaViewHandle<V>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ProjectionError>>,
}

impl<V: View> RunningKafkaProjection<V> {
    /// A handle to read the view; clone it freely.
    pub fn handle(&self) -> KafkaViewHandle<V> {
        self.handle.clone()
    }

    /// Stops after the batch in hand, saves the view with its offsets, and
    /// returns how the projection ended.
    ///
    /// # Errors
    /// What stopped the projection, or what failed the final save.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        self.stop.send_replace(true);
        self.task.await.map_err(|e| ProjectionError::Task(e.to_string()))?
    }
}

/// A cheap, cloneable handle to a running Kafka projection's view.
pub struct KafkaViewHandle<V> {
    shared: Arc<RwLock<V>>,
    progress: watch::Receiver<Progress>,
}

impl<V> Clone for KafkaViewHandle<V> {
    fn clone(&self) -> Self {
        KafkaViewHandle {
            shared: Arc::clone(&self.shared),
            progress: self.progress.clone(),
        }
    }
}

impl<V: View> KafkaViewHandle<V> {
    /// Answers a query from the view as it is now.
    pub fn read<R>(&self, query: impl FnOnce(&V) -> R) -> R {
        query(&self.shared.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The next offset of each partition (`topic/partition`) the view has
    /// taken records from.
    pub fn offsets(&self) -> BTreeMap<String, u64> {
        self.progress.borrow().offsets.clone()
    }

    /// Waits until the view has taken every record before `ends` (the next
    /// offset per `topic/partition`, as [`crate::high_watermarks`] gives), or
    /// the projection has ended; returns whether the ends were reached.
    pub async fn wait_for(&self, ends: &BTreeMap<String, u64>) -> bool {
        let mut progress = self.progress.clone();
        let reached = |p: &Progress| {
            ends.iter()
                .all(|(key, &end)| end == 0 || p.offsets.get(key).is_some_and(|&at| at >= end))
        };
        let outcome = match progress.wait_for(|p| reached(p) || p.ended.is_some()).await {
            Ok(p) => reached(&p),
            Err(_) => false,
        };
        outcome
    }

    /// Each partition's position (the next offset the view will take) and
    /// end as last seen, and so the lag.
    pub fn progress(&self) -> BTreeMap<String, PartitionProgress> {
        self.progress.borrow().partitions()
    }

    /// Why the projection failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.progress.borrow().ended.clone().flatten()
    }
}
