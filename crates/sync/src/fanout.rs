//! Fan-out: one link per peer, a bounded queue and one sender task that drains whatever has
//! queued into a single Set (batched up to a size), with three bounded attempts. Batching is
//! what lets a burst of writes reach ten peers at the rate they are made; a queue that is
//! full, or a batch that fails every attempt, is dropped and counted: anti-entropy repairs
//! the peer, so nothing queues without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use uhlc::Timestamp;

use crate::proto::sync_client::SyncClient;
use crate::proto::{SyncData, SyncRequest};
use crate::replica::WeakReplica;

/// The delays between a batch's attempts. A peer that stays unreachable is left to
/// anti-entropy, never to an unbounded queue.
const ATTEMPT_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(900),
];
/// Writes waiting for one peer; more are dropped (and counted) for anti-entropy to repair.
const QUEUE_CAPACITY: usize = 65_536;
/// The most entries, and bytes of keys and values, in one Set.
pub(crate) const MAX_BATCH_ENTRIES: usize = 2_000;
pub(crate) const MAX_BATCH_BYTES: usize = 4 << 20;

/// One write on its way to a peer.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub ty: i32,
    pub key: String,
    pub value: Option<String>,
    pub version: Timestamp,
    pub written: Instant,
    /// Told once the peer has it (a client waiting for a second copy).
    pub delivered: Option<Arc<Delivery>>,
}

/// The writes of one call on their way to one peer: once the peer has all of them, the
/// caller hears of it.
#[derive(Debug)]
pub(crate) struct Delivery {
    remaining: AtomicUsize,
    done: mpsc::Sender<()>,
}

impl Delivery {
    /// Waits for `writes` deliveries, then tells `done`.
    pub fn new(writes: usize, done: mpsc::Sender<()>) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(writes),
            done,
        })
    }

    fn one_delivered(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.done.try_send(());
        }
    }
}

impl Outgoing {
    fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, String::len) + 64
    }
}

/// A peer and the queue of writes for it; dropping the link lets its task finish the queue
/// and end.
pub(crate) struct PeerLink {
    pub addr: String,
    queue: mpsc::Sender<Outgoing>,
}

impl PeerLink {
    /// A link to `addr` whose sender task reports to `replica`. Needs a Tokio runtime.
    pub fn new(addr: &str, replica: WeakReplica) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .connect_lazy();
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(send_batches(
            addr.to_string(),
            SyncClient::new(channel).max_encoding_message_size(usize::MAX),
            rx,
            replica,
        ));
        Ok(Self {
            addr: addr.to_string(),
            queue,
        })
    }

    /// Queues a write; false when the queue is full (the write is left to anti-entropy).
    pub fn send(&self, write: Outgoing) -> bool {
        self.queue.try_send(write).is_ok()
    }
}

/// Splits writes into runs that each fit one Set (entries and bytes bounded).
pub(crate) fn batches(writes: &[Outgoing]) -> Vec<&[Outgoing]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, w) in writes.iter().enumerate() {
        if i > start && (i - start >= MAX_BATCH_ENTRIES || bytes + w.bytes() > MAX_BATCH_BYTES) {
            out.push(&writes[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += w.bytes();
    }
    if start < writes.len() {
        out.push(&writes[start..]);
    }
    out
}

/// Groups entries by type into one request; of two writes to one key, the higher version.
pub(crate) fn request_of(batch: &[Outgoing]) -> SyncRequest {
    let mut newest: HashMap<(i32, &str), &Outgoing> = HashMap::new();
    for w in batch {
        let slot = newest.entry((w.ty, w.key.as_str())).or_insert(w);
        if w.version > slot.version {
            *slot = w;
        }
    }
    let mut by_type: HashMap<i32, SyncData> = HashMap::new();
    for w in newest.into_values() {
        let d = by_type.entry(w.ty).or_insert_with(|| SyncData {
            r#type: w.ty,
            ..Default::default()
        });
        d.versions.insert(w.key.clone(), w.version.to_string());
        match &w.value {
            Some(v) => {
                d.data.insert(w.key.clone(), v.clone());
            }
            None => d.deleted.push(w.key.clone()),
        }
    }
    SyncRequest {
        data: by_type.into_values().collect(),
        include_deleted: false,
    }
}

async fn send_batches(
    addr: String,
    mut client: SyncClient<Channel>,
    mut rx: mpsc::Receiver<Outgoing>,
    replica: WeakReplica,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_ENTRIES && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.bytes();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let Some(owner) = replica.upgrade() else {
            return;
        };
        let request = request_of(&batch);
        let mut last = String::new();
        let mut sent = false;
        for delay in ATTEMPT_DELAYS {
            if owner.is_stale() {
                // Paused past the grace mid fan-out: the peer may have collected a delete of
                // these keys since; anti-entropy after the resync decides.
                last = "this replica is out of touch".into();
                break;
            }
            match client.set(request.clone()).await {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(delay).await;
        }
        let metrics = owner.metrics();
        if sent {
            let micros: u64 = batch
                .iter()
                .map(|w| u64::try_from(w.written.elapsed().as_micros()).unwrap_or(u64::MAX))
                .sum();
            metrics
                .fanout_delivered
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            metrics
                .fanout_micros_total
                .fetch_add(micros, Ordering::Relaxed);
            for w in batch {
                if let Some(delivery) = w.delivered {
                    delivery.one_delivered();
                }
            }
        } else {
            metrics
                .fanout_failed
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::warn!(peer = %addr, writes = batch.len(), error = %last, "fan-out gave up; anti-entropy will repair the peer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, value: Option<&str>, time: u64, size: usize) -> Outgoing {
        Outgoing {
            ty: 1,
            key: key.into(),
            value: value.map(|v| v.repeat(size)),
            version: Timestamp::new(uhlc::NTP64(time), uhlc::ID::try_from(1u8).expect("id")),
            written: Instant::now(),
            delivered: None,
        }
    }

    #[test]
    fn a_batch_carries_the_newest_write_of_each_key() {
        let batch = [
            write("k", Some("old"), 1, 1),
            write("k", None, 3, 1),
            write("k", Some("mid"), 2, 1),
            write("j", Some("x"), 1, 1),
        ];
        let request = request_of(&batch);
        assert_eq!(request.data.len(), 1);
        let d = &request.data[0];
        assert_eq!(d.deleted, ["k"]);
        assert!(!d.data.contains_key("k"));
        assert_eq!(d.data.get("j").map(String::as_str), Some("x"));
        assert_eq!(d.versions.len(), 2);
    }

    #[test]
    fn batches_stay_under_the_entry_and_byte_limits() {
        let many: Vec<Outgoing> = (0..MAX_BATCH_ENTRIES * 2 + 1)
            .map(|i| write(&format!("k{i}"), Some("v"), 1, 1))
            .collect();
        let sizes: Vec<usize> = batches(&many).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [MAX_BATCH_ENTRIES, MAX_BATCH_ENTRIES, 1]);
        let big: Vec<Outgoing> = (0..10)
            .map(|i| write(&format!("k{i}"), Some("v"), 1, 1 << 20))
            .collect();
        let runs = batches(&big);
        assert!(runs.len() >= 3, "{}", runs.len());
        assert!(runs
            .iter()
            .all(|b| b.iter().map(Outgoing::bytes).sum::<usize>() <= MAX_BATCH_BYTES));
        assert_eq!(runs.iter().map(|b| b.len()).sum::<usize>(), 10);
    }
}
