//! What a service instance publishes about itself.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// The default key prefix for services.
pub const DEFAULT_PREFIX: &str = "/services";

/// One live instance of a service, as stored (JSON) under `<prefix>/<service>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The service name.
    pub service: String,
    /// This instance's id, unique within the service.
    pub id: String,
    /// Where it serves (`host:port` or a URL).
    pub addr: String,
    /// When it started (RFC 3339, UTC, milliseconds): discovery orders instances by it.
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

    /// Checks that the names make a well-formed key.
    pub fn validate(&self) -> Result<(), RegistryError> {
        for (what, value) in [("service name", &self.service), ("instance id", &self.id)] {
            if value.is_empty() || value.contains('/') {
                return Err(RegistryError::Invalid {
                    what,
                    reason: format!("{value:?} must be non-empty and contain no '/'"),
                });
            }
        }
        if self.addr.is_empty() {
            return Err(RegistryError::Invalid {
                what: "address",
                reason: "must not be empty".into(),
            });
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
