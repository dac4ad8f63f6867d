//! The versioned map a replica holds: per type, per key, the value (or a tombstone) and the
//! version that wrote it. The merge rule is the whole consistency story: an entry replaces
//! another only if its version is higher. It is idempotent and order-independent, so two
//! replicas that have seen the same writes hold the same map, whatever order they saw them in.

use std::collections::{BTreeMap, HashMap};

use uhlc::Timestamp;

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value, or `None` for a delete (a tombstone, kept so the delete wins over older
    /// writes that arrive later).
    pub value: Option<String>,
    /// The version that wrote it.
    pub version: Timestamp,
}

/// Every type's entries.
#[derive(Debug, Default)]
pub struct Store {
    types: HashMap<i32, BTreeMap<String, Entry>>,
}

impl Store {
    /// Applies `entry` to `key` of `ty` if its version is higher than what is there; returns
    /// whether it changed anything.
    pub fn merge(&mut self, ty: i32, key: &str, entry: Entry) -> bool {
        let map = self.types.entry(ty).or_default();
        match map.get(key) {
            Some(current) if current.version >= entry.version => false,
            _ => {
                map.insert(key.to_string(), entry);
                true
            }
        }
    }

    /// The live value of a key.
    pub fn get(&self, ty: i32, key: &str) -> Option<&str> {
        self.types
            .get(&ty)
            .and_then(|m| m.get(key))
            .and_then(|e| e.value.as_deref())
    }

    /// A key's entry, tombstone included.
    pub fn entry(&self, ty: i32, key: &str) -> Option<&Entry> {
        self.types.get(&ty).and_then(|m| m.get(key))
    }

    /// Every entry of a type, tombstones included, in key order.
    pub fn entries(&self, ty: i32) -> impl Iterator<Item = (&String, &Entry)> {
        self.types.get(&ty).into_iter().flat_map(|m| m.iter())
    }

    /// The types that hold anything.
    pub fn types(&self) -> Vec<i32> {
        let mut types: Vec<i32> = self.types.keys().copied().collect();
        types.sort();
        types
    }

    /// The live values of a type.
    pub fn values(&self, ty: i32) -> BTreeMap<String, String> {
        self.entries(ty)
            .filter_map(|(k, e)| e.value.clone().map(|v| (k.clone(), v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(time: u64, id: u8) -> Timestamp {
        Timestamp::new(
            uhlc::NTP64(time),
            uhlc::ID::try_from(id).expect("a non-zero id"),
        )
    }

    fn put(value: &str, time: u64, id: u8) -> Entry {
        Entry {
            value: Some(value.into()),
            version: version(time, id),
        }
    }

    #[test]
    fn the_higher_version_wins_in_any_order_and_repeats_change_nothing() {
        let writes = [
            put("a", 10, 1),
            put("b", 20, 2),
            Entry {
                value: None,
                version: version(30, 1),
            },
            put("c", 20, 3),
        ];
        let mut forward = Store::default();
        let mut backward = Store::default();
        for w in &writes {
            forward.merge(1, "k", w.clone());
        }
        for w in writes.iter().rev() {
            backward.merge(1, "k", w.clone());
            backward.merge(1, "k", w.clone());
        }
        assert_eq!(forward.entry(1, "k"), backward.entry(1, "k"));
        assert_eq!(forward.get(1, "k"), None, "the delete is the newest");
        // Equal times are ordered by replica id: concurrent writes agree everywhere.
        let mut a = Store::default();
        let mut b = Store::default();
        a.merge(1, "x", put("from-2", 5, 2));
        a.merge(1, "x", put("from-3", 5, 3));
        b.merge(1, "x", put("from-3", 5, 3));
        b.merge(1, "x", put("from-2", 5, 2));
        assert_eq!(a.get(1, "x"), Some("from-3"));
        assert_eq!(b.get(1, "x"), Some("from-3"));
        assert!(!a.merge(1, "x", put("old", 4, 9)));
    }
}
