//! Service registration and discovery on the etcd v3 API.
//!
//! An instance is a key `<prefix>/<service>/<id>` holding [`Instance`] as JSON, attached to
//! one lease that [`announce`] keeps alive: a heartbeat costs no write and wakes no watcher.
//! A graceful [`Announcement::stop`] revokes the lease so the instance disappears at once; a
//! crash lets the lease expire. [`Discovery`] lists and watches a prefix and keeps the live
//! set, oldest instance first.
//!
//! ```no_run
//! # async fn demo(client: etcd_client::Client) -> Result<(), ferry_registry::RegistryError> {
//! use ferry_registry::{announce, AnnounceConfig, Discovery, Instance};
//! let me = Instance::new("web", "web-1", "127.0.0.1:8080");
//! let announcement = announce(client.clone(), AnnounceConfig::default(), me).await?;
//! let mut discovery = Discovery::start(client, "/services", Some("web")).await?;
//! println!("{:?}", discovery.instances());
//! announcement.stop().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod announce;
mod discovery;
mod instance;

pub use announce::{announce, AnnounceConfig, AnnounceState, Announcement};
pub use discovery::{Change, Discovery, DiscoveryConfig};
pub use instance::{valid_name, Instance, DEFAULT_PREFIX};

/// What registry operations fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store refused or could not answer a request.
    #[error("{action}: {source}")]
    Store {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: etcd_client::Error,
    },
    /// An argument was unusable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The background task ended unexpectedly.
    #[error("registry task stopped: {0}")]
    Stopped(String),
}

impl RegistryError {
    fn store(action: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> Self {
        let action = action.into();
        move |source| Self::Store { action, source }
    }
}
