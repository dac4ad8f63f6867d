//! The informer's local, indexed copy of a key prefix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

/// One decoded object and where it stands in the store.
#[derive(Debug)]
pub struct Object<T> {
    /// The full key.
    pub key: String,
    /// The decoded value.
    pub value: Arc<T>,
    /// Revision of the last change.
    pub mod_revision: i64,
    /// Revision that created the key.
    pub create_revision: i64,
}

impl<T: serde::de::DeserializeOwned> Object<T> {
    /// A stored key-value decoded as JSON (the key read as UTF-8, lossily).
    pub fn from_kv(kv: &etcd_client::KeyValue) -> Result<Self, serde_json::Error> {
        Ok(Self {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: Arc::new(serde_json::from_slice(kv.value())?),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
        })
    }
}

impl<T> Clone for Object<T> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            value: self.value.clone(),
            mod_revision: self.mod_revision,
            create_revision: self.create_revision,
        }
    }
}

/// Computes the values an object is indexed under.
pub type IndexFn<T> = Arc<dyn Fn(&T) -> Vec<String> + Send + Sync>;

struct Index<T> {
    compute: IndexFn<T>,
    entries: HashMap<String, BTreeSet<String>>,
}

struct State<T> {
    objects: BTreeMap<String, Object<T>>,
    indexes: HashMap<String, Index<T>>,
}

