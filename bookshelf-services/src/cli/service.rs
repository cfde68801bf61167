//! The commands that ask a running service (`--service URL`) rather than
//! read a store: its runners as they run, and its views' versions, rebuilt
//! side by side, rolled back and dropped.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use reqwest::{Method, StatusCode};

use super::{print_table, written, Failure, NOT_FOUND};

/// The commands, as the command line's errors name them.
pub(super) const COMMANDS: &str = "`runners`, `views`, `rebuild`, `roll-back` and `drop-previous`";

/// What a running service is asked.
#[derive(Subcommand, Debug)]
pub(super) enum Asked {
    /// With `--service`: the service's runners as they run: state,
    /// position, end and lag per partition, when each last moved, what it
    /// set aside and why it failed
    Runners {
        /// One JSON object per runner, as the service's `GET /runners`
        /// gives it
        #[arg(long)]
        json: bool,
    },
    /// With `--service`: the views it can rebuild: the version serving,
    /// the one building, the one kept, why the last rebuild failed
    Views {
        /// One JSON object per view, as the service's `GET /views` gives it
        #[arg(long)]
        json: bool,
    },
    /// With `--service`: builds the next version of a view beside the one
    /// serving, from the start of the log; it takes over once caught up
    Rebuild {
        /// The view (`GET /views` on the service lists them)
        view: String,
        /// Then show its progress (a bar with rate and time left on a
        /// terminal, a line a second otherwise) until it serves, for up to
        /// SECONDS (600 by default)
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "600")]
        wait: Option<u64>,
    },
    /// With `--service`: serves the version of a view kept beside the one
    /// serving again, in one step (after a rebuild that answers wrongly);
    /// the one it replaces is kept
    RollBack {
        /// The view
        view: String,
    },
    /// With `--service`: stops the version of a view kept beside the one
    /// serving, and forgets it
    DropPrevious {
        /// The view
        view: String,
    },
}

/// Carries out `asked` on the service at `url`.
pub(super) async fn ask(url: &str, asked: Asked, out: &mut impl Write) -> Result<(), Failure> {
    let service = Service::new(url)?;
    match asked {
        Asked::Runners { json } => runners(&service, json, out).await,
        Asked::Views { json } => views(&service, json, out).await,
        Asked::Rebuild { view, wait } => rebuild(&service, &view, wait, out).await,
        Asked::RollBack { view } => {
            let now = service.call(Method::POST, &format!("/views/{view}/roll-back")).await?;
            let kept = kept(&now);
            writeln!(out, "version {} of {view} serves again{kept}", now["serving"]).map_err(written)?;
            out.flush().map_err(written)
        }
        Asked::DropPrevious { view } => {
            let before = service.call(Method::GET, "/views").await?;
            let dropped = named(&before, &view)["previous"].clone();
            let now = service.call(Method::DELETE, &format!("/views/{view}/previous")).await?;
            writeln!(
                out,
                "version {dropped} of {view} dropped; version {} serves",
                now["serving"]
            )
            .map_err(written)?;
            out.flush().map_err(written)
        }
    }
}

/// A running service, asked over HTTP.
struct Service {
    base: String,
    client: reqwest::Client,
}

