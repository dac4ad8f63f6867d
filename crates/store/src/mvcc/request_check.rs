//! Validation that etcd performs before a request reaches the store: empty keys, flag
//! conflicts, transaction size and overlapping writes inside one transaction.

use std::collections::HashSet;

use etcd_client::proto::{
    PbDeleteRequest, PbPutRequest, PbRangeRequest, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp,
};

use super::key_index::KeyRange;
use crate::error::StoreError;

/// Checks a Range request.
pub fn check_range(req: &PbRangeRequest) -> Result<(), StoreError> {
    if req.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

/// Checks a Put request.
pub fn check_put(req: &PbPutRequest) -> Result<(), StoreError> {
    if req.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(StoreError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(StoreError::LeaseProvided);
    }
    Ok(())
}

/// Checks a DeleteRange request.
pub fn check_delete(req: &PbDeleteRequest) -> Result<(), StoreError> {
    if req.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

/// Checks a Txn request, its nested transactions and the keys its writes touch.
pub fn check_txn(req: &PbTxnRequest, max_txn_ops: usize) -> Result<(), StoreError> {
    check_txn_shape(req, max_txn_ops)?;
    let mut writes = BranchWrites::default();
    writes.collect(&req.success)?;
    let mut other = BranchWrites::default();
    other.collect(&req.failure)?;
    Ok(())
}

fn check_txn_shape(req: &PbTxnRequest, max_txn_ops: usize) -> Result<(), StoreError> {
    if req.compare.len() > max_txn_ops
        || req.success.len() > max_txn_ops
        || req.failure.len() > max_txn_ops
    {
        return Err(StoreError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(StoreError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => check_range(r)?,
            Some(PbTxnOpRequest::RequestPut(r)) => check_put(r)?,
            Some(PbTxnOpRequest::RequestDeleteRange(r)) => check_delete(r)?,
            Some(PbTxnOpRequest::RequestTxn(t)) => check_txn_shape(t, max_txn_ops)?,
            None => {}
        }
    }
    Ok(())
}

/// The keys one branch puts and the ranges it deletes, nested transactions included.
#[derive(Default)]
struct BranchWrites {
    puts: HashSet<Vec<u8>>,
    deletes: Vec<KeyRange>,
}

impl BranchWrites {
    fn deleted(&self, key: &[u8]) -> bool {
        self.deletes.iter().any(|r| r.contains(key))
    }

    /// etcd's rule: a key may be put once per branch and never inside a range the same branch
    /// deletes; the two branches of a nested transaction exclude each other, so they may put
    /// the same key.
    fn collect(&mut self, ops: &[PbTxnRequestOp]) -> Result<(), StoreError> {
        for op in ops {
            if let Some(PbTxnOpRequest::RequestDeleteRange(d)) = &op.request {
                self.deletes.push(KeyRange::new(&d.key, &d.range_end));
            }
        }
        for op in ops {
            let Some(PbTxnOpRequest::RequestTxn(txn)) = &op.request else {
                continue;
            };
            let mut then = BranchWrites::default();
            then.collect(&txn.success)?;
            let mut otherwise = BranchWrites::default();
            otherwise.collect(&txn.failure)?;
            for key in &then.puts {
                if self.puts.contains(key) || self.deleted(key) {
                    return Err(StoreError::DuplicateKey);
                }
            }
            for key in &otherwise.puts {
                if (self.puts.contains(key) && !then.puts.contains(key)) || self.deleted(key) {
                    return Err(StoreError::DuplicateKey);
                }
            }
            self.puts.extend(then.puts);
            self.puts.extend(otherwise.puts);
            self.deletes.extend(then.deletes);
            self.deletes.extend(otherwise.deletes);
        }
        for op in ops {
            if let Some(PbTxnOpRequest::RequestPut(p)) = &op.request {
                if self.puts.contains(&p.key) || self.deleted(&p.key) {
                    return Err(StoreError::DuplicateKey);
                }
                self.puts.insert(p.key.clone());
            }
        }
        Ok(())
    }
}

/// Whether a transaction (in every branch it could take) only reads.
pub fn is_read_only(req: &PbTxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(PbTxnOpRequest::RequestRange(_)) | None => true,
            Some(PbTxnOpRequest::RequestTxn(t)) => is_read_only(t),
            _ => false,
        })
}
