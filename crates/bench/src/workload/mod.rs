//! One module per family of workloads.

pub(crate) mod kv;
pub(crate) mod lease;
pub(crate) mod raw_watch;
pub(crate) mod watch;