impl Service {
    fn new(url: &str) -> Result<Service, Failure> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(Failure::store)?;
        Ok(Service {
            base: url.trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// Asks `path` with `method`; its JSON answer, or a failure naming the
    /// address and saying why it refused (exit code 3 for a 404).
    async fn call(&self, method: Method, path: &str) -> Result<serde_json::Value, Failure> {
        let address = format!("{}{path}", self.base);
        let asked = |e: reqwest::Error| Failure::store(format!("{address}: {e}"));
        let response = self.client.request(method, &address).send().await.map_err(asked)?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(asked)?;
        if status.is_success() {
            return Ok(body);
        }
        let why = body["error"].as_str().unwrap_or("refused");
        Err(Failure {
            message: format!("{address} answered {status}: {why}"),
            code: if status == StatusCode::NOT_FOUND { NOT_FOUND } else { 1 },
        })
    }
}

/// The entry of a `GET /views` or `GET /runners` answer named `name`, or
/// null (whose every field reads null) when there is none.
fn named(list: &serde_json::Value, name: &str) -> serde_json::Value {
    let found = list
        .as_array()
        .and_then(|all| all.iter().find(|entry| entry["name"] == name));
    found.cloned().unwrap_or_default()
}

/// What a view's answer says of the version kept, as a clause of a line.
fn kept(view: &serde_json::Value) -> String {
    view["previous"]
        .as_u64()
        .map_or_else(String::new, |p| format!("; version {p} kept until dropped"))
}

/// Writes each of `values` as one JSON line.
fn lines(values: &[serde_json::Value], out: &mut impl Write) -> Result<(), Failure> {
    for value in values {
        writeln!(out, "{value}").map_err(written)?;
    }
    out.flush().map_err(written)
}

/// A value of an answer as a table shows it.
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Shows the views the service can rebuild, as its `GET /views` gives them.
async fn views(service: &Service, json: bool, out: &mut impl Write) -> Result<(), Failure> {
    let views = service.call(Method::GET, "/views").await?;
    let views = views.as_array().cloned().unwrap_or_default();
    if json {
        return lines(&views, out);
    }
    let mut rows = vec![["VIEW", "SERVING", "BUILDING", "KEPT", "LAST FAILURE"].map(str::to_owned)];
    for view in &views {
        rows.push(["name", "serving", "building", "previous", "failure"].map(|field| text(&view[field])));
    }
    print_table(&rows, out).map_err(written)?;
    out.flush().map_err(written)
}

/// Shows the runners of the service, as its `GET /runners` gives them.
async fn runners(service: &Service, json: bool, out: &mut impl Write) -> Result<(), Failure> {
    let runners = service.call(Method::GET, "/runners").await?;
    let runners = runners.as_array().cloned().unwrap_or_default();
    if json {
        return lines(&runners, out);
    }
    let mut rows = vec![[
        "NAME",
        "STATE",
        "PARTITION",
        "POSITION",
        "END",
        "LAG",
        "MOVED",
        "SET ASIDE",
        "LAST ERROR",
    ]
    .map(str::to_owned)];
    for runner in &runners {
        let error = match (&runner["failure"], &runner["last_set_aside"]) {
            (serde_json::Value::String(failure), _) => format!("failed: {failure}"),
            (_, serde_json::Value::String(why)) => format!("set aside: {why}"),
            _ => "-".to_owned(),
        };
        let partitions = runner["partitions"].as_object().cloned().unwrap_or_default();
        // A runner that has read nothing yet still gets its line.
        let partitions: Vec<(String, serde_json::Value)> = if partitions.is_empty() {
            vec![("-".to_owned(), serde_json::Value::Null)]
        } else {
            partitions.into_iter().collect()
        };
        for (partition, at) in partitions {
            // The one partition of a log with one global order has no name.
            let partition = if partition.is_empty() {
                "global".to_owned()
            } else {
                partition
            };
            rows.push([
                text(&runner["name"]),
                text(&runner["state"]),
                partition,
                text(&at["position"]),
                text(&at["end"]),
                text(&at["lag"]),
                text(&runner["moved_at"]),
                text(&runner["set_aside"]),
                error.clone(),
            ]);
        }
    }
    print_table(&rows, out).map_err(written)?;
    out.flush().map_err(written)
}

/// Builds the next version of `view` in the service, and with `wait`
/// shows its progress until it serves.
async fn rebuild(service: &Service, view: &str, wait: Option<u64>, out: &mut impl Write) -> Result<(), Failure> {
    let body = service.call(Method::POST, &format!("/views/{view}/rebuild")).await?;
    let (version, runner) = (
        body["version"].as_u64().unwrap_or_default(),
        body["runner"].as_str().unwrap_or_default().to_owned(),
    );
    writeln!(
        out,
        "building version {version} of {view} beside the one serving (runner {runner})"
    )
    .map_err(written)?;
    out.flush().map_err(written)?;
    let Some(patience) = wait else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(patience);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} events, {per_sec}, {eta} left")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(runner.clone());
        bar
    });
    loop {
        let views = service.call(Method::GET, "/views").await?;
        let this = named(&views, view);
        if this["serving"].as_u64() == Some(version) {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let kept = kept(&this);
            writeln!(out, "version {version} of {view} serves{kept}").map_err(written)?;
            return out.flush().map_err(written);
        }
        if this["building"].is_null() {
            let why = this["failure"].as_str().unwrap_or("it stopped").to_owned();
            return Err(Failure::store(format!(
                "version {version} of {view} did not take over: {why}"
            )));
        }
        let runners = service.call(Method::GET, "/runners").await?;
        let (mut position, mut end, mut seen) = (0, 0, false);
        let found = named(&runners, &runner);
        for at in found["partitions"].as_object().into_iter().flat_map(|p| p.values()) {
            position += at["position"].as_u64().unwrap_or(0);
            end += at["end"].as_u64().unwrap_or(0);
            seen = true;
        }
        match &bar {
            Some(bar) => {
                bar.set_length(end.max(position));
                bar.set_position(position);
            }
            None if seen && end > 0 => {
                writeln!(out, "{runner}: {position} of {end} events").map_err(written)?;
                out.flush().map_err(written)?;
            }
            // Restoring its state: no partition read, no end seen yet.
            None => {
                writeln!(out, "{runner}: starting").map_err(written)?;
                out.flush().map_err(written)?;
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Failure::store(format!(
                "version {version} of {view} has not caught up in {patience} s (at {position} of {end})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(if bar.is_some() { 200 } else { 1000 })).await;
    }
}
