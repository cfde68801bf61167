//! Views rebuilt side by side, over HTTP: `GET /views` lists the views of
//! the process that can be rebuilt, with the version each serves, the one
//! building and the one kept; `POST /views/{name}/rebuild` builds the next
//! version beside the one serving (from the start of the log), which takes
//! over once it has caught up (see `bookshelf::versions`). The building
//! version shows in `GET /runners` as `NAME@vN`, with its lag.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bookshelf::versions::Versions;
use bookshelf::{Running, ViewState};
use serde::Serialize;

use crate::docs::{Api, ErrorBody};

use super::*;

/// `GET /views` and `POST /views/{name}/rebuild`.
pub fn view_routes() -> Api {
    Api::new().route(__path_views, views).route(__path_rebuild, rebuild)
}

/// A view that can be rebuilt, as `GET /views` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ViewBody {
    /// Its name (its first version's runner's).
    pub name: String,
    /// The version that answers queries.
    pub serving: u32,
    /// The version being built beside it, if any.
    pub building: Option<u32>,
    /// The version it replaced, still running until dropped.
    pub previous: Option<u32>,
    /// Why the last rebuild did not take over, if it did not.
    pub failure: Option<String>,
}

/// What a rebuild started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Building {
    /// The version being built.
    pub version: u32,
    /// Its runner, in `GET /runners`.
    pub runner: String,
}

type Starter = Box<dyn Fn() -> Result<Building, ApiError> + Send + Sync>;
type Describer = Box<dyn Fn() -> ViewBody + Send + Sync>;

/// The views of the process that can be rebuilt, by name: how to start a
/// rebuild, and how to describe it.
type Registry = Mutex<BTreeMap<String, (Arc<Starter>, Arc<Describer>)>>;

fn registry() -> &'static Registry {
    static VIEWS: OnceLock<Registry> = OnceLock::new();
    VIEWS.get_or_init(Default::default)
}

/// Makes view `name`, served by `versions`, rebuildable over HTTP: `start`
/// starts the runner of a given version (named
/// `bookshelf::versions::versioned(name, version)`, from the start of the
/// log), whose view answers queries through `answer`.
pub fn rebuildable<V, T>(
    name: &str,
    versions: Versions<T>,
    answer: fn(&V) -> &T,
    start: impl Fn(u32) -> Running<ViewState<V>> + Send + Sync + 'static,
) where
    V: Send + Sync + 'static,
    T: ?Sized + Send + Sync + 'static,
{
    #[derive(Default)]
    struct Progress {
        building: Option<u32>,
        failure: Option<String>,
    }
    let progress = Arc::new(Mutex::new(Progress::default()));
    let lock = |p: &Arc<Mutex<Progress>>| -> Progress {
        let p = p.lock().unwrap_or_else(|p| p.into_inner());
        Progress {
            building: p.building,
            failure: p.failure.clone(),
        }
    };
    let (view, watched, described) = (name.to_owned(), Arc::clone(&progress), versions.clone());
    let describe: Describer = Box::new(move || {
        let now = lock(&watched);
        ViewBody {
            name: view.clone(),
            serving: described.serving(),
            building: now.building,
            previous: described.previous(),
            failure: now.failure,
        }
    });
    let view = name.to_owned();
    let start: Starter = Box::new(move || {
        let version = {
            let mut now = progress.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(building) = now.building {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("version {building} of {view} is being built"),
                ));
            }
            let version = versions.serving().max(versions.previous().unwrap_or(0)) + 1;
            now.building = Some(version);
            now.failure = None;
            version
        };
        let running = start(version);
        let runner = bookshelf::versions::versioned(&view, version);
        let (versions, progress, view) = (versions.clone(), Arc::clone(&progress), view.clone());
        tokio::spawn(async move {
            let built = versions.rebuild(version, running, answer).await;
            let mut now = progress.lock().unwrap_or_else(|p| p.into_inner());
            now.building = None;
            if let Err(error) = built {
                tracing::warn!(view = %view, version, %error, "a rebuild did not take over");
                now.failure = Some(error.to_string());
            }
        });
        Ok(Building { version, runner })
    });
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_owned(), (Arc::new(start), Arc::new(describe)));
}

/// The views of this process that can be rebuilt.
#[utoipa::path(
    get, path = "/views", tag = "meta",
    responses((status = 200, description = "Each view: the version serving, the one building, the one kept", body = [ViewBody]))
)]
async fn views() -> axum::Json<Vec<ViewBody>> {
    let describers: Vec<Arc<Describer>> = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|(_, describe)| Arc::clone(describe))
        .collect();
    axum::Json(describers.iter().map(|describe| describe()).collect())
}

/// Builds the next version of view `name` beside the one serving, from the
/// start of the log; it takes over once it has caught up.
#[utoipa::path(
    post, path = "/views/{name}/rebuild", tag = "meta",
    params(("name" = String, Path, description = "The view")),
    responses(
        (status = 202, description = "Building", body = Building),
        (status = 404, description = "No such view here", body = ErrorBody),
        (status = 409, description = "A version of it is being built already", body = ErrorBody),
    )
)]
async fn rebuild(Path(name): Path<String>) -> Result<Response, ApiError> {
    let start = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .map(|(start, _)| Arc::clone(start))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no view {name} to rebuild here")))?;
    let building = start()?;
    Ok((StatusCode::ACCEPTED, axum::Json(building)).into_response())
}
