//! The client-go / kube-runtime controller pattern over the etcd v3 API.
//!
//! - [`informer`]: list a prefix, watch from the list revision, keep a typed [`cache`], feed
//!   handlers; resume after connection loss, relist after compaction.
//! - [`cache`]: the informer's indexed, thread-safe copy, with read-your-writes waits.
//! - [`workqueue`] and [`rate_limiter`]: deduplicating, per-key exclusive, rate-limited
//!   queues.
//! - [`controller`]: N workers reconciling keys from informer events.
//! - [`election`]: leader election on an etcd lease, with fenced writes.
//! - [`metrics`]: Prometheus metrics with client-go's and controller-runtime's names.

#![warn(missing_docs)]

pub mod backoff;
pub mod cache;
pub mod controller;
pub mod election;
pub mod informer;
pub mod metrics;
pub mod rate_limiter;
pub mod workqueue;

pub use cache::{Cache, Object};
pub use controller::{Action, Controller, ReconcileError};
pub use election::{Election, Leadership};
pub use informer::{Event, Informer, InformerConfig};
pub use metrics::Metrics;
pub use workqueue::WorkQueue;
