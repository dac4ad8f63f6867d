//! Peer sync (SYSTEM.md part 6): replicas of one service keep an in-memory map per type in
//! step over gRPC, with the original design's wire protocol (`package hellorpc; service Sync
//! { Get, Set, GetAll }`, `SyncData { int32 type; map<string,string> data }`) extended
//! compatibly with per-entry versions (hybrid logical clocks, so every write has a unique,
//! totally ordered version) and tombstones. A write is applied locally, acknowledged, and sent
//! to every other replica with bounded retries; the higher version wins everywhere.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_sync::{Replica, SyncService};
//! let replica = Replica::new();
//! replica.set_peers(&["127.0.0.1:7001".to_string(), "127.0.0.1:7002".to_string()]);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7000").await?;
//! tokio::spawn(SyncService::new(replica.clone()).serve(listener));
//! replica.set(1, "greeting", "hello");
//! assert_eq!(replica.get(1, "greeting").as_deref(), Some("hello"));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod anti_entropy;
mod fanout;
pub mod local;
pub mod node;
pub mod replica;
pub mod service;
pub mod store;

/// The generated protocol: messages, server and client.
#[allow(missing_docs)]
pub mod proto {
    tonic::include_proto!("hellorpc");
}

pub use local::serve_local_cluster;
pub use node::{Node, NodeConfig};
pub use replica::{Change, Replica, ReplicaConfig, SyncMetrics};
pub use service::SyncService;
pub use store::Entry;
