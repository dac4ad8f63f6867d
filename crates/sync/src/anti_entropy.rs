//! Repairs between two replicas, from the side that asks: a streamed snapshot (bootstrap and
//! full resync) and the digest round (compare bucket digests, pull the buckets that differ,
//! push back what the peer lacks), so any write a fan-out missed reaches every replica.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use uhlc::Timestamp;

use crate::fanout::{batches, request_of, Outgoing};
use crate::proto::sync_client::SyncClient;
use crate::proto::{DigestRequest, PullRequest, SnapshotRequest, SyncData};
use crate::replica::Replica;
use crate::store::{Entry, BUCKETS};

/// How long one message of a snapshot may take to arrive.
const SNAPSHOT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest message accepted from a peer (a pull of many large values).
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// How long each request of a digest round may take (a pull after a long partition carries
/// many entries).
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the digest (the first, small request of a round) may take.
const DIGEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of the peer at `addr`, on its own connection: fan-out's shared connections have
/// short timeouts, so that a paused peer cannot hold a write's fan-out for long.
async fn connect(addr: &str, timeout: Option<Duration>) -> Result<SyncClient<Channel>, Status> {
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(format!("peer address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2));
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    let channel = tokio::time::timeout(Duration::from_secs(3), endpoint.connect())
        .await
        .map_err(|_| Status::unavailable(format!("connecting to {addr} timed out")))?
        .map_err(|e| Status::unavailable(format!("connecting to {addr}: {e}")))?;
    Ok(SyncClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// What one digest round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Buckets whose digests differed.
    pub buckets_differing: usize,
    /// Entries changed here by the peer's.
    pub repaired_here: usize,
    /// Entries sent to the peer because it lacked them or held older versions.
    pub pushed: usize,
}

/// The entries of one message, as (key, value or tombstone, version); entries without a
/// readable version are skipped (a peer always sends one).
fn entries_of(d: SyncData) -> Vec<(String, Option<String>, Timestamp)> {
    let SyncData {
        data,
        versions,
        deleted,
        ..
    } = d;
    data.into_iter()
        .map(|(k, v)| (k, Some(v)))
        .chain(deleted.into_iter().map(|k| (k, None)))
        .filter_map(|(k, v)| {
            let version = versions.get(&k).and_then(|t| Timestamp::from_str(t).ok())?;
            Some((k, v, version))
        })
        .collect()
}

/// One message carrying `entries` of type `ty`, versions and tombstones included.
pub(crate) fn message_of(ty: i32, entries: impl IntoIterator<Item = (String, Entry)>) -> SyncData {
    let mut out = SyncData {
        r#type: ty,
        ..Default::default()
    };
    for (key, entry) in entries {
        out.versions.insert(key.clone(), entry.version.to_string());
        match entry.value {
            Some(value) => {
                out.data.insert(key, value);
            }
            None => out.deleted.push(key),
        }
    }
    out
}

/// Streams the peer's snapshot at `addr` and merges it; returns how many entries changed
/// here. The peer refuses when it is not ready itself.
pub async fn snapshot_from(replica: &Replica, addr: &str) -> Result<usize, Status> {
    let mut stream = connect(addr, None)
        .await?
        .snapshot(SnapshotRequest { chunk_entries: 0 })
        .await?
        .into_inner();
    let mut changed = 0;
    loop {
        let message = tokio::time::timeout(SNAPSHOT_MESSAGE_TIMEOUT, stream.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("the snapshot from {addr} stalled"))
            })??;
        let Some(d) = message else { break };
        let ty = d.r#type;
        for (key, value, version) in entries_of(d) {
            if replica.merge(ty, &key, value, version) {
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// One anti-entropy round with the peer at `addr`: compares digests, pulls the buckets that
/// differ and merges them, then pushes back the entries of those buckets the peer lacks or
/// holds older. Marks the replica in touch when it completes.
pub async fn round(replica: &Replica, addr: &str) -> Result<RoundOutcome, Status> {
    let mut client = connect(addr, Some(ROUND_TIMEOUT)).await?;
    replica
        .metrics()
        .anti_entropy_rounds
        .fetch_add(1, Ordering::Relaxed);
    // A paused peer accepts connections and never answers: the digest, which is small,
    // must not hold the round for longer than this.
    let theirs = tokio::time::timeout(DIGEST_TIMEOUT, client.digest(DigestRequest {}))
        .await
        .map_err(|_| Status::deadline_exceeded(format!("{addr} did not answer the digest")))??
        .into_inner()
        .buckets;
    if theirs.len() != BUCKETS {
        return Err(Status::failed_precondition(format!(
            "{addr} sent {} bucket digests, {BUCKETS} expected",
            theirs.len()
        )));
    }
    let ours = replica.digests();
    let differing: BTreeSet<usize> = (0..BUCKETS).filter(|&b| ours[b] != theirs[b]).collect();
    let mut outcome = RoundOutcome {
        buckets_differing: differing.len(),
        ..RoundOutcome::default()
    };
    if differing.is_empty() {
        replica.touch();
        return Ok(outcome);
    }
    let pulled = client
        .pull(PullRequest {
            buckets: differing.iter().map(|&b| b as u32).collect(),
        })
        .await?
        .into_inner();
    let mut their_versions: HashMap<(i32, String), Timestamp> = HashMap::new();
    for d in pulled.data {
        let ty = d.r#type;
        for (key, value, version) in entries_of(d) {
            if replica.merge(ty, &key, value, version) {
                outcome.repaired_here += 1;
            }
            their_versions.insert((ty, key), version);
        }
    }
    let now = Instant::now();
    let push: Vec<Outgoing> = replica
        .bucket_entries(&differing)
        .into_iter()
        .filter(|(ty, key, entry)| {
            their_versions
                .get(&(*ty, key.clone()))
                .is_none_or(|theirs| *theirs < entry.version)
        })
        .map(|(ty, key, entry)| Outgoing {
            ty,
            key,
            value: entry.value,
            version: entry.version,
            written: now,
            delivered: None,
        })
        .collect();
    for batch in batches(&push) {
        client.set(request_of(batch)).await?;
        outcome.pushed += batch.len();
    }
    replica
        .metrics()
        .anti_entropy_repaired
        .fetch_add(outcome.repaired_here as u64, Ordering::Relaxed);
    replica.touch();
    Ok(outcome)
}
