//! `bookshelf`, the operator's command line: the streams of a store, their
//! events and its projections, on the embedded SQLite store, on PostgreSQL,
//! or on a Kafka topic.
//!
//! ```text
//! bookshelf --data bookshelf-data streams
//! bookshelf --data bookshelf-data events book-6f1c… [--json] [--follow]
//! bookshelf --postgres postgres://… streams --category book --json
//! bookshelf --data bookshelf-data projections
//! bookshelf --broker 127.0.0.1:9092 --topic books events book-6f1c… --follow
//! bookshelf --data bookshelf-data dead-letters [last-read] [--json]
//! bookshelf --data bookshelf-data redrive last-read --id 3 | --all [--wait]
//! bookshelf --service http://127.0.0.1:8080 runners
//! bookshelf --service http://127.0.0.1:8087 views
//! bookshelf --service http://127.0.0.1:8087 rebuild last-read --wait
//! bookshelf --service http://127.0.0.1:8087 roll-back last-read
//! bookshelf --service http://127.0.0.1:8087 drop-previous last-read
//! ```
//!
//! Output is for people by default and one JSON document per line with
//! `--json`, for scripts. Exit codes: 0 done, 1 the store failed (the
//! message names the file or server) or, with `redrive --wait`, a letter
//! was put back or not taken in time, 2 the command line is wrong, 3 no
//! such stream, letter or view.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bookshelf::{
    Checkpoint, EventSource, EventStore, Follower, Position, Record, RecordedEvent, StreamId, Subscription, Version,
};
use bookshelf_kafka::KafkaConfig;
use clap::{Args, Parser, Subcommand};

mod service;

/// The exit code for a stream that is not in the store.
const NOT_FOUND: u8 = 3;

/// Browse a Bookshelf event store.
#[derive(Parser, Debug)]
#[command(name = "bookshelf", version)]
pub struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    /// With `--postgres`: the schema the store's tables are in, as the
    /// services name theirs; default the connection's search path
    #[arg(long, requires = "postgres")]
    schema: Option<String>,
    /// With `--broker`: the topic of the events
    #[arg(long, requires = "broker", default_value = "books")]
    topic: String,
    #[command(subcommand)]
    command: Command,
}

/// Which store to read, or which service to ask: exactly one.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct StoreArgs {
    /// The embedded store in this directory (its `bookshelf.sqlite`), as
    /// the services keep it with `--data`
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The store in this PostgreSQL database (a `postgres://` URL, such as
    /// "$DATABASE_URL")
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// The log in a Kafka topic (`--topic`) on these bootstrap servers,
    /// read as any reader reads it
    #[arg(long, value_name = "SERVERS")]
    broker: Option<String>,
    /// A running service (its base URL, such as http://127.0.0.1:8080),
    /// for `runners`
    #[arg(long, value_name = "URL")]
    service: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The streams and their versions, in the order of their ids
    Streams {
        /// Only the streams of this category (the part of the id before
        /// the first `-`, such as `book`)
        #[arg(long)]
        category: Option<String>,
        /// One JSON object per stream: `{"stream":…,"version":…}`
        #[arg(long)]
        json: bool,
    },
    /// The saved views and table views, where each stands in the log and
    /// how far behind its end
    Projections {
        /// One JSON object per reader and partition
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Service(service::Asked),
    /// The dead letters the store keeps (what runners set aside), in the
    /// order set aside: each with its runner, where it was, and why
    DeadLetters {
        /// Only this runner's
        runner: Option<String>,
        /// One JSON object per letter, its event as stored
        #[arg(long)]
        json: bool,
    },
    /// Queues dead letters of a runner for re-drive: the runner, running
    /// the code now deployed, applies each once (in the order queued,
    /// after what it had applied) or puts it back with the new reason
    Redrive {
        /// The runner whose letters to re-drive
        runner: String,
        /// The letter with this number (`dead-letters` shows them)
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<u64>,
        /// Every letter of the runner not already queued
        #[arg(long)]
        all: bool,
        /// Then wait (up to SECONDS, 60 by default) for the runner to take
        /// them, and say which it applied and which it put back
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "60")]
        wait: Option<u64>,
    },
    /// A stream's events, in order
    Events {
        /// The stream's id, such as `book-6f1c…`
        stream: String,
        /// One JSON envelope per event, as Bookshelf stores them
        #[arg(long)]
        json: bool,
        /// Then wait for new events of the stream and show each as it is
        /// stored, until interrupted
        #[arg(long)]
        follow: bool,
    },
}

