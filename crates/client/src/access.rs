//! A start-up check that a component's user may read what it follows: with authentication
//! on, a refusal then stops the component with the reason instead of leaving its informers
//! retrying forever. Any other failure (an unreachable store) is left to the caller's
//! retries.

use etcd_client::{Client, GetOptions};

/// The store refuses the user a prefix it must read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the store refuses reading {what} ({prefix}): {reason}")]
pub struct AccessDenied {
    /// What the component reads there.
    pub what: String,
    /// The key prefix.
    pub prefix: String,
    /// The store's message.
    pub reason: String,
}

/// Reads each `(what, prefix)` once (count only).
pub async fn check_read_access(
    client: &Client,
    prefixes: &[(&str, String)],
) -> Result<(), AccessDenied> {
    for (what, prefix) in prefixes {
        let probe = client
            .clone()
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await;
        if let Err(etcd_client::Error::GRpcStatus(status)) = &probe {
            let refused = matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ) || status.message().contains("user name is empty");
            if refused {
                return Err(AccessDenied {
                    what: what.to_string(),
                    prefix: prefix.clone(),
                    reason: status.message().to_string(),
                });
            }
        }
    }
    Ok(())
}
