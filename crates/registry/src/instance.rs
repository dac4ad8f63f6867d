//! What a service instance publishes about itself.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// A service name or an instance id: what is safe in a key segment, a file name, a log line
/// and an nginx upstream name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The default key prefix for services.
pub const DEFAULT_PREFIX: &str = "/services";

/// One live instance of a service, as stored (JSON) under `<prefix>/<service>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    /// The service name.
    pub service: String,
    /// This instance's id, unique within the service.
    pub id: String,
    /// Where it serves: `host:port` (an IP address, `[v6]` or a DNS name).
    pub addr: String,
    /// When it started (RFC 3339, UTC, milliseconds): discovery orders instances by it.
    #[schema(format = DateTime)]
    pub start_time: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Instance {
    /// An instance that started now.
    pub fn new(service: impl Into<String>, id: impl Into<String>, addr: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            id: id.into(),
            addr: addr.into(),
            start_time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            version: String::new(),
            labels: BTreeMap::new(),
        }
    }

    /// The key this instance lives under.
    pub fn key(&self, prefix: &str) -> String {
        format!(
            "{}/{}/{}",
            prefix.trim_end_matches('/'),
            self.service,
            self.id
        )
    }

    /// Checks every field, since an instance's fields end up in other components' keys,
    /// logs and rendered configuration files: the names make a well-formed key, the address
    /// is `host:port` (an IP address or DNS name, a port from 1 to 65535), the version and
    /// labels hold no control characters.
    pub fn validate(&self) -> Result<(), RegistryError> {
        for (what, value) in [("service name", &self.service), ("instance id", &self.id)] {
            if !valid_name(value) {
                return Err(RegistryError::Invalid {
                    what,
                    reason: format!("{value:?} must be 1 to 253 letters, digits, '-', '_' or '.'"),
                });
            }
        }
        ferry_client::HostPort::parse(&self.addr).map_err(|e| RegistryError::Invalid {
            what: "address",
            reason: format!("{:?} is not host:port: {e}", self.addr),
        })?;
        if self.version.len() > 128
            || !self
                .version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_' | '~'))
        {
            return Err(RegistryError::Invalid {
                what: "version",
                reason: format!(
                    "{:?} must be at most 128 letters, digits, '.', '-', '+', '_' or '~'",
                    self.version
                ),
            });
        }
        for (key, value) in &self.labels {
            if key.is_empty()
                || key.len() > 63
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            {
                return Err(RegistryError::Invalid {
                    what: "label",
                    reason: format!(
                        "key {key:?} must be 1 to 63 letters, digits, '-', '_', '.' or '/'"
                    ),
                });
            }
            if value.len() > 256 || value.chars().any(char::is_control) {
                return Err(RegistryError::Invalid {
                    what: "label",
                    reason: format!(
                        "value of {key:?} must be at most 256 characters without control characters"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Sort key: oldest first, then by service and id so the order is total.
    pub(crate) fn order(&self) -> (std::time::SystemTime, &str, &str) {
        let started =
            humantime::parse_rfc3339_weak(&self.start_time).unwrap_or(std::time::UNIX_EPOCH);
        (started, &self.service, &self.id)
    }
}