/// A thread-safe map of objects by key with named secondary indexes; cheap to clone.
///
/// ```
/// use ferry_runtime::cache::{Cache, Object};
/// use std::sync::Arc;
/// let cache: Cache<(String, u32)> = Cache::new();
/// cache.add_index("env", |v: &(String, u32)| vec![v.0.clone()]);
/// cache.upsert(Object { key: "/a".into(), value: Arc::new(("prod".into(), 1)), mod_revision: 2, create_revision: 2 });
/// assert_eq!(cache.by_index("env", "prod").len(), 1);
/// ```
pub struct Cache<T> {
    state: Arc<RwLock<State<T>>>,
    revision: watch::Sender<i64>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            revision: self.revision.clone(),
        }
    }
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Cache<T> {
    /// An empty cache at revision 0.
    pub fn new() -> Self {
        Self {
            state: Arc::new(RwLock::new(State {
                objects: BTreeMap::new(),
                indexes: HashMap::new(),
            })),
            revision: watch::channel(0).0,
        }
    }

    /// Adds (or replaces) a named index over every object, present and future.
    pub fn add_index(
        &self,
        name: &str,
        compute: impl Fn(&T) -> Vec<String> + Send + Sync + 'static,
    ) {
        let compute: IndexFn<T> = Arc::new(compute);
        let mut state = self.state.write();
        let mut entries: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (key, obj) in &state.objects {
            for v in compute(&obj.value) {
                entries.entry(v).or_default().insert(key.clone());
            }
        }
        state
            .indexes
            .insert(name.to_string(), Index { compute, entries });
    }

    /// The object at `key`.
    pub fn get(&self, key: &str) -> Option<Object<T>> {
        self.state.read().objects.get(key).cloned()
    }

    /// Every object, in key order.
    pub fn list(&self) -> Vec<Object<T>> {
        self.state.read().objects.values().cloned().collect()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.state.read().objects.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects whose index `name` holds `value` (empty for an unknown index).
    pub fn by_index(&self, name: &str, value: &str) -> Vec<Object<T>> {
        let state = self.state.read();
        let Some(index) = state.indexes.get(name) else {
            return vec![];
        };
        index
            .entries
            .get(value)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| state.objects.get(k).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Inserts or replaces an object; returns the previous one.
    pub fn upsert(&self, obj: Object<T>) -> Option<Object<T>> {
        let mut state = self.state.write();
        let old = state.objects.remove(&obj.key);
        let State { indexes, .. } = &mut *state;
        for index in indexes.values_mut() {
            if let Some(old) = &old {
                remove_from(index, &old.key, &old.value);
            }
            for v in (index.compute)(&obj.value) {
                index.entries.entry(v).or_default().insert(obj.key.clone());
            }
        }
        state.objects.insert(obj.key.clone(), obj);
        old
    }

    /// Removes the object at `key`; returns it.
    pub fn remove(&self, key: &str) -> Option<Object<T>> {
        let mut state = self.state.write();
        let old = state.objects.remove(key)?;
        for index in state.indexes.values_mut() {
            remove_from(index, &old.key, &old.value);
        }
        Some(old)
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    pub(crate) fn set_revision(&self, revision: i64) {
        self.revision.send_if_modified(|r| {
            if revision > *r {
                *r = revision;
                true
            } else {
                false
            }
        });
    }

    /// Read-your-writes: waits until the cache reflects store revision `revision` (for
    /// example the revision a put returned).
    pub async fn wait_for_revision(&self, revision: i64) {
        let mut rx = self.revision.subscribe();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }
}

/// `(old, new)` for one key whose state changed in a [`Cache::replace`].
pub(crate) type Change<T> = (Option<Object<T>>, Option<Object<T>>);

fn remove_from<T>(index: &mut Index<T>, key: &str, value: &T) {
    for v in (index.compute)(value) {
        if let Some(keys) = index.entries.get_mut(&v) {
            keys.remove(key);
            if keys.is_empty() {
                index.entries.remove(&v);
            }
        }
    }
}

impl<T> Cache<T> {
    /// Replaces every object at once (readers see the old set or the new one, never a mix)
    /// and returns `(old, new)` for every key that changed: `(Some, None)` vanished,
    /// `(None, Some)` appeared, `(Some, Some)` changed revision.
    pub(crate) fn replace(&self, fresh: Vec<Object<T>>) -> Vec<Change<T>> {
        let mut state = self.state.write();
        let mut fresh: BTreeMap<String, Object<T>> =
            fresh.into_iter().map(|o| (o.key.clone(), o)).collect();
        let mut changes = Vec::new();
        for (key, old) in &state.objects {
            match fresh.get(key) {
                None => changes.push((Some(old.clone()), None)),
                Some(new) if new.mod_revision != old.mod_revision => {
                    changes.push((Some(old.clone()), Some(new.clone())))
                }
                Some(_) => {}
            }
        }
        for (key, new) in &fresh {
            if !state.objects.contains_key(key) {
                changes.push((None, Some(new.clone())));
            }
        }
        std::mem::swap(&mut state.objects, &mut fresh);
        let State { objects, indexes } = &mut *state;
        for index in indexes.values_mut() {
            index.entries.clear();
            for (key, obj) in objects.iter() {
                for v in (index.compute)(&obj.value) {
                    index.entries.entry(v).or_default().insert(key.clone());
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, env: &str, rev: i64) -> Object<String> {
        Object {
            key: key.into(),
            value: Arc::new(env.into()),
            mod_revision: rev,
            create_revision: rev,
        }
    }

    #[test]
    fn indexes_follow_updates_removals_and_replacement() {
        let cache: Cache<String> = Cache::new();
        cache.add_index("env", |v: &String| vec![v.clone()]);
        cache.upsert(obj("/a", "prod", 2));
        cache.upsert(obj("/b", "prod", 3));
        cache.upsert(obj("/c", "dev", 4));
        assert_eq!(cache.by_index("env", "prod").len(), 2);
        cache.upsert(obj("/b", "dev", 5));
        assert_eq!(cache.by_index("env", "prod").len(), 1);
        assert_eq!(cache.by_index("env", "dev").len(), 2);
        cache.remove("/c");
        assert_eq!(cache.by_index("env", "dev").len(), 1);
        let changes = cache.replace(vec![obj("/a", "prod", 2), obj("/d", "prod", 9)]);
        assert_eq!(changes.len(), 2, "b vanished, d appeared; a unchanged");
        assert_eq!(cache.by_index("env", "prod").len(), 2);
        assert!(cache.by_index("env", "dev").is_empty());
        assert!(cache.by_index("nope", "x").is_empty());
    }

    #[tokio::test]
    async fn waits_for_a_revision() {
        let cache: Cache<String> = Cache::new();
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.wait_for_revision(7).await })
        };
        cache.set_revision(5);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        cache.set_revision(7);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("reached revision 7")
            .expect("task");
        cache.set_revision(3);
        assert_eq!(cache.revision(), 7, "revisions never go back");
    }
}
