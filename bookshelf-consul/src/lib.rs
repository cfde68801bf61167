//! # bookshelf-consul: service discovery on Consul (in progress)
//!
//! This crate will implement Bookshelf's
//! [`Discovery`](bookshelf_core::Discovery) over Consul's HTTP API: register
//! with a TTL or HTTP check once ready, deregister on shutdown, resolve passing
//! instances by name and tags, and watch them with blocking queries.
//!
//! It holds no code yet; until it does, use
//! [`InMemoryDiscovery`](bookshelf_core::InMemoryDiscovery).

#![forbid(unsafe_code)]
#![deny(missing_docs)]
