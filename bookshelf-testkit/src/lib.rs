//! What Bookshelf's own tests share (not published): a small domain of
//! accounts, the behaviour suite every event store passes, a stateful
//! double of Consul's HTTP API, a fresh PostgreSQL database per test, and a
//! tansu broker a test can kill and restart.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounts;
pub mod consul;
pub mod dead_letters;
pub mod postgres;
pub mod store_suite;
pub mod tansu;
pub mod view_stores;
