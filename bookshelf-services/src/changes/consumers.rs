//! Two services that use the books' change events without the books' code:
//! a replica kept in a store of its own, and a notifier that writes to a
//! mailbox it owns.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use bookshelf::change::{Change, ChangeEvent};
use bookshelf::process::{CommandBus, Dispatch, DispatchError, ProcessManager};
use bookshelf::{async_trait, Envelope, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The replica: every book's latest state, as the change events carry it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    /// Book id to its state and version.
    pub books: BTreeMap<String, (u64, Value)>,
}

impl View for Replica {
    type Event = ChangeEvent;

    fn apply(&mut self, event: Envelope<ChangeEvent>) {
        let ChangeEvent::Changed(change) = event.payload;
        let entry = self.books.entry(change.id).or_insert((0, Value::Null));
        // Changes of one book arrive in order; an older one is never applied
        // over a newer state.
        if change.version.0 > entry.0 {
            *entry = (change.version.0, change.after);
        }
    }
}

/// A message for the mailbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub to: String,
    pub text: String,
}

/// Notifies on reads and ratings, telling them apart by comparing the state
/// before and after: `reads` went up, or `stars` changed.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Notifier {
    pub noticed: u64,
}

fn on_shelf<'a>(state: &'a Value, field: &str) -> &'a Value {
    &state["OnShelf"][field]
}

impl ProcessManager for Notifier {
    type Event = ChangeEvent;
    type Command = Message;

    fn react(&mut self, event: &Envelope<ChangeEvent>) -> Vec<Dispatch<Message>> {
        let ChangeEvent::Changed(change) = &event.payload;
        let Some(text) = describe(change) else {
            return Vec::new();
        };
        self.noticed += 1;
        // The key is the change's event id: the same whichever copy of the
        // notifier sends it, and however often.
        vec![Dispatch::new(
            change.event_id.to_string(),
            Message {
                to: "reader@example.org".into(),
                text,
            },
        )]
    }
}

/// What is worth telling about `change`, if anything.
pub fn describe(change: &Change) -> Option<String> {
    let title = on_shelf(&change.after, "title").as_str()?;
    let (reads_before, reads_after) = (
        on_shelf(&change.before, "reads").as_u64().unwrap_or(0),
        on_shelf(&change.after, "reads").as_u64()?,
    );
    if reads_after > reads_before {
        return Some(format!("{title} was read ({reads_after} times now)"));
    }
    let stars = on_shelf(&change.after, "stars");
    if stars != on_shelf(&change.before, "stars") {
        return Some(format!("{title} was rated {stars} stars"));
    }
    None
}

/// A mailbox in a directory: one file per message, named by its key and
/// created only if absent, so that a message sent twice is delivered once.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub dir: PathBuf,
}

impl Mailbox {
    /// The keys of the messages sent, in the order they were sent, once per
    /// sending.
    pub fn sent(&self) -> std::io::Result<Vec<String>> {
        match std::fs::read_to_string(self.dir.join("sent.log")) {
            Ok(log) => Ok(log.lines().map(str::to_owned).collect()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// The messages delivered so far, by key.
    pub fn delivered(&self) -> std::io::Result<BTreeMap<String, String>> {
        let mut messages = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_message = path.extension().is_some_and(|e| e == "txt");
            if let Some(key) = path.file_stem().and_then(|s| s.to_str()).filter(|_| is_message) {
                messages.insert(key.to_owned(), std::fs::read_to_string(&path)?);
            }
        }
        Ok(messages)
    }
}

#[async_trait]
impl CommandBus<Message> for Mailbox {
    async fn dispatch(&self, dispatch: &Dispatch<Message>) -> Result<(), DispatchError> {
        if !dispatch.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(DispatchError::Rejected(format!(
                "{:?} is not a usable message key",
                dispatch.key
            )));
        }
        // Written aside, then linked into place: the link fails if the
        // message is there already, and a crash midway leaves no half message.
        let path = self.dir.join(format!("{}.txt", dispatch.key));
        let draft = self
            .dir
            .join(format!(".{}.{}.draft", dispatch.key, uuid::Uuid::new_v4().simple()));
        let unavailable = |e: std::io::Error| DispatchError::Unavailable(e.to_string());
        let mut file = std::fs::File::create(&draft).map_err(unavailable)?;
        writeln!(file, "To: {}\n\n{}", dispatch.command.to, dispatch.command.text)
            .and_then(|()| file.sync_all())
            .map_err(unavailable)?;
        let linked = std::fs::hard_link(&draft, &path);
        let _ = std::fs::remove_file(&draft);
        match linked {
            Ok(()) => {
                // The sending log: one line per message actually sent,
                // written in one call, so that the lines of notifiers
                // sharing the mailbox do not mix (`writeln!` writes the
                // key and its newline apart).
                let line = format!("{}\n", dispatch.key);
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("sent.log"))
                    .and_then(|mut log| log.write_all(line.as_bytes()))
                    .map_err(unavailable)?;
                tracing::info!(key = %dispatch.key, text = %dispatch.command.text, "notified");
                Ok(())
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::debug!(key = %dispatch.key, "already notified");
                Ok(())
            }
            Err(error) => Err(DispatchError::Unavailable(error.to_string())),
        }
    }
}

/// The replica as a PostgreSQL table, `replica_books`: one row per book
/// with its latest version and state, moved in the transaction of the
/// replica's checkpoint (the py_microservices replication, database to
/// database).
pub struct ReplicaTable;

#[async_trait]
impl bookshelf::postgres::table::TableView for ReplicaTable {
    type Event = ChangeEvent;

    async fn create(&self, db: &ReplicaTx<'_>) -> Result<(), bookshelf::postgres::tokio_postgres::Error> {
        db.batch_execute(
            "CREATE TABLE IF NOT EXISTS replica_books (
                 id text PRIMARY KEY,
                 version bigint NOT NULL,
                 state text NOT NULL
             )",
        )
        .await
    }

    async fn apply(
        &self,
        db: &ReplicaTx<'_>,
        event: &Envelope<ChangeEvent>,
    ) -> Result<(), bookshelf::postgres::tokio_postgres::Error> {
        let ChangeEvent::Changed(change) = &event.payload;
        // As the in-memory replica: an older change never overwrites a newer state.
        db.execute(
            "INSERT INTO replica_books (id, version, state) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, state = excluded.state \
             WHERE excluded.version > replica_books.version",
            &[&change.id, &(change.version.0 as i64), &change.after.to_string()],
        )
        .await?;
        Ok(())
    }
}

type ReplicaTx<'a> = bookshelf::postgres::deadpool_postgres::Transaction<'a>;

/// Every row of a [`ReplicaTable`]: book id to its version and state, as
/// the in-memory [`Replica`] holds them.
pub async fn replica_rows(
    tables: &bookshelf::postgres::table::Tables,
) -> Result<BTreeMap<String, (u64, Value)>, bookshelf::StoreError> {
    let failed = |e: bookshelf::postgres::tokio_postgres::Error| bookshelf::StoreError::Backend(Box::new(e));
    let db = tables.client().await?;
    let rows = db
        .query("SELECT id, version, state FROM replica_books ORDER BY id", &[])
        .await
        .map_err(failed)?;
    rows.iter()
        .map(|row| {
            let state: &str = row.get(2);
            let state = serde_json::from_str(state).map_err(|e| bookshelf::StoreError::Backend(Box::new(e)))?;
            Ok((row.get::<_, String>(0), (row.get::<_, i64>(1) as u64, state)))
        })
        .collect()
}
