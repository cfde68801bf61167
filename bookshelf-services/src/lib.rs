//! The bookshelf: the example system built on Bookshelf, as one crate (not
//! published). Each service is a module with a `main` that the binaries of
//! this crate, and the workspace's `cargo run --example NAME`, call.
//!
//! | module | what it holds |
//! |---|---|
//! | [`books`] | the domain: the `Book` aggregate, its events, and the views (last read, authors) |
//! | [`api`] | the services' HTTP: typed JSON errors, the books, last-read and authors routes, health, metrics, registration in discovery, logging set-up, graceful shutdown |
//! | [`docs`] | OpenAPI documents built from the handlers, and the docs page |
//! | [`logs`] | log lines written in batches by a thread of their own |
//! | [`tables`] | the authors view kept as SQL tables |
//! | [`last_read`] | the "last read books" service (the main job, embedded by default) |
//! | [`books_service`] | the books command service, and its partition owners on Kafka |
//! | [`authors`] | the books-by-author view on Kafka |
//! | [`gateway`] | the one HTTP entry point: routing, balancing, its fast relay path |
//! | [`lending`] | a process manager with compensation across two aggregates |
//! | [`changes`] | change events with a replica and a notifier |
//! | [`load`] | the load generator that checks every answer and, at the end, every write |

#![forbid(unsafe_code)]

pub mod api;
pub mod authors;
pub mod books;
pub mod books_service;
pub mod changes;
pub mod cli;
pub mod docs;
pub mod gateway;
pub mod last_read;
pub mod lending;
pub mod load;
pub mod logs;
pub mod tables;
