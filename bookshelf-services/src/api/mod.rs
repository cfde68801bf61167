//! HTTP for the bookshelf services, a module per concern. Everything is
//! re-exported here, so a service names it as `api::ApiError`,
//! `api::books_routes`, and so on.

mod books;
mod dead_letters;
mod error;
mod extract;
mod health;
mod kafka;
mod queries;
mod runners;
mod service;
mod streams;
mod telemetry;
mod views;

pub use books::*;
pub use dead_letters::*;
pub use error::*;
pub use extract::*;
pub use health::*;
pub use queries::*;
pub use runners::*;
pub use service::*;
pub use streams::*;
pub use telemetry::*;
pub use views::*;
