//! The versioned map a replica holds: per type, per key, the value (or a tombstone) and the
//! version that wrote it. The merge rule is the whole consistency story: an entry replaces
//! another only if its version is higher. It is idempotent and order-independent, so two
//! replicas that have seen the same writes hold the same map, whatever order they saw them in.
//!
//! Keys are spread over [`BUCKETS`] hash buckets, each with a digest kept up to date on every
//! change, so anti-entropy compares 1,024 numbers instead of the map. Tombstones are indexed
//! by version so the ones older than the grace period are collected without a scan.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uhlc::{Timestamp, NTP64};
use xxhash_rust::xxh3::xxh3_64;

/// How many hash buckets the keys are spread over (the digest's length).
pub const BUCKETS: usize = 1024;

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value, or `None` for a delete (a tombstone, kept so the delete wins over older
    /// writes that arrive later).
    pub value: Option<String>,
    /// The version that wrote it.
    pub version: Timestamp,
}

/// Every type's entries, the buckets' digests and the tombstone index.
#[derive(Debug)]
pub struct Store {
    types: HashMap<i32, BTreeMap<String, Entry>>,
    digests: Vec<u64>,
    /// Tombstones by version: the oldest are collected first.
    tombstones: BTreeSet<(Timestamp, i32, String)>,
    /// Tombstones older than this have been collected; one arriving now is not kept (it
    /// still removes an older value).
    horizon: NTP64,
    live: usize,
    /// Counts changes here (in arrival order, whoever wrote them): anti-entropy asks a peer
    /// for what changed after the sequence number it saw last, instead of whole buckets.
    seq: u64,
    /// The sequence number of each key's last change, and the keys by it.
    seq_of: HashMap<(i32, String), u64>,
    changes: BTreeMap<u64, (i32, String)>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            types: HashMap::new(),
            digests: vec![0; BUCKETS],
            tombstones: BTreeSet::new(),
            horizon: NTP64(0),
            live: 0,
            seq: 0,
            seq_of: HashMap::new(),
            changes: BTreeMap::new(),
        }
    }
}

/// The bucket a key of a type falls in; the same on every replica and every platform.
pub fn bucket_of(ty: i32, key: &str) -> usize {
    let mut bytes = Vec::with_capacity(4 + key.len());
    bytes.extend_from_slice(&ty.to_le_bytes());
    bytes.extend_from_slice(key.as_bytes());
    // The modulo of a u64 by 1024 always fits a usize.
    (xxh3_64(&bytes) % BUCKETS as u64) as usize
}

/// What one entry adds to its bucket's digest: a hash of the key and the version (a version
/// names exactly one write, so the value need not be hashed).
fn fingerprint(ty: i32, key: &str, version: &Timestamp) -> u64 {
    let id = version.get_id().to_le_bytes();
    let mut bytes = Vec::with_capacity(4 + key.len() + 1 + 8 + id.len());
    bytes.extend_from_slice(&ty.to_le_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&version.get_time().as_u64().to_le_bytes());
    bytes.extend_from_slice(&id);
    xxh3_64(&bytes)
}

impl Store {
    /// Applies `entry` to `key` of `ty` if its version is higher than what is there; returns
    /// whether it changed anything.
    pub fn merge(&mut self, ty: i32, key: &str, entry: Entry) -> bool {
        if let Some(current) = self.entry(ty, key) {
            if current.version >= entry.version {
                return false;
            }
        }
        if entry.value.is_none() && *entry.version.get_time() < self.horizon {
            // A delete older than the grace: it still removes an older value, but is not kept
            // (every replica in touch collected it already).
            return self.remove(ty, key).is_some();
        }
        self.remove(ty, key);
        self.seq += 1;
        let id = (ty, key.to_string());
        self.changes.insert(self.seq, id.clone());
        self.seq_of.insert(id, self.seq);
        let bucket = bucket_of(ty, key);
        self.digests[bucket] =
            self.digests[bucket].wrapping_add(fingerprint(ty, key, &entry.version));
        if entry.value.is_none() {
            self.tombstones.insert((entry.version, ty, key.to_string()));
        } else {
            self.live += 1;
        }
        self.types
            .entry(ty)
            .or_default()
            .insert(key.to_string(), entry);
        true
    }

