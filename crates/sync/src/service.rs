//! The gRPC service: the original `hellorpc.Sync` (Get, Set, GetAll) over a [`Replica`].
//! A Set without versions is a client's write: stamped here and fanned out. A Set with
//! versions is a peer's fan-out (or a ferry-aware client): merged, never sent on again, so
//! writes do not circle between replicas.

use std::collections::HashMap;
use std::str::FromStr;

use tonic::{Request, Response, Status};
use uhlc::Timestamp;

use crate::proto::sync_server::Sync;
use crate::proto::{SyncData, SyncRequest, SyncResponse};
use crate::replica::Replica;

/// The longest key and value accepted.
pub const MAX_KEY_BYTES: usize = 4096;
/// The largest value accepted.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

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
        crate::proto::sync_server::SyncServer::new(self)
    }

    /// Serves on `listener` until the connection is dropped or the task aborted.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), tonic::transport::Error> {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
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
    let mut out = SyncData {
        r#type: ty,
        ..Default::default()
    };
    let all = replica.entries(ty);
    for (key, entry) in all {
        if keys.as_ref().is_some_and(|k| !k.contains(&&key)) {
            continue;
        }
        match entry.value {
            Some(value) => {
                out.versions.insert(key.clone(), entry.version.to_string());
                out.data.insert(key, value);
            }
            None if include_deleted => {
                out.versions.insert(key.clone(), entry.version.to_string());
                out.deleted.push(key);
            }
            None => {}
        }
    }
    out
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
                let versions = self.replica.write(d.r#type, fresh);
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
}
