//! Who sent a request, and what each request needs from them once authentication is on:
//! etcd's checks, request by request.

use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbPutRequest, PbRangeRequest, PbTxnOpRequest, PbTxnRequest,
};
use tonic::{Request, Status};

use super::Context;
use crate::auth::{AuthError, Caller, PermType};

/// The common name of a verified client certificate.
fn common_name<T>(request: &Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}

/// The token a request carries (`token`, or etcd 3.5's `authorization` with or without
/// `Bearer `).
fn token<T>(request: &Request<T>) -> Option<String> {
    let metadata = request.metadata();
    let value = metadata
        .get("token")
        .or_else(|| metadata.get("authorization"))?
        .to_str()
        .ok()?;
    let value = value.strip_prefix("Bearer ").unwrap_or(value);
    (!value.is_empty()).then(|| value.to_string())
}

impl Context {
    /// Who sent `request`: by its token, else (with `--client-cert-auth`) by its
    /// certificate's common name.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        Ok(self.try_caller(request)?)
    }

    /// [`Context::caller`], with etcd's error for a bad token.
    pub fn try_caller<T>(&self, request: &Request<T>) -> Result<Caller, AuthError> {
        if !self.auth.is_enabled() {
            return Ok(Caller::Anyone);
        }
        let by_certificate = self.config.tls.as_ref().is_some_and(|t| t.client_cert_auth);
        let name = if by_certificate {
            common_name(request)
        } else {
            None
        };
        self.auth.caller(token(request).as_deref(), name.as_deref())
    }

    /// `caller` may do `wanted` on `key` (or `[key, range_end)`).
    pub fn allow(
        &self,
        caller: &Caller,
        wanted: PermType,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        self.auth.check(caller, wanted, key, range_end)
    }

    /// `caller` is an administrator.
    pub fn allow_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        self.auth.check_admin(caller)
    }

    /// `caller` is someone (authentication off, or a known token or certificate).
    pub fn allow_signed_in(&self, caller: &Caller) -> Result<(), AuthError> {
        match caller {
            Caller::Nobody => Err(AuthError::UserEmpty),
            _ => Ok(()),
        }
    }

    /// A range needs read on what it reads.
    pub fn allow_range(&self, caller: &Caller, req: &PbRangeRequest) -> Result<(), AuthError> {
        self.allow(caller, PermType::Read, &req.key, &req.range_end)
    }

    /// A put needs write on the key, write on every key already on its lease, and read
    /// on the key for its previous value.
    pub fn allow_put(&self, caller: &Caller, req: &PbPutRequest) -> Result<(), AuthError> {
        self.allow(caller, PermType::Write, &req.key, &[])?;
        if req.lease != 0 {
            self.allow_lease_keys(caller, req.lease, PermType::Write)?;
        }
        if req.prev_kv {
            self.allow(caller, PermType::Read, &req.key, &[])?;
        }
        Ok(())
    }

    /// A delete needs write on its range, and read for the previous values.
    pub fn allow_delete(&self, caller: &Caller, req: &PbDeleteRequest) -> Result<(), AuthError> {
        self.allow(caller, PermType::Write, &req.key, &req.range_end)?;
        if req.prev_kv {
            self.allow(caller, PermType::Read, &req.key, &req.range_end)?;
        }
        Ok(())
    }

    /// A transaction needs read on what it compares and what each operation of both
    /// branches needs, whichever runs.
    pub fn allow_txn(&self, caller: &Caller, req: &PbTxnRequest) -> Result<(), AuthError> {
        if self.auth.is_root(caller) {
            return Ok(());
        }
        for PbCompare { key, range_end, .. } in &req.compare {
            self.allow(caller, PermType::Read, key, range_end)?;
        }
        for op in req.success.iter().chain(&req.failure) {
            match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => self.allow_range(caller, r)?,
                Some(PbTxnOpRequest::RequestPut(p)) => self.allow_put(caller, p)?,
                Some(PbTxnOpRequest::RequestDeleteRange(d)) => self.allow_delete(caller, d)?,
                Some(PbTxnOpRequest::RequestTxn(t)) => self.allow_txn(caller, t)?,
                None => {}
            }
        }
        Ok(())
    }

    /// `wanted` on every key attached to `lease` (an administrator needs nothing).
    pub fn allow_lease_keys(
        &self,
        caller: &Caller,
        lease: i64,
        wanted: PermType,
    ) -> Result<(), AuthError> {
        if self.auth.is_root(caller) {
            return Ok(());
        }
        let keys = self
            .store
            .shared()
            .lessor
            .lock()
            .keys(lease)
            .unwrap_or_default();
        for key in keys {
            self.allow(caller, wanted, &key, &[])?;
        }
        Ok(())
    }
}