/// What went wrong, and the exit code that says so.
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn store(error: impl std::fmt::Display) -> Failure {
        Failure {
            message: error.to_string(),
            code: 1,
        }
    }
}

/// The output could not be written (a closed pipe, a full disk).
fn written(error: std::io::Error) -> Failure {
    Failure::store(format!("cannot write the output: {error}"))
}

/// The events of one stream shown so far: each is shown once, in version
/// order, however often the log hands it over (a stream read, then the log
/// followed from before the read).
struct Shown<'a> {
    stream: &'a StreamId,
    json: bool,
    last: Version,
}

impl<'a> Shown<'a> {
    fn new(stream: &'a StreamId, json: bool) -> Self {
        Shown {
            stream,
            json,
            last: Version(0),
        }
    }

    /// Shows those of `events` that are of the stream and newer than the
    /// last shown, then flushes `out`.
    fn show_new<'e>(
        &mut self,
        events: impl IntoIterator<Item = &'e RecordedEvent>,
        out: &mut impl Write,
    ) -> Result<(), Failure> {
        for event in events {
            if &event.stream_id == self.stream && event.version > self.last {
                show(event, self.json, out).map_err(written)?;
                self.last = event.version;
            }
        }
        out.flush().map_err(written)
    }
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bookshelf: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &mut std::io::stdout().lock())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("bookshelf: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Runs `cli`, writing what it shows to `out`.
async fn run(mut cli: Cli, out: &mut impl Write) -> Result<(), Failure> {
    match (&cli.store.service, cli.command) {
        (Some(url), Command::Service(asked)) => return service::ask(url, asked, out).await,
        (Some(_), _) => {
            return Err(Failure {
                message: format!(
                    "--service names a running service: its commands are {}",
                    service::COMMANDS
                ),
                code: 2,
            })
        }
        (None, Command::Service(_)) => {
            return Err(Failure {
                message: format!(
                    "{} ask a running service: name it with --service URL",
                    service::COMMANDS
                ),
                code: 2,
            })
        }
        (None, command) => cli.command = command,
    }
    if let Some(dir) = &cli.store.data {
        let path = dir.join("bookshelf.sqlite");
        // Opening would make an empty store: a typo must not look like one.
        if !path.is_file() {
            return Err(Failure::store(format!("no event store at {}", path.display())));
        }
        let store = bookshelf::sqlite::SqliteStore::open(&path).map_err(Failure::store)?;
        if let Command::Projections { json } = cli.command {
            // Every file of the directory that keeps checkpoints.
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Failure::store(format!("cannot list {}: {e}", dir.display())))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|e| e == "sqlite"))
                .collect();
            files.sort();
            let mut saved = Vec::new();
            for file in &files {
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                for checkpoint in bookshelf::sqlite::saved_checkpoints(file).map_err(Failure::store)? {
                    saved.push((name.clone(), checkpoint));
                }
            }
            return projections(&store, saved, json, out).await;
        }
        if let Command::DeadLetters { .. } | Command::Redrive { .. } = cli.command {
            return letters(&store.dead_letters(), cli.command, out).await;
        }
        return browse(&store, cli.command, out).await;
    }
    if let Some(url) = &cli.store.postgres {
        let mut options = bookshelf::postgres::Options::new().without_migrating();
        if let Some(schema) = &cli.schema {
            options = options.schema(schema.clone());
        }
        let store = bookshelf::postgres::PostgresStore::connect_with(url, options)
            .await
            .map_err(Failure::store)?;
        if let Command::Projections { json } = cli.command {
            let saved = store.saved_checkpoints().await.map_err(Failure::store)?;
            let place = cli.schema.clone().unwrap_or_else(|| "-".to_owned());
            let saved = saved.into_iter().map(|c| (place.clone(), c)).collect();
            return projections(&store, saved, json, out).await;
        }
        if let Command::DeadLetters { .. } | Command::Redrive { .. } = cli.command {
            return letters(&store.dead_letters(), cli.command, out).await;
        }
        return browse(&store, cli.command, out).await;
    }
    if let Some(broker) = &cli.store.broker {
        return on_kafka(KafkaConfig::new(broker.clone(), cli.topic.clone()), cli.command, out).await;
    }
    Err(Failure {
        message: "name a store: --data DIR, --postgres URL or --broker SERVERS".to_owned(),
        code: 2,
    })
}

