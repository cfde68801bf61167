//! The bookshelf's end-to-end tests, in one binary: the services run as
//! processes (the binaries cargo builds for this crate's tests), driven over
//! HTTP, on the embedded default and on tansu with the Consul double.
//! The tests that measure the process's own memory have binaries of their
//! own (`projection_memory`, `sqlite_memory`).

mod authors_table;
mod books_scaled;
mod books_service;
mod changes;
mod changes_on_kafka;
mod changes_processes;
mod cli;
mod console;
mod embedded_durability;
mod gateway;
mod gateway_relay;
mod last_read_example;
mod last_read_on_kafka;
mod lending;
mod lending_processes;
mod metrics;
mod nemesis;
mod openapi;
mod otel_export;
mod showcase;
mod support;
mod trace;
