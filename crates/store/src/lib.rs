//! ferry's embedded store: a single-node server for etcd's v3 gRPC protocol.
//!
//! [`mvcc`] holds the data model (revisions, the key index, the redb backend); [`server`]
//! serves it as etcd's KV, Maintenance and Cluster services.

#![warn(missing_docs)]

pub mod auth;
pub mod error;
pub mod lease;
pub mod mvcc;
pub mod proto;

pub use error::StoreError;
pub mod server;
pub mod snapshot;
pub mod wal;

pub use server::{
    start, start_on_own_runtime, AutoCompaction, RunningStore, ServerTls, StoreConfig,
};