    fn remove(&mut self, ty: i32, key: &str) -> Option<Entry> {
        let map = self.types.get_mut(&ty)?;
        let old = map.remove(key)?;
        if map.is_empty() {
            self.types.remove(&ty);
        }
        if let Some(seq) = self.seq_of.remove(&(ty, key.to_string())) {
            self.changes.remove(&seq);
        }
        let bucket = bucket_of(ty, key);
        self.digests[bucket] =
            self.digests[bucket].wrapping_sub(fingerprint(ty, key, &old.version));
        if old.value.is_none() {
            self.tombstones.remove(&(old.version, ty, key.to_string()));
        } else {
            self.live -= 1;
        }
        Some(old)
    }

    /// Collects the tombstones whose version is older than `horizon`, and refuses older ones
    /// from now on; returns how many were collected.
    pub fn collect_tombstones(&mut self, horizon: NTP64) -> usize {
        self.horizon = self.horizon.max(horizon);
        let mut collected = 0;
        while let Some((version, ty, key)) = self.tombstones.first().cloned() {
            if *version.get_time() >= self.horizon {
                break;
            }
            self.remove(ty, &key);
            collected += 1;
        }
        collected
    }

    /// Drops every entry whose version is older than `horizon` (values and tombstones): the
    /// first step of a full resync, keeping only what is provably newer than any delete a
    /// peer may have collected meanwhile.
    pub fn retain_newer_than(&mut self, horizon: NTP64) -> usize {
        let old: Vec<(i32, String)> = self
            .types
            .iter()
            .flat_map(|(ty, map)| {
                map.iter()
                    .filter(|(_, e)| *e.version.get_time() < horizon)
                    .map(|(k, _)| (*ty, k.clone()))
            })
            .collect();
        for (ty, key) in &old {
            self.remove(*ty, key);
        }
        old.len()
    }

    /// The sequence number of the latest change here.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Every entry that changed here after sequence number `after`, oldest change first.
    pub fn changed_after(&self, after: u64) -> Vec<(i32, String, Entry)> {
        self.changes
            .range(after + 1..)
            .filter_map(|(_, (ty, key))| {
                self.entry(*ty, key).map(|e| (*ty, key.clone(), e.clone()))
            })
            .collect()
    }

    /// The live value of a key.
    pub fn get(&self, ty: i32, key: &str) -> Option<&str> {
        self.entry(ty, key).and_then(|e| e.value.as_deref())
    }

    /// A key's entry, tombstone included.
    pub fn entry(&self, ty: i32, key: &str) -> Option<&Entry> {
        self.types.get(&ty).and_then(|m| m.get(key))
    }

    /// Every entry of a type, tombstones included, in key order.
    pub fn entries(&self, ty: i32) -> impl Iterator<Item = (&String, &Entry)> {
        self.types.get(&ty).into_iter().flat_map(|m| m.iter())
    }

