//! What etcd's Lock and Election services share: a queue of keys under `<name>/`, one per
//! lease, ordered by create revision. The oldest key holds the lock (leads); every other
//! waits for the deletion of the key created just before its own, so one release wakes one
//! waiter. Built, as in etcd, from the store's own transactions, ranges and change feed.

use etcd_client::proto::{
    PbCompare, PbCompareTarget, PbKeyValue, PbPutRequest, PbRangeRequest, PbResponseHeader,
    PbTargetUnion, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp,
};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use super::Context;
use crate::auth::{Caller, PermType};
use crate::mvcc::kvstore::{WriteRequest, WriteResponse};
use crate::StoreError;

/// The TTL of the lease etcd grants when a Lock or Campaign names lease 0 (never kept alive).
const SESSION_TTL: i64 = 60;
/// etcd's `RangeRequest.SortOrder` and `SortTarget` values.
const SORT_ASCEND: i32 = 1;
const SORT_DESCEND: i32 = 2;
const TARGET_CREATE: i32 = 2;
/// `Compare.result` EQUAL and `Compare.target` CREATE.
const COMPARE_EQUAL: i32 = 0;

/// etcd passes errors of these services through as gRPC UNKNOWN with etcd's message.
pub(crate) fn unknown(message: impl std::fmt::Display) -> Status {
    Status::unknown(message.to_string())
}

fn from_store(err: StoreError) -> Status {
    unknown(err)
}

/// The key a lease holds in the queue `name`: `<name>/<lease id in lowercase hex>`.
pub(crate) fn key_of(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// The queue's prefix: `<name>/`.
pub(crate) fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// The end of the range of keys starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The lease a request names, or (for 0) a new one of 60 s that nobody keeps alive, as etcd.
pub(crate) async fn session_lease(
    ctx: &Context,
    caller: &Caller,
    lease: i64,
) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    ctx.allow_signed_in(caller)?;
    match ctx
        .store
        .write(WriteRequest::LeaseGrant {
            id: 0,
            ttl: SESSION_TTL,
        })
        .await
        .map_err(from_store)?
    {
        WriteResponse::LeaseGranted { id, .. } => Ok(id),
        _ => Err(Status::internal(
            "the store answered a grant with something else",
        )),
    }
}

/// A transaction through the store, its failures as etcd's services report them.
pub(crate) async fn txn(
    ctx: &Context,
    req: PbTxnRequest,
) -> Result<etcd_client::proto::PbTxnResponse, Status> {
    match ctx
        .store
        .write(WriteRequest::Txn(req))
        .await
        .map_err(from_store)?
    {
        WriteResponse::Txn(mut resp) => {
            ctx.fill(&mut resp.header);
            Ok(resp)
        }
        _ => Err(Status::internal(
            "the store answered a txn with something else",
        )),
    }
}

/// A range through the store.
pub(crate) fn range(
    ctx: &Context,
    req: &PbRangeRequest,
) -> Result<etcd_client::proto::PbRangeResponse, Status> {
    let mut resp = ctx.store.range(req).map_err(from_store)?;
    ctx.fill(&mut resp.header);
    Ok(resp)
}

/// Compares `key`'s create revision with `rev` (0: the key does not exist).
pub(crate) fn created_at(key: &[u8], rev: i64) -> PbCompare {
    PbCompare {
        result: COMPARE_EQUAL,
        target: PbCompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(PbTargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// A put as a transaction operation.
pub(crate) fn put_op(key: &[u8], value: &[u8], lease: i64) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn range_op(req: PbRangeRequest) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestRange(req)),
    }
}

/// Reads the oldest key (by create revision) under `prefix`: the holder of the queue.
pub(crate) fn oldest_request(prefix: &[u8]) -> PbRangeRequest {
    PbRangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SORT_ASCEND,
        sort_target: TARGET_CREATE,
        ..Default::default()
    }
}

/// A place in a queue: the key, its create revision, and whether the request made it.
pub(crate) struct Place {
    /// The key.
    pub key: Vec<u8>,
    /// Its create revision (its place in the queue).
    pub rev: i64,
    /// The key as it was when it already existed (None: the request created it).
    pub existing: Option<PbKeyValue>,
    /// The oldest key under the prefix when the place was taken.
    pub holder: Option<PbKeyValue>,
    /// The transaction's header.
    pub header: Option<PbResponseHeader>,
}

