//! The etcd operator (SYSTEM.md part 7): keeps each declared etcd cluster at its spec on plain
//! hosts. Specs, member records and statuses live in the management store ([`records`]);
//! members run through a small runtime interface ([`runtime`], local processes here); each
//! pass of the [`reconcile`] loop takes at most one step, following etcd's
//! runtime-reconfiguration rules, behind a quorum guard.

#![warn(missing_docs)]

pub mod backup;
pub mod etcd;
pub mod metrics;
pub mod operator;
pub mod reconcile;
pub mod records;
pub mod runtime;
pub mod spec;

pub use metrics::OperatorMetrics;
pub use operator::{run, OperatorConfig};
pub use records::{ClusterStatus, Keys, MemberRecord, MemberStatus, DEFAULT_PREFIX};
pub use runtime::{LocalProcesses, MemberRuntime};
pub use spec::{ClusterSpec, SpecError};
