//! OpenAPI for the bookshelf services.
//!
//! A route is added to an [`Api`] together with the operation that
//! describes it (the `#[utoipa::path]` on its handler), and the route's path
//! and methods are taken from that description: the router and its
//! document cannot drift apart. [`Api::serve_docs`] adds
//! `GET /openapi.json` (the OpenAPI 3.1 document) and `GET /docs/` (Swagger
//! UI, its assets built into the binary from the `utoipa-swagger-ui`
//! package, nothing fetched at build or run time).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use axum::Router;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::{OpenApi, OpenApiBuilder};

/// Where the OpenAPI document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// Where its human-readable page is served.
pub const PAGE_PATH: &str = "/docs";

/// The body of every error answer: `{"error": "..."}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub error: String,
}

/// A router whose every route is described in its OpenAPI document.
pub struct Api<S = ()> {
    router: Router<S>,
    doc: OpenApi,
}

impl<S: Clone + Send + Sync + 'static> Default for Api<S> {
    fn default() -> Self {
        Api {
            router: Router::new(),
            doc: OpenApiBuilder::new().build(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Api<S> {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `handler` at the path and methods that `operation` (the
    /// `__path_<handler>` value `#[utoipa::path]` generates) gives, and adds
    /// the operation and the schemas it names to the document.
    pub fn route<P, H, T>(mut self, _operation: P, handler: H) -> Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences + for<'t> utoipa::__dev::Tags<'t>,
        H: Handler<T, S>,
        T: 'static,
    {
        let path = P::path();
        let methods = P::methods();
        let router = methods.iter().fold(MethodRouter::new(), |router, method| {
            router.on(method_filter(method), handler.clone())
        });
        // Routes on one path with other methods are merged by axum.
        self.router = self.router.route(&path, router);
        let mut schemas = Vec::new();
        // The schemas of the operation's bodies, as utoipa's own axum
        // integration collects them.
        P::schemas(&mut schemas);
        self.add_schemas(schemas);
        let mut operation = P::operation();
        // The operation's tags, kept apart by utoipa's macro.
        let tags = P::tags();
        if !tags.is_empty() {
            operation
                .tags
                .get_or_insert_with(Vec::new)
                .extend(tags.into_iter().map(str::to_owned));
        }
        self.doc.paths.add_path_operation(&path, methods, operation);
        self
    }

    /// Adds schema `T` (and those it names) to the document's components.
    pub fn schema<T: utoipa::ToSchema>(mut self) -> Self {
        let mut schemas = vec![(T::name().into_owned(), T::schema())];
        T::schemas(&mut schemas);
        self.add_schemas(schemas);
        self
    }

    fn add_schemas(&mut self, schemas: Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        self.doc
            .components
            .get_or_insert_with(Default::default)
            .schemas
            .extend(schemas);
    }

    /// The routes of both, and both documents in one.
    pub fn merge(mut self, other: Api<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.doc.merge(other.doc);
        self
    }

    /// Applies `change` to the router (a layer, say), keeping the document.
    pub fn map_router(mut self, change: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = change(self.router);
        self
    }

    /// Gives the handlers their state.
    pub fn with_state<S2>(self, state: S) -> Api<S2> {
        Api {
            router: self.router.with_state(state),
            doc: self.doc,
        }
    }
}

impl Api<()> {
    /// The router, with `GET /openapi.json` (this document, titled `title`)
    /// and the docs page at `GET /docs/` added.
    pub fn serve_docs(self, title: &str) -> Router {
        self.serve_docs_from(title, |own| async move { own })
    }

    /// As [`serve_docs`](Api::serve_docs), but `GET /openapi.json` answers
    /// what `document` makes of this document, as JSON (the gateway adds its
    /// services' documents to its own).
    pub fn serve_docs_from<F, Fut>(self, title: &str, document: F) -> Router
    where
        F: Fn(Value) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Value> + Send + 'static,
    {
        // The document describes its own route, so it is complete only once
        // that route is in; the handler reads it from here.
        let complete: Arc<OnceLock<Value>> = Arc::default();
        let own = Arc::clone(&complete);
        let mut api = self.route(__path_openapi_document, move || {
            let own = own.get().cloned().unwrap_or(Value::Null);
            let document = document.clone();
            async move { axum::Json(document(own).await) }
        });
        // The page's routes are utoipa-swagger-ui's; described here.
        let mut page = <__path_docs_page as utoipa::Path>::operation();
        page.tags = Some(vec!["meta".to_owned()]);
        api.doc.paths.add_path_operation("/docs/", vec![HttpMethod::Get], page);
        api.doc.info.title = title.to_owned();
        api.doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        api.doc.info.description = Some(format!(
            "The {title} of the bookshelf, an example of the Bookshelf event-sourcing library. \
             Every error answers `{{\"error\": \"...\"}}`. A human-readable page is at {PAGE_PATH}/."
        ));
        match to_json(&api.doc) {
            Ok(json) => {
                let _ = complete.set(json);
            }
            Err(error) => tracing::error!(%error, "the OpenAPI document does not serialize"),
        }
        let page = utoipa_swagger_ui::SwaggerUi::new(PAGE_PATH).config(utoipa_swagger_ui::Config::new([DOCUMENT_PATH]));
        api.router.merge(page)
    }

    /// The document as it stands.
    pub fn document(&self) -> &OpenApi {
        &self.doc
    }
}

/// The document itself.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json"))
)]
#[allow(
    dead_code,
    reason = "describes the route to the document; the route is served elsewhere"
)]
async fn openapi_document() {}

/// The docs page (Swagger UI).
#[utoipa::path(
    get,
    path = "/docs/",
    tag = "meta",
    responses((status = 200, description = "A human-readable page of this document", content_type = "text/html"))
)]
#[allow(
    dead_code,
    reason = "describes the route to the document; the route is served elsewhere"
)]
async fn docs_page() {}

/// The document as OpenAPI's JSON.
///
/// utoipa 5.5 writes the fields of a response's link in snake case
/// (`operation_id`); OpenAPI names them in camel case (`operationId`), and
/// tools that follow links (schemathesis's stateful tests) need that.
fn to_json(doc: &OpenApi) -> Result<Value, serde_json::Error> {
    let mut json = serde_json::to_value(doc)?;
    let operations = json
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let links = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|responses| responses.values_mut())
            .filter_map(|response| response.get_mut("links").and_then(Value::as_object_mut))
            .flat_map(|links| links.values_mut())
            .filter_map(Value::as_object_mut);
        for link in links {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
    Ok(json)
}

fn method_filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}
