//! Which watch streams a commit concerns (etcd's `watchableStore.notify`): each stream
//! registers the key ranges its watchers select, and the writer hands every commit's batch
//! only to the streams with a watcher on one of its keys.
//!
//! Waking every stream for every commit costs the writer and the runtime one task wake-up per
//! stream per commit whatever they watch: with a fleet of agents each watching its own keys,
//! a thousand status writes woke three thousand streams a thousand times each. Routing makes
//! a commit's cost follow the streams it concerns.
//!
//! A stream's inbox is bounded: when it is full (the stream's client reads too slowly) the
//! batch is dropped for that stream and the stream is told it overflowed, so it replays what
//! it missed from history; the writer never waits for a reader.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use super::key_index::KeyRange;
use super::watchable::ChangeBatch;

/// The streams registered with the store and the ranges each of them watches.
pub struct Fanout {
    routes: Mutex<Routes>,
    /// Every batch up to this revision has been handed to the streams that want it.
    routed: AtomicI64,
    capacity: usize,
    /// Watchers, on every stream, that asked for previous values.
    prev_watchers: AtomicUsize,
}

/// A stream's count of watchers per range (one range may be watched several times).
type Watching = HashMap<u64, usize>;

#[derive(Default)]
struct Routes {
    next_id: u64,
    streams: HashMap<u64, Inbox>,
    /// Single keys, looked up per event.
    keys: HashMap<Vec<u8>, Watching>,
    /// Ranges and prefixes in order of their first key, checked per commit against its
    /// sorted keys: only those starting at or before its last key can hold one (a thousand
    /// agents each watching its own wave-target prefix are not checked against every status
    /// write that sorts before them).
    spans: BTreeMap<KeyRange, Watching>,
}

struct Inbox {
    tx: mpsc::Sender<Arc<ChangeBatch>>,
    overflow: Arc<Overflow>,
}

/// Set when a batch could not be handed to a full inbox.
#[derive(Default)]
struct Overflow {
    missed: AtomicBool,
    notify: Notify,
}

impl Fanout {
    /// A fanout whose streams hold up to `capacity` batches each; `routed` is the store's
    /// revision when it opens.
    pub(crate) fn new(capacity: usize, routed: i64) -> Self {
        Self {
            routes: Mutex::new(Routes::default()),
            routed: AtomicI64::new(routed),
            capacity: capacity.max(1),
            prev_watchers: AtomicUsize::new(0),
        }
    }

    /// Registers a new stream with no ranges yet.
    pub fn join(self: &Arc<Self>) -> Subscription {
        let (tx, inbox) = mpsc::channel(self.capacity);
        let overflow = Arc::new(Overflow::default());
        let mut routes = self.routes.lock();
        let id = routes.next_id;
        routes.next_id += 1;
        routes.streams.insert(
            id,
            Inbox {
                tx,
                overflow: overflow.clone(),
            },
        );
        Subscription {
            id,
            fanout: self.clone(),
            inbox,
            overflow,
            ranges: HashMap::new(),
            prev_watchers: 0,
        }
    }

    /// Whether some watcher asks for previous values: the writer reads a key's previous
    /// value for its event only then (etcd too reads them only for such watchers). A batch
    /// applied while the first such watcher registers lacks them; see
    /// [`ChangeBatch::has_prevs`].
    pub fn wants_prevs(&self) -> bool {
        self.prev_watchers.load(Ordering::Acquire) > 0
    }

    /// Every batch up to the returned revision has been handed to the streams that want it.
    pub fn routed(&self) -> i64 {
        self.routed.load(Ordering::Acquire)
    }

