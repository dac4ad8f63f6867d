//! Applies write requests: rows go to the unflushed buffer and the batch's redo record.
//!
//! Every check that can fail runs before the first change (as etcd's applier does), so a
//! request either applies whole or changes nothing.

use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbDeleteResponse, PbKeyValue, PbPutRequest, PbPutResponse,
    PbRangeRequest, PbRangeResponse, PbResponseHeader, PbResponseOp, PbTargetUnion, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};
use prost::Message;

use super::backend::change_of;
use super::key_index::{KeyRange, TreeIndex};
use super::range::{self, resolve_revision};
use super::revision::Revision;
use super::unflushed::{Row, WriterRows};
use super::watchable::Event;
use crate::error::StoreError;
use crate::lease::Lessor;

/// The state one write request is applied against.
pub struct Applier<'a, 'd> {
    /// Stored values: read from and written to.
    pub rows: &'a WriterRows<'d>,
    /// The shared index; the writer is its only mutator.
    pub index: &'a parking_lot::RwLock<TreeIndex>,
    /// The store revision before this request.
    pub base: i64,
    /// The compact revision, for reads inside a transaction.
    pub compacted: i64,
    /// Changes made so far by this request (the next change's sub revision).
    pub sub: i64,
    /// Keys whose history this request extended (to undo them if the commit fails).
    pub touched: &'a mut Vec<Vec<u8>>,
    /// Events for watchers, in revision order.
    pub events: &'a mut Vec<Event>,
    /// Live leases; keys attach and detach as they are written.
    pub lessor: &'a mut Lessor,
    /// The batch's redo record: every row written is logged here too.
    pub redo: &'a mut crate::wal::Redo,
    /// Whether events carry the previous value of a key a put overwrites (read from the
    /// backend only while a watcher asks for previous values: the index has the rest).
    pub read_prevs: bool,
}

