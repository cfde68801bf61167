//! Views rebuilt side by side, over HTTP: `GET /views` lists the views of
//! the process that can be rebuilt, with the version each serves, the one
//! building and the one kept; `POST /views/{name}/rebuild` builds the next
//! version beside the one serving (from the start of the log), which takes
//! over once it has caught up (see `bookshelf::versions`); `POST
//! /views/{name}/roll-back` serves the version kept again, and `DELETE
//! /views/{name}/previous` stops the one kept. The building version shows
//! in `GET /runners` as `NAME@vN`, with its lag.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bookshelf::versions::{Versions, VersionsError};
use bookshelf::{Running, ViewState};
use serde::Serialize;

use crate::docs::{Api, ErrorBody};

use super::*;

/// `GET /views`, `POST /views/{name}/rebuild`, `POST
/// /views/{name}/roll-back` and `DELETE /views/{name}/previous`.
pub fn view_routes() -> Api {
    Api::new()
        .route(__path_views, views)
        .route(__path_rebuild, rebuild)
        .route(__path_roll_back, roll_back)
        .route(__path_drop_previous, drop_previous)
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

type Later<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A view that can be rebuilt, whatever its types.
trait Rebuildable: Send + Sync {
    fn describe(&self) -> ViewBody;
    /// Starts building the next version.
    fn start(&self) -> Result<Building, ApiError>;
    fn roll_back(&self) -> Later<Result<u32, VersionsError>>;
    fn drop_previous(&self) -> Later<Result<Option<u32>, VersionsError>>;
}

/// The view's rebuild, if one runs, and why the last one failed.
#[derive(Clone, Default)]
struct Progress {
    building: Option<u32>,
    failure: Option<String>,
}

struct Entry<V, T: ?Sized> {
    name: String,
    versions: Versions<T>,
    answer: fn(&V) -> &T,
    start: Box<dyn Fn(u32) -> Running<ViewState<V>> + Send + Sync>,
    progress: Arc<Mutex<Progress>>,
}

impl<V, T> Entry<V, T>
where
    T: ?Sized,
{
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<V, T> Rebuildable for Entry<V, T>
where
    V: Send + Sync + 'static,
    T: ?Sized + Send + Sync + 'static,
{
    fn describe(&self) -> ViewBody {
        let now = self.progress().clone();
        let kept = self.versions.kept();
        ViewBody {
            name: self.name.clone(),
            serving: kept.serving,
            building: now.building,
            previous: kept.previous,
            failure: now.failure,
        }
    }

    fn start(&self) -> Result<Building, ApiError> {
        let version = {
            let mut now = self.progress();
            if let Some(building) = now.building {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("version {building} of {} is being built", self.name),
                ));
            }
            let version = self.versions.kept().next();
            *now = Progress {
                building: Some(version),
                failure: None,
            };
            version
        };
        let running = (self.start)(version);
        let (versions, progress, view, answer) = (
            self.versions.clone(),
            Arc::clone(&self.progress),
            self.name.clone(),
            self.answer,
        );
        tokio::spawn(async move {
            let built = versions.rebuild(version, running, answer).await;
            let mut now = progress.lock().unwrap_or_else(|p| p.into_inner());
            now.building = None;
            if let Err(error) = built {
                tracing::warn!(view = %view, version, %error, "a rebuild did not take over");
                now.failure = Some(error.to_string());
            }
        });
        Ok(Building {
            version,
            runner: bookshelf::versions::versioned(&self.name, version),
        })
    }

    fn roll_back(&self) -> Later<Result<u32, VersionsError>> {
        let versions = self.versions.clone();
        Box::pin(async move { versions.serve_previous().await })
    }

    fn drop_previous(&self) -> Later<Result<Option<u32>, VersionsError>> {
        let versions = self.versions.clone();
        Box::pin(async move { versions.drop_previous().await })
    }
}