    /// Up to `limit` entries of a type after `after` (from the start when `None`), in key
    /// order: a snapshot is streamed in such chunks without holding the map for long.
    pub fn chunk(&self, ty: i32, after: Option<&str>, limit: usize) -> Vec<(String, Entry)> {
        let Some(map) = self.types.get(&ty) else {
            return Vec::new();
        };
        let range = match after {
            Some(after) => {
                map.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => map.range::<str, _>(..),
        };
        range
            .take(limit)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Every entry (of every type, tombstones included) whose key falls in one of `buckets`.
    pub fn bucket_entries(&self, buckets: &BTreeSet<usize>) -> Vec<(i32, String, Entry)> {
        self.types
            .iter()
            .flat_map(|(ty, map)| {
                map.iter()
                    .filter(|(k, _)| buckets.contains(&bucket_of(*ty, k)))
                    .map(|(k, e)| (*ty, k.clone(), e.clone()))
            })
            .collect()
    }

    /// The buckets' digests: equal digests mean (but for a 2^-64 chance) equal buckets.
    pub fn digests(&self) -> &[u64] {
        &self.digests
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

    /// How many live values (tombstones not counted) the map holds.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the map holds no live value.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// How many tombstones are kept.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(time: u64, id: u8) -> Timestamp {
        Timestamp::new(NTP64(time), uhlc::ID::try_from(id).expect("a non-zero id"))
    }

    fn put(value: &str, time: u64, id: u8) -> Entry {
        Entry {
            value: Some(value.into()),
            version: version(time, id),
        }
    }

    fn delete(time: u64, id: u8) -> Entry {
        Entry {
            value: None,
            version: version(time, id),
        }
    }

    #[test]
    fn the_higher_version_wins_in_any_order_and_repeats_change_nothing() {
        let writes = [
            put("a", 10, 1),
            put("b", 20, 2),
            delete(30, 1),
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
        assert_eq!(forward.digests(), backward.digests());
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

    #[test]
    fn digests_follow_the_content_and_differ_only_in_the_changed_bucket() {
        let mut a = Store::default();
        let mut b = Store::default();
        for i in 0..500 {
            a.merge(2, &format!("key-{i}"), put("v", 10 + i, 1));
            b.merge(2, &format!("key-{}", 499 - i), put("v", 509 - i, 1));
        }
        assert_eq!(a.digests(), b.digests());
        assert_eq!(a.len(), 500);
        b.merge(2, "key-7", put("newer", 1000, 2));
        let differing: Vec<usize> = (0..BUCKETS)
            .filter(|&i| a.digests()[i] != b.digests()[i])
            .collect();
        assert_eq!(differing, vec![bucket_of(2, "key-7")]);
        let pulled = b.bucket_entries(&differing.iter().copied().collect());
        assert!(pulled
            .iter()
            .any(|(_, k, e)| k == "key-7" && e.version == version(1000, 2)));
        for (ty, key, entry) in pulled {
            a.merge(ty, &key, entry);
        }
        assert_eq!(a.digests(), b.digests());
    }

    #[test]
    fn tombstones_are_collected_after_the_horizon_and_old_deletes_still_remove() {
        let mut s = Store::default();
        s.merge(1, "gone", put("v", 10, 1));
        s.merge(1, "gone", delete(20, 1));
        s.merge(1, "recent", delete(200, 1));
        s.merge(1, "kept", put("v", 5, 1));
        assert_eq!(s.tombstone_count(), 2);
        assert_eq!(s.collect_tombstones(NTP64(100)), 1);
        assert_eq!(s.entry(1, "gone"), None);
        assert!(s.entry(1, "recent").is_some());
        // A tombstone older than the horizon is not kept again, but removes an older value.
        assert!(!s.merge(1, "gone", delete(20, 1)));
        assert_eq!(s.entry(1, "gone"), None);
        assert!(s.merge(1, "kept", delete(50, 2)));
        assert_eq!(s.entry(1, "kept"), None);
        assert_eq!(s.tombstone_count(), 1);
        assert_eq!(s.len(), 0);
        let mut fresh = Store::default();
        fresh.merge(1, "recent", delete(200, 1));
        assert_eq!(s.digests(), fresh.digests());
    }

    #[test]
    fn a_full_resync_keeps_only_what_is_newer_than_the_horizon() {
        let mut s = Store::default();
        s.merge(1, "old", put("v", 10, 1));
        s.merge(1, "old-delete", delete(11, 1));
        s.merge(3, "new", put("v", 500, 1));
        assert_eq!(s.retain_newer_than(NTP64(100)), 2);
        assert_eq!(s.types(), vec![3]);
        assert_eq!(s.get(3, "new"), Some("v"));
        assert_eq!(s.tombstone_count(), 0);
    }

    #[test]
    fn changes_are_listed_by_arrival_once_per_key() {
        let mut s = Store::default();
        s.merge(1, "a", put("1", 50, 1));
        let mark = s.seq();
        s.merge(1, "b", put("1", 10, 1)); // an old version arriving late still counts
        s.merge(1, "a", put("2", 60, 1));
        s.merge(1, "a", put("stale", 40, 1)); // refused: no change
        let changed: Vec<String> = s
            .changed_after(mark)
            .into_iter()
            .map(|(_, k, _)| k)
            .collect();
        assert_eq!(changed, ["b", "a"]);
        assert_eq!(s.changed_after(s.seq()).len(), 0);
        s.merge(1, "b", delete(70, 1));
        s.collect_tombstones(NTP64(100));
        assert_eq!(
            s.changed_after(0)
                .into_iter()
                .map(|(_, k, _)| k)
                .collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn chunks_walk_a_type_in_key_order() {
        let mut s = Store::default();
        for k in ["c", "a", "b", "d"] {
            s.merge(1, k, put(k, 1, 1));
        }
        let first = s.chunk(1, None, 3);
        assert_eq!(
            first.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let rest = s.chunk(1, Some("c"), 3);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, "d");
        assert!(s.chunk(9, None, 3).is_empty());
    }
}
