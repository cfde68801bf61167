//! What Bookshelf's own tests share (not published): a small domain of
//! accounts, and the behaviour suite every event store passes.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounts;
pub mod store_suite;