    /// Hands `batch` (one commit, in revision order) to every stream watching one of its
    /// keys. Called by the writer, in commit order, before the commit is acknowledged.
    pub(crate) fn route(&self, batch: &Arc<ChangeBatch>) {
        let Some(last) = batch.last().map(|e| e.kv.mod_revision) else {
            return;
        };
        let routes = self.routes.lock();
        let mut hit: Vec<u64> = Vec::new();
        if !routes.keys.is_empty() {
            for event in batch.iter() {
                if let Some(streams) = routes.keys.get(&event.kv.key) {
                    hit.extend(streams.keys());
                }
            }
        }
        if !routes.spans.is_empty() {
            let mut keys: Vec<&[u8]> = batch.iter().map(|e| e.kv.key.as_slice()).collect();
            keys.sort_unstable();
            // The least span starting after the last key: every span before it starts at or
            // before that key.
            let mut after_last = keys.last().map(|k| k.to_vec()).unwrap_or_default();
            after_last.push(0);
            let first_beyond = KeyRange::Span {
                start: after_last,
                end: None,
            };
            for (range, streams) in routes.spans.range(..first_beyond) {
                if touches(range, &keys) {
                    hit.extend(streams.keys());
                }
            }
        }
        hit.sort_unstable();
        hit.dedup();
        for id in hit {
            let Some(inbox) = routes.streams.get(&id) else {
                continue;
            };
            if inbox.tx.try_send(batch.clone()).is_err() {
                inbox.overflow.missed.store(true, Ordering::Release);
                inbox.overflow.notify.notify_one();
            }
        }
        self.routed.store(last, Ordering::Release);
    }

    fn add(&self, id: u64, range: &KeyRange) {
        let mut routes = self.routes.lock();
        let table = match range {
            KeyRange::Single(key) => routes.keys.entry(key.clone()).or_default(),
            KeyRange::Span { .. } => routes.spans.entry(range.clone()).or_default(),
        };
        *table.entry(id).or_default() += 1;
    }

    fn remove(&self, id: u64, range: &KeyRange) {
        let mut routes = self.routes.lock();
        let routes = &mut *routes;
        let emptied = match range {
            KeyRange::Single(key) => routes.keys.get_mut(key).is_some_and(|s| forget(s, id)),
            KeyRange::Span { .. } => routes.spans.get_mut(range).is_some_and(|s| forget(s, id)),
        };
        if emptied {
            match range {
                KeyRange::Single(key) => routes.keys.remove(key),
                KeyRange::Span { .. } => routes.spans.remove(range),
            };
        }
    }

    /// Unregisters stream `id`, which watches `ranges` (each once per watcher).
    fn leave(&self, id: u64, ranges: &HashMap<KeyRange, usize>) {
        let mut routes = self.routes.lock();
        let routes = &mut *routes;
        routes.streams.remove(&id);
        for range in ranges.keys() {
            let (table_keys, table_spans) = (&mut routes.keys, &mut routes.spans);
            let streams = match range {
                KeyRange::Single(key) => table_keys.get_mut(key),
                KeyRange::Span { .. } => table_spans.get_mut(range),
            };
            let Some(streams) = streams else { continue };
            streams.remove(&id);
            if streams.is_empty() {
                match range {
                    KeyRange::Single(key) => table_keys.remove(key),
                    KeyRange::Span { .. } => table_spans.remove(range),
                };
            }
        }
    }
}

/// Takes one watcher of stream `id` off a range's streams; whether none is left.
fn forget(streams: &mut Watching, id: u64) -> bool {
    if let Some(count) = streams.get_mut(&id) {
        *count -= 1;
        if *count == 0 {
            streams.remove(&id);
        }
    }
    streams.is_empty()
}

/// Whether one of `sorted` keys falls in `range`.
fn touches(range: &KeyRange, sorted: &[&[u8]]) -> bool {
    match range {
        KeyRange::Single(key) => sorted.binary_search(&key.as_slice()).is_ok(),
        KeyRange::Span { start, end } => {
            let first = sorted.partition_point(|k| *k < start.as_slice());
            sorted
                .get(first)
                .is_some_and(|k| end.as_deref().is_none_or(|e| *k < e))
        }
    }
}

/// One stream's registration: its inbox and its ranges. Dropping it unregisters the stream.
pub struct Subscription {
    id: u64,
    fanout: Arc<Fanout>,
    inbox: mpsc::Receiver<Arc<ChangeBatch>>,
    overflow: Arc<Overflow>,
    /// This stream's ranges, so that leaving touches only them.
    ranges: HashMap<KeyRange, usize>,
    /// This stream's watchers that asked for previous values.
    prev_watchers: usize,
}

