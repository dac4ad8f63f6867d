//! The gRPC service: the original `hellorpc.Sync` (Get, Set, GetAll) over a [`Replica`].
//! A Set without versions is a client's write: stamped here and fanned out. A Set with
//! versions is a peer's fan-out (or a ferry-aware client): merged, never sent on again, so
//! writes do not circle between replicas.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::str::FromStr;

use tonic::{Request, Response, Status};
use uhlc::Timestamp;

use crate::anti_entropy::message_of;
use crate::proto::sync_server::Sync;
use crate::proto::{
    DigestRequest, DigestResponse, PullRequest, SnapshotRequest, SyncData, SyncRequest,
    SyncResponse,
};
use crate::replica::{Replica, REPLICATION_WAIT};
use crate::store::BUCKETS;

/// Entries per snapshot message unless the client asks otherwise, and the most it may ask.
const SNAPSHOT_CHUNK: usize = 1000;
const MAX_SNAPSHOT_CHUNK: usize = 10_000;

/// The longest key and value accepted.
pub const MAX_KEY_BYTES: usize = 4096;
/// The largest value accepted.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// The largest request accepted.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// `hellorpc.Sync` served by a replica.
#[derive(Clone)]
pub struct SyncService {
    replica: Replica,
}

impl SyncService {
    /// Serves `replica`.
    pub fn new(replica: Replica) -> Self {
        Self { replica }
    }

    /// The tonic server for this service.
    pub fn server(self) -> crate::proto::sync_server::SyncServer<Self> {
        // A batch of fan-out or anti-entropy holds up to 4 MiB of keys and values, and a
        // client's Set may carry several values of up to 1 MiB each.
        crate::proto::sync_server::SyncServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    /// Serves on `listener` until the connection is dropped or the task aborted.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), tonic::transport::Error> {
        // Without TCP_NODELAY a response's second segment waits for the peer's delayed ACK
        // (40 ms on Linux): every fan-out and digest round would pay it.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(self.server())
            .serve_with_incoming(incoming)
            .await
    }
}

fn entries_of(
    replica: &Replica,
    ty: i32,
    keys: Option<Vec<&String>>,
    include_deleted: bool,
) -> SyncData {
    let entries = replica.entries(ty).into_iter().filter(|(key, entry)| {
        keys.as_ref().is_none_or(|k| k.contains(&key)) && (include_deleted || entry.value.is_some())
    });
    message_of(ty, entries)
}

impl SyncService {
    /// Reads are served, and peers copy, only from a ready replica that is in touch: a
    /// joining one may still miss entries, an out-of-touch one may hold values whose deletes
    /// the others have already collected.
    fn check_current(&self) -> Result<(), Status> {
        if self.replica.is_current() {
            Ok(())
        } else if self.replica.is_ready() {
            Err(Status::unavailable(
                "this replica is out of touch and resyncing",
            ))
        } else {
            Err(Status::unavailable("this replica is still bootstrapping"))
        }
    }
}

