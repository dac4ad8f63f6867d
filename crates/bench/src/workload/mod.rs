//! One module per family of workloads.

pub(crate) mod kv;
pub(crate) mod lease;
pub(crate) mod watch;