impl Subscription {
    /// Routes commits touching `range` to this stream from now on (once per watcher), with
    /// the keys' previous values if `prevs`.
    pub fn add(&mut self, range: &KeyRange, prevs: bool) {
        if prevs {
            self.prev_watchers += 1;
            self.fanout.prev_watchers.fetch_add(1, Ordering::AcqRel);
        }
        *self.ranges.entry(range.clone()).or_default() += 1;
        self.fanout.add(self.id, range);
    }

    /// Undoes one [`Subscription::add`] of `range` with `prevs`.
    pub fn remove(&mut self, range: &KeyRange, prevs: bool) {
        let Some(count) = self.ranges.get_mut(range) else {
            return;
        };
        if prevs && self.prev_watchers > 0 {
            self.prev_watchers -= 1;
            self.fanout.prev_watchers.fetch_sub(1, Ordering::AcqRel);
        }
        *count -= 1;
        if *count == 0 {
            self.ranges.remove(range);
        }
        self.fanout.remove(self.id, range);
    }

    /// See [`Fanout::routed`].
    pub fn routed(&self) -> i64 {
        self.fanout.routed()
    }

    /// The next batch for this stream, or `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<Arc<ChangeBatch>> {
        self.inbox.recv().await
    }

    /// A batch already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Arc<ChangeBatch>> {
        self.inbox.try_recv().ok()
    }

    /// Whether a batch was dropped because the inbox was full since the last call; the
    /// stream must then replay from history what it has not seen.
    pub fn take_overflow(&self) -> bool {
        self.overflow.missed.swap(false, Ordering::AcqRel)
    }

    /// What wakes the stream when a batch is dropped for it.
    pub fn overflow_signal(&self) -> OverflowSignal {
        OverflowSignal(self.overflow.clone())
    }
}

/// Wakes a stream whose inbox overflowed (see [`Subscription::take_overflow`]).
pub struct OverflowSignal(Arc<Overflow>);

impl OverflowSignal {
    /// Waits until a batch is dropped for the stream (at once if one was since the last
    /// wait).
    pub async fn wait(&self) {
        self.0.notify.notified().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.fanout
            .prev_watchers
            .fetch_sub(self.prev_watchers, Ordering::AcqRel);
        self.fanout.leave(self.id, &self.ranges);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::watchable::Event;
    use etcd_client::proto::PbKeyValue;

    fn batch(keys: &[(&str, i64)]) -> Arc<ChangeBatch> {
        Arc::new(ChangeBatch::new(
            keys.iter()
                .map(|(k, rev)| Event {
                    kv: PbKeyValue {
                        key: k.as_bytes().to_vec(),
                        mod_revision: *rev,
                        version: 1,
                        ..Default::default()
                    },
                    prev: None,
                })
                .collect(),
        ))
    }

    fn revisions(sub: &mut Subscription) -> Vec<i64> {
        std::iter::from_fn(|| sub.try_recv())
            .filter_map(|b| b.last().map(|e| e.kv.mod_revision))
            .collect()
    }

    #[test]
    fn a_commit_reaches_only_the_streams_watching_its_keys() {
        let fanout = Arc::new(Fanout::new(16, 1));
        let mut key = fanout.join();
        key.add(&KeyRange::new(b"a/1", b""), false);
        let mut prefix = fanout.join();
        prefix.add(&KeyRange::new(b"a/", b"a0"), false);
        let mut everything = fanout.join();
        everything.add(&KeyRange::new(&[0], &[0]), false);
        let mut other = fanout.join();
        other.add(&KeyRange::new(b"b/", b"b0"), false);
        let mut none = fanout.join();

        fanout.route(&batch(&[("a/1", 2)]));
        fanout.route(&batch(&[("a/2", 3), ("c", 3)]));
        fanout.route(&batch(&[("c", 4)]));
        fanout.route(&batch(&[("a0", 5)]));
        assert_eq!(fanout.routed(), 5);

        assert_eq!(revisions(&mut key), [2]);
        assert_eq!(revisions(&mut prefix), [2, 3]);
        assert_eq!(revisions(&mut everything), [2, 3, 4, 5]);
        assert_eq!(revisions(&mut other), Vec::<i64>::new());
        assert_eq!(revisions(&mut none), Vec::<i64>::new());
    }

    #[test]
    fn many_ranges_route_each_commit_exactly_where_a_scan_of_all_of_them_would() {
        // Ranges over a small alphabet, so that many start at, just after or around the
        // keys of a commit; expected streams come from checking every range.
        struct Rng(u64);
        impl Rng {
            fn below(&mut self, n: u64) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 % n
            }
            fn word(&mut self) -> Vec<u8> {
                let len = 1 + self.below(3);
                (0..len).map(|_| b"ab\0"[self.below(3) as usize]).collect()
            }
        }
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let fanout = Arc::new(Fanout::new(1024, 1));
        let mut streams = Vec::new();
        for _ in 0..300 {
            let start = rng.word();
            let range = match rng.below(4) {
                0 => KeyRange::new(&start, &[0]),
                1 => KeyRange::new(&start, b""),
                _ => KeyRange::new(&start, &rng.word()),
            };
            let mut sub = fanout.join();
            sub.add(&range, false);
            streams.push((range, sub));
        }
        for rev in 2..200 {
            let keys: Vec<Vec<u8>> = (0..1 + rng.below(3)).map(|_| rng.word()).collect();
            let mut sorted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            sorted.sort_unstable();
            let commit = Arc::new(ChangeBatch::new(
                keys.iter()
                    .map(|k| Event {
                        kv: PbKeyValue {
                            key: k.clone(),
                            mod_revision: rev,
                            version: 1,
                            ..Default::default()
                        },
                        prev: None,
                    })
                    .collect(),
            ));
            fanout.route(&commit);
            for (range, sub) in &mut streams {
                let got = !revisions(sub).is_empty();
                assert_eq!(
                    got,
                    touches(range, &sorted),
                    "{range:?} and keys {sorted:?}"
                );
            }
        }
    }