/// Checks a Set's entries before anything is applied: one bad entry refuses the request.
fn check(data: &[SyncData]) -> Result<(), Status> {
    for d in data {
        for key in d.data.keys().chain(d.deleted.iter()) {
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                return Err(Status::invalid_argument(format!(
                    "type {}: a key must be 1 to {MAX_KEY_BYTES} bytes",
                    d.r#type
                )));
            }
        }
        for (key, value) in &d.data {
            if value.len() > MAX_VALUE_BYTES {
                return Err(Status::invalid_argument(format!(
                    "type {} key {key:?}: the value is over {MAX_VALUE_BYTES} bytes",
                    d.r#type
                )));
            }
        }
        for (key, version) in &d.versions {
            if Timestamp::from_str(version).is_err() {
                return Err(Status::invalid_argument(format!(
                    "type {} key {key:?}: version {version:?} is not <time>/<replica>",
                    d.r#type
                )));
            }
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Sync for SyncService {
    async fn get(&self, request: Request<SyncRequest>) -> Result<Response<SyncResponse>, Status> {
        self.check_current()?;
        let data = request
            .into_inner()
            .data
            .iter()
            .map(|d| {
                entries_of(
                    &self.replica,
                    d.r#type,
                    Some(d.data.keys().collect()),
                    false,
                )
            })
            .collect();
        Ok(Response::new(SyncResponse { data }))
    }

    async fn set(&self, request: Request<SyncRequest>) -> Result<Response<SyncResponse>, Status> {
        let request = request.into_inner();
        check(&request.data)?;
        let mut written = Vec::new();
        for d in request.data {
            let versioned: HashMap<&String, Timestamp> = d
                .versions
                .iter()
                .filter_map(|(k, v)| Timestamp::from_str(v).ok().map(|t| (k, t)))
                .collect();
            let mut fresh = Vec::new();
            let mut out = SyncData {
                r#type: d.r#type,
                ..Default::default()
            };
            let changes = d
                .data
                .iter()
                .map(|(k, v)| (k, Some(v.clone())))
                .chain(d.deleted.iter().map(|k| (k, None)));
            for (key, value) in changes {
                match versioned.get(key) {
                    Some(version) => {
                        self.replica.merge(d.r#type, key, value.clone(), *version);
                        out.versions.insert(key.clone(), version.to_string());
                        match value {
                            Some(v) => {
                                out.data.insert(key.clone(), v);
                            }
                            None => out.deleted.push(key.clone()),
                        }
                    }
                    None => fresh.push((key.clone(), value)),
                }
            }
            if !fresh.is_empty() {
                let keys: Vec<(String, Option<String>)> = fresh.clone();
                // A client's write is acknowledged once a peer holds it too (when one
                // answers), so it survives this replica's crash right after the answer.
                let (versions, _) = self
                    .replica
                    .write_replicated(d.r#type, fresh, REPLICATION_WAIT)
                    .await;
                for ((key, value), version) in keys.into_iter().zip(versions) {
                    out.versions.insert(key.clone(), version.to_string());
                    match value {
                        Some(v) => {
                            out.data.insert(key, v);
                        }
                        None => out.deleted.push(key),
                    }
                }
            }
            written.push(out);
        }
        Ok(Response::new(SyncResponse { data: written }))
    }

    async fn get_all(
        &self,
        request: Request<SyncRequest>,
    ) -> Result<Response<SyncResponse>, Status> {
        self.check_current()?;
        let request = request.into_inner();
        let types: Vec<i32> = if request.data.is_empty() {
            self.replica.types()
        } else {
            request.data.iter().map(|d| d.r#type).collect()
        };
        let data = types
            .into_iter()
            .map(|ty| entries_of(&self.replica, ty, None, request.include_deleted))
            .collect();
        Ok(Response::new(SyncResponse { data }))
    }

    type SnapshotStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<SyncData, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_current()?;
        let chunk = match request.into_inner().chunk_entries {
            0 => SNAPSHOT_CHUNK,
            n => (n as usize).min(MAX_SNAPSHOT_CHUNK),
        };
        let replica = self.replica.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // Chunk by chunk, so the map is never held while a slow peer reads; writes during
        // the stream reach the newcomer by fan-out, and merging is order-independent.
        tokio::spawn(async move {
            for ty in replica.types() {
                let mut after: Option<String> = None;
                loop {
                    let entries = replica.chunk(ty, after.as_deref(), chunk);
                    let Some((last, _)) = entries.last() else {
                        break;
                    };
                    after = Some(last.clone());
                    let full = entries.len() == chunk;
                    if tx.send(Ok(message_of(ty, entries))).await.is_err() {
                        return;
                    }
                    if !full {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn digest(
        &self,
        _request: Request<DigestRequest>,
    ) -> Result<Response<DigestResponse>, Status> {
        self.check_current()?;
        // The number first: a change between the two is then in the digests and may be
        // pulled again, never skipped.
        let seq = self.replica.seq();
        Ok(Response::new(DigestResponse {
            buckets: self.replica.digests(),
            replica: self.replica.id(),
            seq,
        }))
    }

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<SyncResponse>, Status> {
        self.check_current()?;
        let request = request.into_inner();
        let entries = if request.delta {
            self.replica.changed_after(request.after_seq)
        } else {
            self.bucket_entries(request.buckets)?
        };
        let mut by_type: HashMap<i32, Vec<(String, crate::store::Entry)>> = HashMap::new();
        for (ty, key, entry) in entries {
            by_type.entry(ty).or_default().push((key, entry));
        }
        let data = by_type
            .into_iter()
            .map(|(ty, entries)| message_of(ty, entries))
            .collect();
        Ok(Response::new(SyncResponse { data }))
    }
}

impl SyncService {
    fn bucket_entries(
        &self,
        requested: Vec<u32>,
    ) -> Result<Vec<(i32, String, crate::store::Entry)>, Status> {
        let mut buckets = BTreeSet::new();
        for b in requested {
            let b = b as usize;
            if b >= BUCKETS {
                return Err(Status::invalid_argument(format!(
                    "bucket {b}: there are {BUCKETS} buckets"
                )));
            }
            buckets.insert(b);
        }
        Ok(self.replica.bucket_entries(&buckets))
    }
}