impl Applier<'_, '_> {
    /// The revision reads see: this request's own changes included.
    fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.base + 1
        } else {
            self.base
        }
    }

    /// The revision a response reports.
    pub fn revision(&self) -> i64 {
        self.read_revision()
    }

    fn header(&self) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            revision: self.read_revision(),
            ..Default::default()
        })
    }

    /// Checks a put that depends on existing state, without changing anything.
    fn check_put(&self, req: &PbPutRequest) -> Result<(), StoreError> {
        if (req.ignore_value || req.ignore_lease)
            && self
                .index
                .read()
                .get(&req.key, self.read_revision())
                .is_none()
        {
            return Err(StoreError::KeyNotFound);
        }
        if req.lease != 0 && !self.lessor.contains(req.lease) {
            return Err(StoreError::LeaseNotFound);
        }
        Ok(())
    }

    /// Writes `kv` over a key whose live lease was `prev_lease` (0 for none); `prev` is
    /// the event's previous value.
    fn write(
        &mut self,
        kv: PbKeyValue,
        prev: Option<PbKeyValue>,
        prev_lease: i64,
    ) -> Result<(), StoreError> {
        let rev = Revision::new(kv.mod_revision, self.sub);
        self.sub += 1;
        let row: Row = kv.encode_to_vec().into();
        self.redo.kv_put(&rev.to_bytes(), &row);
        self.rows.insert(rev, row);
        self.index.write().record(&kv.key, change_of(rev, &kv));
        self.touched.push(kv.key.clone());
        if prev_lease != 0 && prev_lease != kv.lease {
            self.lessor.detach(prev_lease, &kv.key);
        }
        if kv.lease != 0 {
            self.lessor.attach(kv.lease, &kv.key);
        }
        self.events.push(Event { kv, prev });
        Ok(())
    }

    /// Applies a Put.
    pub fn put(&mut self, req: &PbPutRequest) -> Result<PbPutResponse, StoreError> {
        self.check_put(req)?;
        self.put_checked(req)
    }

    fn put_checked(&mut self, req: &PbPutRequest) -> Result<PbPutResponse, StoreError> {
        let before = self.index.read().get(&req.key, self.read_revision());
        // The index has the previous generation, version and lease; the stored value is
        // read only when the request or a watcher needs it.
        let prev = match before {
            Some(change) if req.prev_kv || req.ignore_value || self.read_prevs => {
                Some(self.rows.load(change.rev)?)
            }
            _ => None,
        };
        let main = self.base + 1;
        let (create_revision, version) = match &before {
            Some(c) => (c.create_revision, c.version + 1),
            None => (main, 1),
        };
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let prev_lease = match before {
            Some(_) => self.lessor.lease_of(&req.key),
            None => 0,
        };
        let lease = if req.ignore_lease && before.is_some() {
            prev_lease
        } else {
            req.lease
        };
        let kv = PbKeyValue {
            key: req.key.clone(),
            create_revision,
            mod_revision: main,
            version,
            value,
            lease,
        };
        self.write(kv, prev.clone(), prev_lease)?;
        Ok(PbPutResponse {
            header: self.header(),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    /// Applies a DeleteRange.
    pub fn delete(&mut self, req: &PbDeleteRequest) -> Result<PbDeleteResponse, StoreError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut doomed = Vec::new();
        self.index
            .read()
            .visit(&range, self.read_revision(), |_, change| {
                doomed.push(change);
                true
            });
        let mut prev_kvs = Vec::with_capacity(doomed.len());
        let main = self.base + 1;
        for change in &doomed {
            let prev = self.rows.load(change.rev)?;
            let tombstone = PbKeyValue {
                key: prev.key.clone(),
                mod_revision: main,
                ..Default::default()
            };
            self.write(tombstone, Some(prev.clone()), prev.lease)?;
            if req.prev_kv {
                prev_kvs.push(prev);
            }
        }
        Ok(PbDeleteResponse {
            header: self.header(),
            deleted: doomed.len() as i64,
            prev_kvs,
        })
    }

    /// Grants a lease and persists it.
    pub fn grant(&mut self, id: i64, ttl: i64) -> Result<(i64, i64), StoreError> {
        let (id, ttl) = self.lessor.grant(id, ttl, std::time::Instant::now())?;
        self.redo.lease_put(id, ttl);
        Ok((id, ttl))
    }

    /// Revokes a lease: its keys are deleted in one revision and the lease is forgotten.
    pub fn revoke(&mut self, id: i64) -> Result<(), StoreError> {
        let keys = self.lessor.keys(id).ok_or(StoreError::LeaseNotFound)?;
        for key in keys {
            self.delete(&PbDeleteRequest {
                key,
                ..Default::default()
            })?;
        }
        self.lessor.remove(id);
        self.redo.lease_del(id);
        Ok(())
    }

    /// Serves a Range inside a transaction, seeing the transaction's earlier writes.
    pub fn range(&self, req: &PbRangeRequest) -> Result<PbRangeResponse, StoreError> {
        let current = self.read_revision();
        let at = resolve_revision(req.revision, current, self.compacted)?;
        let plan = range::plan(&self.index.read(), req, at);
        range::finish(req, plan, current, |rev| self.rows.load(rev))
    }

    /// Applies a Txn: every compare (nested ones too) is evaluated against the state before
    /// the transaction, as etcd does, then the chosen branches run in order.
    pub fn txn(&mut self, req: &PbTxnRequest) -> Result<PbTxnResponse, StoreError> {
        let mut path = Vec::new();
        self.choose_path(req, &mut path)?;
        self.check_path(req, &path, &mut 0)?;
        self.apply_path(req, &path, &mut 0)
    }

    fn choose_path(&self, req: &PbTxnRequest, path: &mut Vec<bool>) -> Result<(), StoreError> {
        let mut ok = true;
        for cmp in &req.compare {
            if !self.compare(cmp)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in if ok { &req.success } else { &req.failure } {
            if let Some(PbTxnOpRequest::RequestTxn(nested)) = &op.request {
                self.choose_path(nested, path)?;
            }
        }
        Ok(())
    }

    fn check_path(
        &self,
        req: &PbTxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<(), StoreError> {
        let ok = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        for op in if ok { &req.success } else { &req.failure } {
            match &op.request {
                Some(PbTxnOpRequest::RequestPut(p)) => self.check_put(p)?,
                Some(PbTxnOpRequest::RequestTxn(nested)) => self.check_path(nested, path, at)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_path(
        &mut self,
        req: &PbTxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<PbTxnResponse, StoreError> {
        let succeeded = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => {
                    Some(PbTxnOpResponse::ResponseRange(self.range(r)?))
                }
                Some(PbTxnOpRequest::RequestPut(p)) => {
                    Some(PbTxnOpResponse::ResponsePut(self.put_checked(p)?))
                }
                Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                    Some(PbTxnOpResponse::ResponseDeleteRange(self.delete(d)?))
                }
                Some(PbTxnOpRequest::RequestTxn(nested)) => Some(PbTxnOpResponse::ResponseTxn(
                    self.apply_path(nested, path, at)?,
                )),
                None => None,
            };
            responses.push(PbResponseOp { response });
        }
        Ok(PbTxnResponse {
            header: self.header(),
            succeeded,
            responses,
        })
    }

    fn compare(&self, cmp: &PbCompare) -> Result<bool, StoreError> {
        let req = PbRangeRequest {
            key: cmp.key.clone(),
            range_end: cmp.range_end.clone(),
            ..Default::default()
        };
        let kvs = self.range(&req)?.kvs;
        if kvs.is_empty() {
            // A missing key has no value to compare with: etcd fails every VALUE compare.
            return Ok(cmp.target != TARGET_VALUE && compare_kv(cmp, &PbKeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(cmp, kv)))
    }
}

// Compare.CompareTarget and Compare.CompareResult values of etcd's rpc.proto.
const TARGET_VERSION: i32 = 0;
const TARGET_CREATE: i32 = 1;
const TARGET_MOD: i32 = 2;
const TARGET_VALUE: i32 = 3;
const TARGET_LEASE: i32 = 4;
const RESULT_EQUAL: i32 = 0;
const RESULT_GREATER: i32 = 1;
const RESULT_LESS: i32 = 2;
const RESULT_NOT_EQUAL: i32 = 3;

/// etcd's compareKV: a missing operand compares as zero or the empty value.
fn compare_kv(cmp: &PbCompare, kv: &PbKeyValue) -> bool {
    let ordering = match (cmp.target, &cmp.target_union) {
        (TARGET_VALUE, Some(PbTargetUnion::Value(v))) => kv.value.as_slice().cmp(v.as_slice()),
        (TARGET_VALUE, _) => kv.value.as_slice().cmp(&[][..]),
        (TARGET_VERSION, Some(PbTargetUnion::Version(n))) => kv.version.cmp(n),
        (TARGET_CREATE, Some(PbTargetUnion::CreateRevision(n))) => kv.create_revision.cmp(n),
        (TARGET_MOD, Some(PbTargetUnion::ModRevision(n))) => kv.mod_revision.cmp(n),
        (TARGET_LEASE, Some(PbTargetUnion::Lease(n))) => kv.lease.cmp(n),
        (TARGET_VERSION, _) => kv.version.cmp(&0),
        (TARGET_CREATE, _) => kv.create_revision.cmp(&0),
        (TARGET_MOD, _) => kv.mod_revision.cmp(&0),
        (TARGET_LEASE, _) => kv.lease.cmp(&0),
        _ => return false,
    };
    match cmp.result {
        RESULT_EQUAL => ordering.is_eq(),
        RESULT_GREATER => ordering.is_gt(),
        RESULT_LESS => ordering.is_lt(),
        RESULT_NOT_EQUAL => ordering.is_ne(),
        _ => false,
    }
}