/// The views of the process that can be rebuilt, by name.
type Registry = Mutex<BTreeMap<String, Arc<dyn Rebuildable>>>;

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
    let entry = Entry {
        name: name.to_owned(),
        versions,
        answer,
        start: Box::new(start),
        progress: Arc::default(),
    };
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_owned(), Arc::new(entry));
}

/// Has a dropped version of view `name` forgotten where `keeps` keeps it:
/// its saved state removed (when the store keeps views) and its dead
/// letters forgotten (when it keeps letters), once its runner has stopped.
/// For a view whose versions are saved in the store; a view kept in each
/// instance's memory shares its letters with the other instances under
/// its name, so they are left alone.
pub fn forgotten_when_dropped<T>(
    versions: Versions<T>,
    name: &str,
    keeps: impl KeepsViews + Send + Sync + 'static,
) -> Versions<T>
where
    T: ?Sized + 'static,
{
    let (name, keeps) = (name.to_owned(), Arc::new(keeps));
    versions.forgetting(move |number| {
        let (runner, keeps) = (bookshelf::versions::versioned(&name, number), Arc::clone(&keeps));
        async move {
            if let Some(saved) = keeps.saved_view(&runner) {
                saved.remove().await?;
            }
            if let Some(letters) = keeps.dead_letters() {
                letters.forget(&runner, None).await?;
            }
            tracing::info!(runner = %runner, "a dropped version's state and letters forgotten");
            Ok(())
        }
    })
}

/// The view `name` of this process.
fn view(name: &str) -> Result<Arc<dyn Rebuildable>, ApiError> {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no view {name} to rebuild here")))
}

/// A change to the versions that failed, as an answer.
fn refused(name: &str, error: VersionsError) -> ApiError {
    let status = match error {
        VersionsError::NoneKept(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, format!("{name}: {error}"))
}

/// The views of this process that can be rebuilt.
#[utoipa::path(
    get, path = "/views", tag = "meta",
    responses((status = 200, description = "Each view: the version serving, the one building, the one kept", body = [ViewBody]))
)]
async fn views() -> axum::Json<Vec<ViewBody>> {
    let views: Vec<Arc<dyn Rebuildable>> = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    axum::Json(views.iter().map(|view| view.describe()).collect())
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
    let building = view(&name)?.start()?;
    Ok((StatusCode::ACCEPTED, axum::Json(building)).into_response())
}

/// Serves the version of view `name` kept beside the one serving again, in
/// one step, and keeps the one it replaces.
#[utoipa::path(
    post, path = "/views/{name}/roll-back", tag = "meta",
    params(("name" = String, Path, description = "The view")),
    responses(
        (status = 200, description = "The kept version serves", body = ViewBody),
        (status = 404, description = "No such view here", body = ErrorBody),
        (status = 409, description = "No version of it is kept", body = ErrorBody),
        (status = 500, description = "It serves, but the store did not remember it", body = ErrorBody),
    )
)]
async fn roll_back(Path(name): Path<String>) -> Result<axum::Json<ViewBody>, ApiError> {
    let view = view(&name)?;
    view.roll_back().await.map_err(|e| refused(&name, e))?;
    Ok(axum::Json(view.describe()))
}

/// Stops the version of view `name` kept beside the one serving, and
/// forgets it.
#[utoipa::path(
    delete, path = "/views/{name}/previous", tag = "meta",
    params(("name" = String, Path, description = "The view")),
    responses(
        (status = 200, description = "Dropped; the view as it is now", body = ViewBody),
        (status = 404, description = "No such view here", body = ErrorBody),
        (status = 409, description = "No version of it is kept", body = ErrorBody),
        (status = 500, description = "It stopped with an error, or the store did not remember it", body = ErrorBody),
    )
)]
async fn drop_previous(Path(name): Path<String>) -> Result<axum::Json<ViewBody>, ApiError> {
    let view = view(&name)?;
    match view.drop_previous().await {
        Ok(Some(_)) => Ok(axum::Json(view.describe())),
        Ok(None) => Err(refused(&name, VersionsError::NoneKept(view.describe().serving))),
        Err(error) => Err(refused(&name, error)),
    }
}