    #[test]
    fn a_range_watched_twice_stays_until_both_are_removed_and_a_dropped_stream_is_gone() {
        let fanout = Arc::new(Fanout::new(16, 1));
        let mut sub = fanout.join();
        let range = KeyRange::new(b"k/", b"k0");
        sub.add(&range, false);
        sub.add(&range, false);
        sub.remove(&range, false);
        fanout.route(&batch(&[("k/x", 2)]));
        assert_eq!(revisions(&mut sub), [2]);
        sub.remove(&range, false);
        fanout.route(&batch(&[("k/x", 3)]));
        assert_eq!(revisions(&mut sub), Vec::<i64>::new());

        let mut gone = fanout.join();
        gone.add(&range, false);
        gone.add(&KeyRange::new(b"single", b""), false);
        drop(gone);
        let routes = fanout.routes.lock();
        assert!(routes.spans.is_empty() && routes.keys.is_empty() && routes.streams.len() == 1);
    }

    #[test]
    fn previous_values_are_wanted_while_a_watcher_on_any_stream_asks_for_them() {
        let fanout = Arc::new(Fanout::new(16, 1));
        let range = KeyRange::new(b"k/", b"k0");
        let mut plain = fanout.join();
        plain.add(&range, false);
        assert!(!fanout.wants_prevs());
        let mut sub = fanout.join();
        sub.add(&range, true);
        sub.add(&range, true);
        assert!(fanout.wants_prevs());
        sub.remove(&range, true);
        assert!(fanout.wants_prevs(), "one watcher still asks");
        sub.remove(&range, true);
        assert!(!fanout.wants_prevs());
        let mut gone = fanout.join();
        gone.add(&range, true);
        assert!(fanout.wants_prevs());
        drop(gone);
        assert!(
            !fanout.wants_prevs(),
            "a dropped stream's watchers ask no more"
        );
    }

    #[test]
    fn a_full_inbox_drops_the_batch_and_says_so() {
        let fanout = Arc::new(Fanout::new(2, 1));
        let mut sub = fanout.join();
        sub.add(&KeyRange::new(b"k", b""), false);
        for rev in 2..=4 {
            fanout.route(&batch(&[("k", rev)]));
        }
        assert!(sub.take_overflow());
        assert!(!sub.take_overflow());
        assert_eq!(revisions(&mut sub), [2, 3]);
        assert_eq!(fanout.routed(), 4);
    }
}
