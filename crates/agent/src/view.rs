//! The environment's configurations as the agent may render them: never older than the wave
//! targets it has seen deleted.
//!
//! Configurations and the agent's wave targets arrive on two watch streams, which the client
//! may serve from different members, so one can lag the other by seconds (a paused member,
//! a stream resumed elsewhere). A rollout in waves completes in one transaction that sets the
//! environment's version and deletes the targets: an agent that has seen the deletion but
//! not yet the new version would install the version from before the rollout, report it,
//! and only later move forward again. So once a deletion of a target is seen at revision
//! `R`, the configurations cache is trusted only when it has seen `R`; until then they are
//! read from the store, and a read that fails leaves the installed configuration alone.

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use ferry_runtime::{Cache, Object};

/// Why the configurations at the wanted revision are not known.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The store refused or failed the read.
    #[error("reading the configurations under {prefix}: {source}")]
    Read {
        /// The prefix read.
        prefix: String,
        /// The store's error.
        source: etcd_client::Error,
    },
    /// The store did not answer in time (a paused or partitioned member).
    #[error("reading the configurations under {prefix}: no answer within {timeout:?}")]
    TimedOut {
        /// The prefix read.
        prefix: String,
        /// How long the read waited.
        timeout: Duration,
    },
}

/// The configurations under `prefix` as of revision `at_least` or later, and the revision
/// they reflect: `cache`'s own when it has seen `at_least`, otherwise a linearizable read of
/// the store that gives up after `timeout`. Values that do not decode as `T` are left out, as
/// the informer leaves them out of its cache.
pub async fn configurations_at<T: serde::de::DeserializeOwned>(
    client: &Client,
    prefix: &str,
    cache: &Cache<T>,
    at_least: i64,
    timeout: Duration,
) -> Result<(Vec<Object<T>>, i64), ViewError> {
    let cached = cache.revision();
    if cached >= at_least {
        return Ok((cache.list(), cached));
    }
    let mut client = client.clone();
    let read = client.get(prefix, Some(GetOptions::new().with_prefix()));
    let response = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ViewError::TimedOut {
            prefix: prefix.to_string(),
            timeout,
        })?
        .map_err(|source| ViewError::Read {
            prefix: prefix.to_string(),
            source,
        })?;
    let revision = response.header().map_or(at_least, |h| h.revision());
    let objects = response
        .kvs()
        .iter()
        .filter_map(|kv| Object::from_kv(kv).ok())
        .collect();
    Ok((objects, revision))
}
