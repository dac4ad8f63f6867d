//! Multi-version concurrency control: revisions, the key index, the backend and the store.

pub mod apply;
pub mod backend;
pub mod fanout;
pub mod key_index;
pub mod kvstore;
pub mod range;
pub mod request_check;
pub mod revision;
pub mod unflushed;
pub mod watchable;
mod write_queue;
