//! The store's typed errors, carrying etcd's exact messages.

use std::path::PathBuf;

/// Everything a store operation can fail with.
///
/// The variants that mirror etcd errors display etcd's exact message, so that clients that
/// match on message text (etcdctl, clientv3's `rpctypes`) behave as they do against etcd.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A request named no key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A transaction branch or compare list is longer than `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Two writes of one transaction touch the same key.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The requested revision is below the compact revision.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is above the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// The backend quota is used up (the NOSPACE alarm is raised).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A request named a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested id already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A lease TTL above the maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A request larger than `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// Watch ids must be unique on a stream.
    #[error("etcdserver: duplicate watch ID provided on the WatchClient")]
    DuplicateWatchId,
    /// Member add/remove/update/promote on a single-node store.
    #[error("etcdserver: ferry store is a single-member store and does not change membership; use a real etcd cluster for more members")]
    MembershipUnsupported,
    /// A listen or advertise URL that cannot be used.
    #[error("invalid client URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data dir is opened by another process.
    #[error("data dir {0} is already in use by another ferry store process")]
    DataDirLocked(PathBuf),
    /// A restore target already holds data.
    #[error("data dir {0} already holds a store; restore needs an empty or new data dir")]
    DataDirNotEmpty(PathBuf),
    /// A snapshot file is unreadable, truncated or fails its checksum.
    #[error("snapshot {path}: {reason}")]
    BadSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Stored data could not be decoded.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The storage engine failed.
    #[error("storage engine: {0}")]
    Backend(String),
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A commit failed earlier; the store refuses writes until it is restarted.
    #[error("etcdserver: the store refuses writes after a storage failure ({0}); restart it")]
    Poisoned(String),
    /// The store is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
}

impl StoreError {
    /// The gRPC status code etcd uses for this error.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::EmptyKey
            | Self::KeyNotFound
            | Self::ValueProvided
            | Self::LeaseProvided
            | Self::TooManyOps
            | Self::DuplicateKey
            | Self::RequestTooLarge => Code::InvalidArgument,
            Self::Compacted | Self::FutureRev | Self::LeaseTtlTooLarge => Code::OutOfRange,
            Self::NoSpace => Code::ResourceExhausted,
            Self::LeaseNotFound => Code::NotFound,
            Self::LeaseExists | Self::DuplicateWatchId => Code::FailedPrecondition,
            Self::MembershipUnsupported => Code::FailedPrecondition,
            Self::Stopped => Code::Unavailable,
            _ => Code::Internal,
        }
    }

    pub(crate) fn backend(err: impl std::fmt::Display) -> Self {
        Self::Backend(err.to_string())
    }
}

impl From<StoreError> for tonic::Status {
    fn from(err: StoreError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}
