//! What Bookshelf's own tests share (not published): a small domain of
//! accounts, the behaviour suite every event store passes, a stateful
//! double of Consul's HTTP API, and a fresh PostgreSQL database per test.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounts;
pub mod consul;
pub mod postgres;
pub mod store_suite;
