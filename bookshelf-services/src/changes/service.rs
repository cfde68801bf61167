//! The change feed, the replica and the notifier as services on Kafka, one
//! role per process.
//!
//! * `feed` reads the books topic (every partition) and publishes each
//!   book's changes to the changes topic. Its instances follow the changes
//!   topic; the one that writes it (the store's `one_owner`, picked among
//!   the instances Consul lists) runs the feed, with its states and
//!   checkpoint in a file of its own. When it dies another takes over and
//!   resumes from its own checkpoint: a change already published is not
//!   published again (each change is appended at its book's version).
//! * `replica` projects the changes topic into every book's latest state,
//!   served at `GET /replica`.
//! * `notifier` sends a message for each read and rating to a mailbox
//!   directory; several notifiers may share one mailbox, which takes each
//!   message once (by its key, the change's event id).
//!
//! Every role serves `GET /progress`: its position and lag per partition.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::PartitionBody;
use axum::extract::State;
use axum::http::StatusCode;
use bookshelf::change::ChangeFeed;
use bookshelf::postgres::table::{TableFold, Tables};
use bookshelf::postgres::PostgresStore;
use bookshelf::process::ProcessRunner;
use bookshelf::{FileViewStore, PartitionProgress, RetryPolicy};
use bookshelf::{ProjectionRunner, UnknownEvents, ViewState};
use bookshelf_kafka::{KafkaConfig, KafkaDeadLetters, KafkaLog, KafkaStore};
use serde_json::{json, Value};

use crate::api::{ApiError, ServiceFlags};
use crate::books::Book;
use crate::changes::consumers::{replica_rows, Mailbox, Notifier, Replica, ReplicaTable};
use crate::docs::{Api, ErrorBody};

/// What one process of the changes service does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Publishes the books' changes.
    Feed,
    /// Keeps every book's latest state from the changes.
    Replica,
    /// Sends a message for each read and rating.
    Notifier,
}

/// Where the process stands, for `GET /progress`.
type Progress = Arc<Mutex<BTreeMap<String, PartitionProgress>>>;

/// Where a role stands in each partition it reads.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ProgressBody {
    /// By partition (`topic/partition`).
    partitions: BTreeMap<String, PartitionBody>,
}

/// Where this process stands.
#[utoipa::path(
    get, path = "/progress", tag = "meta",
    responses((status = 200, description = "Position and lag per partition", body = ProgressBody))
)]
async fn progress(State(progress): State<Progress>) -> axum::Json<ProgressBody> {
    let progress = progress.lock().unwrap_or_else(|p| p.into_inner());
    let partitions = progress
        .iter()
        .map(|(partition, &p)| (partition.clone(), bookshelf::PartitionReport::from(p).into()))
        .collect();
    axum::Json(ProgressBody { partitions })
}

/// Every book's latest state, from the changes.
#[utoipa::path(
    get, path = "/replica", tag = "changes",
    responses((status = 200, description = "Each book's state by id", body = Object))
)]
async fn replica_books(State(view): State<ViewState<Replica>>) -> axum::Json<Value> {
    axum::Json(json!(view.read(|r| r.books.clone())))
}

/// Every book's latest state, from the replica's table.
#[utoipa::path(
    get, path = "/replica", tag = "changes",
    responses(
        (status = 200, description = "Each book's state by id", body = Object),
        (status = 503, description = "The database cannot be read now", body = ErrorBody),
    )
)]
async fn replica_table(State(tables): State<Tables>) -> Result<axum::Json<Value>, ApiError> {
    let rows = replica_rows(&tables)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(axum::Json(json!(rows)))
}

/// Reports a replica's progress every 100 ms until the shutdown switch
/// is set, then stops it.
fn follow_until_shut<R: Clone + Send + Sync + 'static>(
    handle: bookshelf::Handle<R>,
    replica: bookshelf::Running<R>,
    progress: Progress,
    mut shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            *progress.lock().unwrap_or_else(|p| p.into_inner()) = handle.progress();
            tokio::select! {
                () = shut(&mut shutdown) => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        if let Err(error) = replica.stop().await {
            tracing::error!(%error, "the replica stopped with an error");
        }
    })
}

/// A role started: the routes it serves, and its task, which stops (saving
/// its state) when the process's shutdown switch is set.
pub struct Running {
    pub routes: Api,
    pub task: tokio::task::JoinHandle<()>,
    pub store: Option<KafkaStore>,
}

type Shutdown = tokio::sync::watch::Receiver<bool>;

/// The pauses before a runner that ended is started again: from a second,
/// growing to half a minute while it keeps ending.
const RESTARTS: RetryPolicy = RetryPolicy::forever(Duration::from_secs(1), Duration::from_secs(30));

async fn shut(shutdown: &mut Shutdown) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

pub struct Settings<'a> {
    pub flags: &'a ServiceFlags,
    pub broker: &'a str,
    pub name: &'a str,
    pub id: &'a str,
    pub address: String,
    pub data: PathBuf,
    pub changes_topic: &'a str,
    pub mailbox: PathBuf,
    /// Where the instance's heartbeats record its check's passes.
    pub passing: &'a bookshelf_consul::Passing,
}