/// What a place in the queue `name` needs from the caller, as etcd's in-process client
/// would: read on the queue's keys, write on the caller's own.
pub(crate) fn allow_place(
    ctx: &Context,
    caller: &Caller,
    name: &[u8],
    lease: i64,
) -> Result<(), Status> {
    let prefix = prefix_of(name);
    ctx.allow(caller, PermType::Read, &prefix, &prefix_end(&prefix))?;
    ctx.allow(caller, PermType::Write, &key_of(name, lease), &[])?;
    Ok(())
}

/// Takes (or finds) the place of `lease` in the queue `name`: puts `<name>/<lease>` with
/// `value` unless it exists, and reads the queue's holder in the same transaction.
pub(crate) async fn take_place(
    ctx: &Context,
    name: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<Place, Status> {
    let key = key_of(name, lease);
    let prefix = prefix_of(name);
    let own = PbRangeRequest {
        key: key.clone(),
        ..Default::default()
    };
    let resp = txn(
        ctx,
        PbTxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![
                put_op(&key, value, lease),
                range_op(oldest_request(&prefix)),
            ],
            failure: vec![range_op(own), range_op(oldest_request(&prefix))],
        },
    )
    .await?;
    let ranges: Vec<&etcd_client::proto::PbRangeResponse> = resp
        .responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(etcd_client::proto::PbTxnOpResponse::ResponseRange(range)) => Some(range),
            _ => None,
        })
        .collect();
    let holder = ranges.last().and_then(|r| r.kvs.first().cloned());
    let header = resp.header;
    if resp.succeeded {
        let rev = header.as_ref().map_or(0, |h| h.revision);
        Ok(Place {
            key,
            rev,
            existing: None,
            holder,
            header,
        })
    } else {
        let existing = ranges.first().and_then(|r| r.kvs.first().cloned());
        let rev = existing.as_ref().map_or(0, |kv| kv.create_revision);
        Ok(Place {
            key,
            rev,
            existing,
            holder,
            header,
        })
    }
}

/// Waits until no key under `prefix` was created before `rev`: each round waits for the
/// deletion of the newest such key (the place just ahead), then looks again.
pub(crate) async fn wait_for_predecessors(
    ctx: &Context,
    prefix: &[u8],
    rev: i64,
) -> Result<(), Status> {
    loop {
        // Subscribed before reading, so no deletion falls between the read and the wait.
        let mut feed = ctx.store.subscribe();
        let ahead = range(
            ctx,
            &PbRangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: SORT_DESCEND,
                sort_target: TARGET_CREATE,
                max_create_revision: rev - 1,
                ..Default::default()
            },
        )?;
        let Some(ahead) = ahead.kvs.into_iter().next() else {
            return Ok(());
        };
        'deleted: loop {
            match feed.recv().await {
                Ok(batch) => {
                    if batch.iter().any(|e| e.is_delete() && e.kv.key == ahead.key) {
                        break 'deleted;
                    }
                }
                // Behind the feed: look again from the store.
                Err(RecvError::Lagged(_)) => break 'deleted,
                Err(RecvError::Closed) => return Err(unknown("lost watcher waiting for delete")),
            }
        }
    }
}

/// Deletes `key` if it still has create revision `rev`, in the background (the request that
/// owned it may be gone).
pub(crate) fn withdraw(ctx: &Context, key: Vec<u8>, rev: Option<i64>) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let delete = PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestDeleteRange(
                etcd_client::proto::PbDeleteRequest {
                    key: key.clone(),
                    ..Default::default()
                },
            )),
        };
        let compare = rev.map(|rev| created_at(&key, rev)).into_iter().collect();
        if let Err(e) = txn(
            &ctx,
            PbTxnRequest {
                compare,
                success: vec![delete],
                failure: Vec::new(),
            },
        )
        .await
        {
            tracing::warn!(error = %e, "withdrawing an abandoned lock or election key");
        }
    });
}

/// Withdraws a waiting key when the request that owns it ends before it is done (a client
/// that cancels its Lock or Campaign), unless disarmed.
pub(crate) struct WithdrawOnDrop {
    ctx: Context,
    key: Vec<u8>,
    rev: Option<i64>,
    armed: bool,
}

impl WithdrawOnDrop {
    pub(crate) fn new(ctx: &Context, key: &[u8], rev: Option<i64>) -> Self {
        Self {
            ctx: ctx.clone(),
            key: key.to_vec(),
            rev,
            armed: true,
        }
    }

    /// The wait finished: the key stays.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        if self.armed {
            withdraw(&self.ctx, std::mem::take(&mut self.key), self.rev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes_are_etcds() {
        assert_eq!(
            key_of(b"jobs", 0x694d_7a3c_12ab),
            b"jobs/694d7a3c12ab".to_vec()
        );
        assert_eq!(prefix_end(b"jobs/"), b"jobs0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
