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
use crate::proto::{DigestRequest, DigestResponse, PullRequest, SnapshotRequest, SyncData};
use crate::replica::{Replica, Watermark};
use crate::store::{Entry, BUCKETS};

/// How long one message of a snapshot may take to arrive.
const SNAPSHOT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest message accepted from a peer (a pull of many large values).
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// How long each request of a digest round may take (a pull after a long partition carries
/// many entries).
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a digest (a round's small first request) may take.
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
    /// Buckets whose digests differed (after the delta exchange, when there was one).
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

/// The peer's digests, checked; a paused peer accepts connections and never answers, so the
/// digest, which is small, must not hold the round for long.
async fn digest_of(client: &mut SyncClient<Channel>, addr: &str) -> Result<DigestResponse, Status> {
    let digest = tokio::time::timeout(DIGEST_TIMEOUT, client.digest(DigestRequest {}))
        .await
        .map_err(|_| Status::deadline_exceeded(format!("{addr} did not answer the digest")))??
        .into_inner();
    if digest.buckets.len() != BUCKETS {
        return Err(Status::failed_precondition(format!(
            "{addr} sent {} bucket digests, {BUCKETS} expected",
            digest.buckets.len()
        )));
    }
    Ok(digest)
}

/// Pulls entries (a delta or buckets) and merges them; returns the peer's versions of what
/// it sent.
async fn pull_and_merge(
    replica: &Replica,
    client: &mut SyncClient<Channel>,
    request: PullRequest,
    outcome: &mut RoundOutcome,
) -> Result<HashMap<(i32, String), Timestamp>, Status> {
    let pulled = client.pull(request).await?.into_inner();
    let mut their_versions = HashMap::new();
    for d in pulled.data {
        let ty = d.r#type;
        for (key, value, version) in entries_of(d) {
            if replica.merge(ty, &key, value, version) {
                outcome.repaired_here += 1;
            }
            their_versions.insert((ty, key), version);
        }
    }
    Ok(their_versions)
}

/// Pushes `ours` to the peer, but for the entries it sent at the same or a higher version.
async fn push(
    client: &mut SyncClient<Channel>,
    ours: Vec<(i32, String, Entry)>,
    their_versions: &HashMap<(i32, String), Timestamp>,
    outcome: &mut RoundOutcome,
) -> Result<(), Status> {
    let now = Instant::now();
    let writes: Vec<Outgoing> = ours
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
    for batch in batches(&writes) {
        client.set(request_of(batch)).await?;
        outcome.pushed += batch.len();
    }
    Ok(())
}

/// One anti-entropy round with the peer at `addr`. Equal digests end it. Otherwise, when an
/// earlier round with the same peer left a watermark, both sides first exchange what
/// changed since (a delta, proportional to the writes missed, not to the map); then the
/// buckets whose digests still differ are pulled, merged, and the peer's older or missing
/// entries in them pushed back. Marks the replica in touch when it completes.
pub async fn round(replica: &Replica, addr: &str) -> Result<RoundOutcome, Status> {
    let mut client = connect(addr, Some(ROUND_TIMEOUT)).await?;
    replica
        .metrics()
        .anti_entropy_rounds
        .fetch_add(1, Ordering::Relaxed);
    // Our number first: a change here during the round is then sent again next time,
    // never skipped.
    let our_seq = replica.seq();
    let mut theirs = digest_of(&mut client, addr).await?;
    let mut outcome = RoundOutcome::default();
    let differing = |theirs: &DigestResponse| -> BTreeSet<usize> {
        let ours = replica.digests();
        (0..BUCKETS)
            .filter(|&b| ours[b] != theirs.buckets[b])
            .collect()
    };
    let mut buckets = differing(&theirs);
    if !buckets.is_empty() {
        if let Some(mark) = replica
            .watermark(addr)
            .filter(|m| m.peer_id == theirs.replica)
        {
            let delta = PullRequest {
                buckets: vec![],
                delta: true,
                after_seq: mark.their_seq,
            };
            let their_versions = pull_and_merge(replica, &mut client, delta, &mut outcome).await?;
            let ours = replica.changed_after(mark.our_seq);
            push(&mut client, ours, &their_versions, &mut outcome).await?;
            theirs = digest_of(&mut client, addr).await?;
            buckets = differing(&theirs);
        }
    }
    outcome.buckets_differing = buckets.len();
    if !buckets.is_empty() {
        let request = PullRequest {
            buckets: buckets.iter().map(|&b| b as u32).collect(),
            delta: false,
            after_seq: 0,
        };
        let their_versions = pull_and_merge(replica, &mut client, request, &mut outcome).await?;
        push(
            &mut client,
            replica.bucket_entries(&buckets),
            &their_versions,
            &mut outcome,
        )
        .await?;
    }
    replica.set_watermark(
        addr,
        Watermark {
            peer_id: theirs.replica,
            their_seq: theirs.seq,
            our_seq,
        },
    );
    replica
        .metrics()
        .anti_entropy_repaired
        .fetch_add(outcome.repaired_here as u64, Ordering::Relaxed);
    replica.touch();
    Ok(outcome)
}