/// Carries out `dead-letters` or `redrive` on the letters `kept`.
async fn letters(kept: &dyn bookshelf::DeadLetters, command: Command, out: &mut impl Write) -> Result<(), Failure> {
    let list =
        |runner: Option<String>| async move { kept.kept_letters(runner.as_deref()).await.map_err(Failure::store) };
    let (runner, id, wait) = match command {
        Command::DeadLetters { runner, json } => {
            return print_dead_letters(&list(runner).await?, json, out);
        }
        Command::Redrive { runner, id, wait, .. } => (runner, id, wait),
        _ => unreachable!("only the dead letters' commands come here"),
    };
    let before = list(Some(runner.clone())).await?;
    // Without `--id`, clap has made sure of `--all`.
    let which = match id {
        Some(id) if !before.iter().any(|k| k.id == id) => {
            return Err(Failure {
                message: format!("no dead letter {id} of runner {runner}"),
                code: NOT_FOUND,
            });
        }
        Some(id) => bookshelf::Redrive::Letter(id),
        None => bookshelf::Redrive::All,
    };
    let queued = kept.redrive(&runner, which).await.map_err(Failure::store)?;
    let waiting: Vec<u64> = list(Some(runner.clone()))
        .await?
        .into_iter()
        .filter(|k| k.ticket.is_some() && id.is_none_or(|id| id == k.id))
        .map(|k| k.id)
        .collect();
    writeln!(
        out,
        "queued {queued} dead letter{} of {runner} for re-drive ({} waiting)",
        if queued == 1 { "" } else { "s" },
        waiting.len()
    )
    .map_err(written)?;
    let Some(patience) = wait else {
        return out.flush().map_err(written);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(patience);
    loop {
        let now = list(Some(runner.clone())).await?;
        let pending: Vec<&bookshelf::KeptDeadLetter> = now
            .iter()
            .filter(|k| waiting.contains(&k.id) && k.ticket.is_some())
            .collect();
        if pending.is_empty() {
            let mut put_back = 0;
            for id in &waiting {
                match now.iter().find(|k| k.id == *id) {
                    None => writeln!(out, "letter {id}: applied"),
                    Some(back) => {
                        put_back += 1;
                        writeln!(out, "letter {id}: put back: {}", back.letter.reason)
                    }
                }
                .map_err(written)?;
            }
            out.flush().map_err(written)?;
            return match put_back {
                0 => Ok(()),
                n => Err(Failure::store(format!("{n} of {} still failed", waiting.len()))),
            };
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Failure::store(format!(
                "runner {runner} has not taken {} letters in {patience} s: is it running?",
                pending.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Shows `kept` dead letters: a table, or one JSON object each (as the
/// services' `GET /dead-letters` gives them).
fn print_dead_letters(kept: &[bookshelf::KeptDeadLetter], json: bool, out: &mut impl Write) -> Result<(), Failure> {
    let mut rows = vec![["ID", "SET ASIDE", "RUNNER", "WHERE", "RE-DRIVE", "REASON"].map(str::to_owned)];
    for kept in kept {
        let body = crate::api::LetterBody::from(kept);
        if json {
            let line =
                serde_json::to_string(&body).map_err(|e| Failure::store(format!("cannot show a letter: {e}")))?;
            writeln!(out, "{line}").map_err(written)?;
        } else {
            rows.push([
                body.id.to_string(),
                body.set_aside_at,
                body.runner,
                body.location,
                body.ticket.map_or_else(|| "-".to_owned(), |t| format!("queued #{t}")),
                body.reason,
            ]);
        }
    }
    if !json {
        print_table(&rows, out).map_err(written)?;
    }
    out.flush().map_err(written)
}

/// Carries out `command` on `store`.
async fn browse<S: EventStore>(store: &S, command: Command, out: &mut impl Write) -> Result<(), Failure> {
    match command {
        Command::Streams { category, json } => {
            let streams = store.streams().await.map_err(Failure::store)?;
            print_streams(&streams, category.as_deref(), json, out).map_err(written)?;
        }
        Command::Projections { .. } => {
            return Err(Failure::store("this store keeps no projections"));
        }
        Command::Service(_) => unreachable!("a service's commands are answered before a store is opened"),
        Command::DeadLetters { .. } | Command::Redrive { .. } => {
            unreachable!("a store that keeps dead letters answers for them")
        }
        Command::Events { stream, json, follow } => {
            let stream = StreamId::new(stream);
            // Where the log stands before the stream is read: following
            // from there misses nothing stored after the read.
            let head = if follow {
                Some(store.head().await.map_err(Failure::store)?)
            } else {
                None
            };
            let events = store.read_stream(&stream, Version(1)).await.map_err(Failure::store)?;
            if events.is_empty() && !follow {
                return Err(Failure {
                    message: format!("no stream {stream} in the store"),
                    code: NOT_FOUND,
                });
            }
            let mut shown = Shown::new(&stream, json);
            shown.show_new(events.iter().map(|e| &**e), out)?;
            if let Some(head) = head {
                follow_stream(store, head, shown, out).await?;
            }
        }
    }
    Ok(())
}

/// Shows `streams` (of `category`, when given), one a line.
fn print_streams(
    streams: &[(StreamId, Version)],
    category: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let chosen: Vec<_> = streams
        .iter()
        .filter(|(stream, _)| category.is_none_or(|c| stream.category() == c))
        .collect();
    if json {
        for (stream, version) in chosen {
            let line = serde_json::json!({"stream": stream.as_str(), "version": version.0});
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    let width = chosen.iter().map(|(s, _)| s.as_str().len()).max().unwrap_or(6).max(6);
    writeln!(out, "{:<width$}  VERSION", "STREAM")?;
    for (stream, version) in chosen {
        writeln!(out, "{:<width$}  {}", stream.as_str(), version.0)?;
    }
    Ok(())
}

/// Carries out `command` on a Kafka topic, reading it as any reader does
/// (never as a writer: no partition is claimed, nothing is written). The
/// topic has no index, so `streams` and `events` read it from its start to
/// the ends its partitions had when the command began.
async fn on_kafka(config: KafkaConfig, command: Command, out: &mut impl Write) -> Result<(), Failure> {
    let topic = config.topic().to_owned();
    if let Command::DeadLetters { .. } | Command::Redrive { .. } = command {
        let letters = bookshelf_kafka::KafkaDeadLetters::open(&config)
            .await
            .map_err(Failure::store)?;
        return self::letters(&letters, command, out).await;
    }
    let ends = bookshelf_kafka::high_watermarks(&config, &[&topic])
        .await
        .map_err(Failure::store)?;
    let log = bookshelf_kafka::KafkaLog::new(config);
    match command {
        Command::Streams { category, json } => {
            let mut streams = std::collections::BTreeMap::new();
            let mut follower = log.follow(&Checkpoint::new()).await.map_err(Failure::store)?;
            read_to(&mut *follower, &ends, |event| {
                let version = streams.entry(event.stream_id.clone()).or_insert(Version(0));
                *version = (*version).max(event.version);
            })
            .await?;
            let streams: Vec<_> = streams.into_iter().collect();
            print_streams(&streams, category.as_deref(), json, out).map_err(written)?;
        }
        Command::Projections { .. } => {
            return Err(Failure::store(format!(
                "topic {topic} keeps no checkpoints: its readers save theirs where they run \
                 (name a service's --data directory, or its database)"
            )));
        }
        Command::DeadLetters { .. } | Command::Redrive { .. } => {
            unreachable!("the dead letters' topics answer for them")
        }
        Command::Service(_) => unreachable!("a service's commands are answered before a store is opened"),
        Command::Events { stream, json, follow } => {
            let stream = StreamId::new(stream);
            let mut follower = log.follow(&Checkpoint::new()).await.map_err(Failure::store)?;
            let mut events = Vec::new();
            read_to(&mut *follower, &ends, |event| {
                if event.stream_id == stream {
                    events.push(Arc::clone(event));
                }
            })
            .await?;
            if events.is_empty() && !follow {
                return Err(Failure {
                    message: format!("no stream {stream} in topic {topic}"),
                    code: NOT_FOUND,
                });
            }
            events.sort_by_key(|event| event.version);
            let mut shown = Shown::new(&stream, json);
            shown.show_new(events.iter().map(|e| &**e), out)?;
            if follow {
                let mut batch = Vec::new();
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                        next = follower.next_batch(&mut batch, 512) => next.map_err(Failure::store)?,
                    }
                    let events = batch.iter().filter_map(|followed| match &followed.record {
                        Record::Event(event) => Some(&**event),
                        _ => None,
                    });
                    shown.show_new(events, out)?;
                }
            }
        }
    }
    Ok(())
}

/// How long a read of a topic may go without reaching anything before it
/// is given up: the broker answers in far less.
const STALLED: Duration = Duration::from_secs(30);

/// Reads `follower` until every partition reaches its end in `ends`,
/// handing each event to `each`.
async fn read_to(
    follower: &mut dyn Follower,
    ends: &BTreeMap<String, u64>,
    mut each: impl FnMut(&Arc<RecordedEvent>),
) -> Result<(), Failure> {
    let mut at = Checkpoint::new();
    let mut batch = Vec::new();
    while !at.reached(ends) {
        match tokio::time::timeout(STALLED, follower.next_batch(&mut batch, 1024)).await {
            Ok(next) => next.map_err(Failure::store)?,
            Err(_) => {
                return Err(Failure::store(format!(
                    "the topic gave nothing for {} s before its end ({ends:?}; read to {at:?})",
                    STALLED.as_secs()
                )))
            }
        }
        for followed in batch.drain(..) {
            at.set(&followed.partition, followed.mark);
            if let Record::Event(event) = &followed.record {
                each(event);
            }
        }
    }
    Ok(())
}

/// Shows each saved checkpoint (with where it is kept) per partition: its
/// position, and for the store's own log its end and lag. Partitions of
/// another log (a view fed from Kafka, say) show their position only.
async fn projections<S: EventStore>(
    store: &S,
    saved: Vec<(String, bookshelf::SavedCheckpoint)>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let end = store.head().await.map_err(Failure::store)?.0;
    let mut rows = Vec::new();
    // Where a view's versions are remembered is no reader.
    for (place, saved) in saved.iter().filter(|(_, s)| !bookshelf::versions::is_versions(&s.name)) {
        for (partition, mark) in saved.checkpoint.iter() {
            let end = (partition == bookshelf::source::GLOBAL).then_some(end);
            let lag = end.map(|end| end.saturating_sub(mark.next));
            rows.push((
                saved.name.as_str(),
                saved.kind,
                place.as_str(),
                partition,
                mark.next,
                end,
                lag,
            ));
        }
    }
    if json {
        for (name, kind, place, partition, position, end, lag) in rows {
            let line = serde_json::json!({
                "name": name, "kind": kind, "in": place, "partition": partition,
                "position": position, "end": end, "lag": lag,
            });
            writeln!(out, "{line}").map_err(written)?;
        }
        return Ok(());
    }
    let shown = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let place_width = rows.iter().map(|r| r.2.len()).max().unwrap_or(2).max(2);
    writeln!(
        out,
        "{:<width$}  KIND   {:<place_width$}  PARTITION  POSITION  END  LAG",
        "NAME", "IN"
    )
    .map_err(written)?;
    for (name, kind, place, partition, position, end, lag) in rows {
        let partition = if partition.is_empty() { "-" } else { partition };
        writeln!(
            out,
            "{name:<width$}  {kind:<5}  {place:<place_width$}  {partition:<9}  {position:<8}  {}  {}",
            shown(end),
            shown(lag)
        )
        .map_err(written)?;
    }
    Ok(())
}

/// Shows the new events of the stream `shown` follows as they are stored,
/// reading the log from `from`, until interrupted.
async fn follow_stream<S: EventStore>(
    store: &S,
    from: Position,
    mut shown: Shown<'_>,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut subscription = store.subscribe(from).await.map_err(Failure::store)?;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = subscription.next_batch(&mut batch, 512) => next.map_err(Failure::store)?,
        }
        // The stream was read after `from`: what it showed may come again.
        shown.show_new(batch.iter().map(|e| &**e), out)?;
    }
}

/// One event: its envelope as one JSON line, or a header line and its
/// payload, indented, for people.
fn show(event: &RecordedEvent, json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{}", event.to_json());
    }
    writeln!(
        out,
        "{} v{} @{} {} {}",
        event.stream_id,
        event.version.0,
        event.position.0,
        event.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        event.event_type
    )?;
    let payload: serde_json::Value = serde_json::from_str(event.payload.get()).unwrap_or(serde_json::Value::Null);
    let pretty = serde_json::to_string_pretty(&payload).unwrap_or_else(|_| event.payload.get().to_owned());
    for line in pretty.lines() {
        writeln!(out, "    {line}")?;
    }
    let metadata = serde_json::to_string(&event.metadata).unwrap_or_default();
    if metadata != "{}" {
        writeln!(out, "    metadata {metadata}")?;
    }
    Ok(())
}

/// Writes `rows` (the first the header) as columns two spaces apart, each as
/// wide as its widest cell; the last column is not padded.
fn print_table<const N: usize>(rows: &[[String; N]], out: &mut impl Write) -> std::io::Result<()> {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
