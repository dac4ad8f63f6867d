//! etcd's Maintenance service: status, alarms, hashes, defragmentation and snapshots.

use std::pin::Pin;
use std::sync::atomic::Ordering;

use etcd_client::proto::{
    PbAlarmMember, PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse,
    PbDowngradeRequest, PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest,
    PbHashResponse, PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse,
    PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use redb::ReadableTable;
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

use super::{Context, SERVER_VERSION};
use crate::mvcc::backend::{KV, LEASE, META};
use crate::mvcc::kvstore::WriteRequest;
use crate::mvcc::range::resolve_revision;
use crate::mvcc::revision::Revision;
use crate::StoreError;

// AlarmRequest.AlarmAction and AlarmType values of etcd's rpc.proto.
const ACTION_GET: i32 = 0;
const ACTION_ACTIVATE: i32 = 1;
const ACTION_DEACTIVATE: i32 = 2;
const ALARM_NONE: i32 = 0;
const ALARM_NOSPACE: i32 = 1;

const SNAPSHOT_CHUNK: usize = 64 * 1024;

pub(crate) struct MaintenanceService {
    ctx: Context,
}

impl MaintenanceService {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    fn member_id(&self) -> u64 {
        self.ctx.store.shared().member_id
    }

    /// CRC-32 of the stored history up to `upto` (everything when `None`), as of the last
    /// flush.
    fn hash(&self, upto: Option<i64>) -> Result<u32, StoreError> {
        let txn = self.ctx.store.begin_read_durable()?;
        let mut crc = crc32fast::Hasher::new();
        let kv = txn.open_table(KV).map_err(StoreError::backend)?;
        for row in kv.iter().map_err(StoreError::backend)? {
            let (k, v) = row.map_err(StoreError::backend)?;
            let rev = Revision::from_bytes(k.value())
                .ok_or_else(|| StoreError::Corrupt("kv table key is not a revision".into()))?;
            if upto.is_some_and(|u| rev.main > u) {
                break;
            }
            crc.update(k.value());
            crc.update(v.value());
        }
        if upto.is_none() {
            let meta = txn.open_table(META).map_err(StoreError::backend)?;
            for row in meta.iter().map_err(StoreError::backend)? {
                let (k, v) = row.map_err(StoreError::backend)?;
                crc.update(k.value().as_bytes());
                crc.update(&v.value().to_be_bytes());
            }
            let lease = txn.open_table(LEASE).map_err(StoreError::backend)?;
            for row in lease.iter().map_err(StoreError::backend)? {
                let (k, v) = row.map_err(StoreError::backend)?;
                crc.update(&k.value().to_be_bytes());
                crc.update(&v.value().to_be_bytes());
            }
        }
        Ok(crc.finalize())
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        // Listing alarms needs a user; raising or clearing one needs an administrator.
        if request.get_ref().action == 0 {
            self.ctx.allow_signed_in(&caller)?;
        } else {
            self.ctx.allow_admin(&caller)?;
        }
        let req = request.into_inner();
        let raised = || self.ctx.store.shared().nospace_members.lock().clone();
        let as_alarms = |members: Vec<u64>| -> Vec<PbAlarmMember> {
            members
                .into_iter()
                .map(|member_id| PbAlarmMember {
                    member_id,
                    alarm: ALARM_NOSPACE,
                })
                .collect()
        };
        let alarms = match req.action {
            ACTION_GET => {
                let wanted = req.alarm == ALARM_NONE || req.alarm == ALARM_NOSPACE;
                if wanted {
                    as_alarms(raised())
                } else {
                    vec![]
                }
            }
            // As etcd: an alarm for any member id is recorded (0 means every member), and
            // the answer names the alarm that changed.
            ACTION_ACTIVATE | ACTION_DEACTIVATE if req.alarm == ALARM_NOSPACE => {
                let on = req.action == ACTION_ACTIVATE;
                let was = raised().contains(&req.member_id);
                self.ctx
                    .store
                    .write(WriteRequest::SetNoSpace {
                        member: req.member_id,
                        on,
                    })
                    .await?;
                if was != on {
                    as_alarms(vec![req.member_id])
                } else {
                    vec![]
                }
            }
            ACTION_ACTIVATE | ACTION_DEACTIVATE => vec![],
            other => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: unknown alarm action {other}"
                )))
            }
        };
        Ok(Response::new(PbAlarmResponse {
            header: self.ctx.header(self.ctx.store.current_revision()),
            alarms,
        }))
    }

    async fn status(
        &self,
        _request: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let shared = self.ctx.store.shared();
        let applied = shared.applied_index.load(Ordering::Acquire).max(0) as u64;
        let size = self.ctx.store.db_size() as i64;
        let errors = shared
            .nospace_members
            .lock()
            .iter()
            .map(|member| format!("memberID:{member} alarm:NOSPACE "))
            .collect();
        Ok(Response::new(PbStatusResponse {
            header: self.ctx.header(self.ctx.store.current_revision()),
            version: SERVER_VERSION.into(),
            db_size: size,
            leader: self.member_id(),
            raft_index: applied,
            raft_term: super::RAFT_TERM,
            raft_applied_index: applied,
            errors,
            db_size_in_use: size,
            is_learner: false,
            storage_version: "3.5.0".into(),
            db_size_quota: self.ctx.config.quota_backend_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        self.ctx.store.write(WriteRequest::Defragment).await?;
        // etcd's Defragment answers with no header.
        Ok(Response::new(PbDefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        self.ctx.store.flush().await?;
        let revision = self.ctx.store.current_revision();
        let hash = self.hash(None)?;
        Ok(Response::new(PbHashResponse {
            header: self.ctx.header(revision),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        let req = request.into_inner();
        let current = self.ctx.store.current_revision();
        let compacted = self.ctx.store.compact_revision();
        let at = resolve_revision(req.revision, current, compacted)?;
        self.ctx.store.flush().await?;
        let hash = self.hash(Some(at))?;
        Ok(Response::new(PbHashKvResponse {
            header: self.ctx.header(current),
            hash,
            compact_revision: compacted,
            hash_revision: at,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        // Written to a file first so that the stream can report exact remaining_bytes, as
        // etcd does, and the read transaction is not held while a slow client downloads.
        let dir = self.ctx.config.data_dir.clone();
        let store = self.ctx.store.clone();
        // The snapshot reads redb alone: every batch acknowledged so far goes there first.
        store.flush().await?;
        let file = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let io = |what: &str| {
                let what = what.to_string();
                move |source| StoreError::Io { what, source }
            };
            let mut file = tempfile::tempfile_in(&dir).map_err(io("creating snapshot file"))?;
            let size = {
                let txn = store.begin_read_durable()?;
                let mut writer = std::io::BufWriter::new(&mut file);
                crate::snapshot::write(&txn, &dir, &mut writer)?
            };
            Ok((file, size))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let (file, size) = file;
        let header = self.ctx.header(self.ctx.store.current_revision());
        let mut file = tokio::fs::File::from_std(file);
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| Status::internal(format!("snapshot: {e}")))?;
        let stream = async_stream(file, size, header);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        if request.into_inner().target_id != self.member_id() {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        // Moving leadership to the leader itself: etcd returns at once, with no header.
        Ok(Response::new(PbMoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        let caller = self.ctx.caller(&request)?;
        self.ctx.allow_admin(&caller)?;
        Err(Status::unimplemented(
            "etcdserver: ferry store does not support cluster downgrades",
        ))
    }
}

fn async_stream(
    file: tokio::fs::File,
    size: u64,
    header: Option<etcd_client::proto::PbResponseHeader>,
) -> impl Stream<Item = Result<PbSnapshotResponse, Status>> + Send {
    futures::stream::unfold(
        (file, size, header),
        |(mut file, remaining, header)| async move {
            if remaining == 0 {
                return None;
            }
            let mut blob = vec![0u8; SNAPSHOT_CHUNK.min(remaining as usize)];
            let item = match file.read_exact(&mut blob).await {
                Ok(_) => {
                    let left = remaining - blob.len() as u64;
                    Ok((
                        PbSnapshotResponse {
                            header,
                            remaining_bytes: left,
                            blob,
                            version: SERVER_VERSION.into(),
                        },
                        left,
                    ))
                }
                Err(e) => Err(Status::internal(format!("snapshot: {e}"))),
            };
            match item {
                Ok((resp, left)) => Some((Ok(resp), (file, left, header))),
                Err(status) => Some((Err(status), (file, 0, header))),
            }
        },
    )
}
