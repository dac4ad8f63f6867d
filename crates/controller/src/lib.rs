//! ferry's ingress controller (SYSTEM.md part 5): typed ingress configurations per
//! environment, SQL as their durable record with full history, and the etcd key layout they
//! are distributed through.
//!
//! This is the controller's data half; the REST API, the publishing loop and the agents
//! build on it.

#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod document;
pub mod document_schema;
pub mod http_client;
pub mod keys;
pub mod nginx;
pub mod openapi;
pub mod preflight;
pub mod publish;
pub mod record;
pub mod refusal;
pub mod roles;
pub mod serve;
pub mod server;
pub mod token_reload;
pub mod ui;
pub mod waves;

pub use document::{IngressDocument, ValidationError};
pub use publish::{PublishedConfig, Publisher, ReconcileReport};
pub use record::{ConfigRecord, Record, RecordError};