pub async fn start(
    role: Role,
    settings: Settings<'_>,
    mut shutdown: Shutdown,
) -> Result<Running, Box<dyn std::error::Error>> {
    let books = KafkaConfig::new(settings.broker, settings.flags.topic.as_str());
    let changes = KafkaConfig::new(settings.broker, settings.changes_topic)
        .partitions(3)
        .create_topic(true);
    std::fs::create_dir_all(&settings.data)?;
    let progress: Progress = Arc::default();
    let saved = |what: &str| FileViewStore::new(settings.data.join(format!("{what}-{}.json", settings.id)));
    let mut routes = Api::new()
        .route(__path_progress, self::progress)
        .with_state(Arc::clone(&progress));
    let (task, store) = match role {
        Role::Feed => {
            let mut builder = KafkaStore::builder(changes)
                .member(settings.id, &settings.address)
                .state_file(
                    settings
                        .data
                        .join(format!("{}-{}.sqlite", settings.changes_topic, settings.id)),
                )
                .one_owner();
            builder = settings
                .flags
                .share_partitions(builder, settings.name, settings.id, settings.passing)?;
            let store = builder.open().await?;
            let task = tokio::spawn(run_feed(
                store.clone(),
                KafkaLog::new(books),
                saved("feed"),
                progress,
                shutdown,
            ));
            (task, Some(store))
        }
        // With --postgres (or DATABASE_URL): the replica is a table in that
        // database, its rows moved with its checkpoint.
        Role::Replica if settings.flags.postgres_url().is_some() => {
            let url = settings.flags.postgres_url().unwrap_or_default();
            let db = PostgresStore::connect(url).await?;
            let dead_letters = KafkaDeadLetters::open(&changes).await?;
            let replica = TableFold::open("replica", &db, ReplicaTable)
                .await?
                .follow(KafkaLog::new(changes))
                .dead_letters(dead_letters)
                .unknown_events(UnknownEvents::DeadLetter)
                .start();
            let handle = replica.handle();
            routes = routes.merge(
                Api::new()
                    .route(__path_replica_table, replica_table)
                    .with_state(replica.reads().clone()),
            );
            (follow_until_shut(handle, replica, progress, shutdown), None)
        }
        Role::Replica => {
            let dead_letters = KafkaDeadLetters::open(&changes).await?;
            let replica = ProjectionRunner::<Replica, _>::new("replica", KafkaLog::new(changes))
                .persist_to(saved("replica"))
                .save_every(100)
                .save_when_caught_up()
                .dead_letters(dead_letters)
                .unknown_events(UnknownEvents::DeadLetter)
                .start();
            let handle = replica.handle();
            routes = routes.merge(
                Api::new()
                    .route(__path_replica_books, replica_books)
                    .with_state(replica.reads().clone()),
            );
            (follow_until_shut(handle, replica, progress, shutdown), None)
        }
        Role::Notifier => {
            std::fs::create_dir_all(&settings.mailbox)?;
            let mailbox = Mailbox {
                dir: settings.mailbox.clone(),
            };
            let notifiers = KafkaLog::new(changes);
            // How far it has sent, apart from its state: a notifier whose
            // state is lost or rebuilt sends nothing again.
            let sent = saved("notifier-sent");
            let saved = saved("notifier");
            let task = tokio::spawn(async move {
                let mut restarts = RESTARTS.delays();
                loop {
                    let notifier = ProcessRunner::<Notifier, _, _>::new("notifier", notifiers.clone(), mailbox.clone())
                        .persist_to(saved.clone())
                        .effects_in(sent.clone())
                        .retry(RetryPolicy::attempts(20).with_backoff(Duration::from_millis(50)))
                        .start();
                    let stopping = loop {
                        *progress.lock().unwrap_or_else(|p| p.into_inner()) = notifier.progress();
                        tokio::select! {
                            () = notifier.ended() => break false,
                            () = shut(&mut shutdown) => break true,
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    };
                    if let Err(error) = notifier.stop().await {
                        tracing::error!(%error, "the notifier stopped with an error; starting it again");
                    }
                    if stopping {
                        return;
                    }
                    tokio::time::sleep(restarts.next().unwrap_or(RESTARTS.max_backoff)).await;
                }
            });
            (task, None)
        }
    };
    Ok(Running { routes, task, store })
}

/// Runs the feed whenever this instance writes the changes topic, and stops
/// it at once when it no longer does.
async fn run_feed(
    store: KafkaStore,
    books: KafkaLog,
    saved: FileViewStore,
    progress: Progress,
    mut shutdown: Shutdown,
) {
    let mut restarts = RESTARTS.delays();
    loop {
        tokio::select! {
            () = store.until_owner_of_all(true) => {}
            () = shut(&mut shutdown) => return,
        }
        tracing::info!("this instance writes the changes topic: the feed starts");
        let feed = ChangeFeed::<Book, _, _>::new(books.clone(), store.clone())
            .persist_to(saved.clone())
            .save_every(100)
            .retry(RetryPolicy::attempts(12).with_backoff(Duration::from_millis(50)))
            .start();
        loop {
            *progress.lock().unwrap_or_else(|p| p.into_inner()) = feed.progress();
            tokio::select! {
                () = store.until_owner_of_all(false) => {
                    tracing::info!("this instance no longer writes the changes topic: the feed stops");
                    if let Err(error) = feed.stop().await {
                        tracing::warn!(%error, "the feed ended with an error");
                    }
                    break;
                }
                () = feed.ended() => {
                    tracing::error!("the feed ended: {:?}; starting it again", feed.stop().await);
                    tokio::time::sleep(restarts.next().unwrap_or(RESTARTS.max_backoff)).await;
                    break;
                }
                () = shut(&mut shutdown) => {
                    if let Err(error) = feed.stop().await {
                        tracing::warn!(%error, "the feed ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}
