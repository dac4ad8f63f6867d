//! Changes the writer publishes after each commit, for watchers.

use etcd_client::proto::PbKeyValue;

/// One change of one key: a put, or a delete when `kv.version == 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The key as written (a tombstone for a delete: key and mod_revision only).
    pub kv: PbKeyValue,
    /// The key's value before the change, if it existed.
    pub prev: Option<PbKeyValue>,
}

impl Event {
    /// Whether the change deleted the key.
    pub fn is_delete(&self) -> bool {
        self.kv.version == 0
    }
}
