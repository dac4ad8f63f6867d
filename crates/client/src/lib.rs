//! How every ferry component connects to "an etcd": the embedded `ferry store` or a real
//! etcd cluster, with the same settings.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_client::ConnectError> {
//! let config = ferry_client::ConnectConfig::new(["127.0.0.1:2379"]);
//! let mut client = ferry_client::connect(&config).await?;
//! client.put("hello", "world", None).await.ok();
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod access;
#[cfg(feature = "clap")]
pub mod args;
pub mod batching;
mod channel;
pub mod duration;
mod endpoint;
pub mod health;
mod insecure;
mod plain_channel;
mod ports;
mod retry;
pub mod tls;

#[cfg(feature = "clap")]
pub use args::ConnectionArgs;
pub use channel::grpc_channel;
pub use endpoint::{is_dns_name, parse_endpoint, AddrError, Endpoint, HostPort};
pub use ports::free_loopback_ports;

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// TLS settings of a client (PEM files, as etcdctl's `--cacert`, `--cert`, `--key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle that signed the server certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Key of the client certificate.
    pub key: Option<PathBuf>,
    /// Encrypt but do not verify the server's certificate (etcdctl's
    /// `--insecure-skip-tls-verify`). Only the first endpoint is used.
    pub insecure_skip_verify: bool,
}

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectConfig {
    /// `host:port` or `http(s)://host:port` endpoints.
    pub endpoints: Vec<String>,
    /// TLS, when the endpoints are `https://` or TLS files are given.
    pub tls: Option<TlsFiles>,
    /// User name and password for etcd authentication.
    pub credentials: Option<(String, String)>,
    /// How long establishing a connection may take.
    pub dial_timeout: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How often to replace the endpoints with the cluster's members' client URLs
    /// (etcd's `AutoSyncInterval`); `None`, the default, keeps the endpoints given.
    pub auto_sync_interval: Option<Duration>,
    /// After this long without hearing from a member while a request or stream is open, ping
    /// it (HTTP/2 PING, etcd's `DialKeepAliveTime`); at least [`MIN_KEEPALIVE_TIME`].
    pub keepalive_time: Duration,
    /// A member that does not answer the ping within this long is taken for dead: the
    /// connection closes, its streams fail and their owners resume them elsewhere (etcd's
    /// `DialKeepAliveTimeout`). A paused or cut-off member would otherwise hold a watch open
    /// and silent for ever.
    pub keepalive_timeout: Duration,
}

/// The shortest keep-alive time accepted: etcd closes connections whose client pings more
/// often than its `--grpc-keepalive-min-time` (5 s by default) with "too many pings".
pub const MIN_KEEPALIVE_TIME: Duration = Duration::from_secs(5);

impl ConnectConfig {
    /// Plain connections to `endpoints` with etcdctl's default timeouts.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            credentials: None,
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            auto_sync_interval: None,
            // grpc-go raises any shorter client keep-alive time to 10 s.
            keepalive_time: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
        }
    }

    /// Checks what can be checked without connecting: at least one endpoint, each one
    /// `[http://|https://]host:port`.
    pub fn validate(&self) -> Result<(), ConnectError> {
        if self.endpoints.is_empty() {
            return Err(ConnectError::NoEndpoints);
        }
        for endpoint in &self.endpoints {
            parse_endpoint(endpoint)?;
        }
        if self.keepalive_time < MIN_KEEPALIVE_TIME {
            return Err(ConnectError::KeepaliveTooShort(self.keepalive_time));
        }
        if self.keepalive_timeout.is_zero() {
            return Err(ConnectError::KeepaliveTimeoutZero);
        }
        Ok(())
    }
}

/// Why a connection could not be made; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No endpoint was given.
    #[error("no etcd endpoint given (use --endpoints or FERRY_ENDPOINTS)")]
    NoEndpoints,
    /// An endpoint is not `[http://|https://]host:port`.
    #[error("endpoint {endpoint:?} is not [http://|https://]host:port: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The keep-alive time is shorter than etcd accepts.
    #[error(
        "keep-alive time {0:?} is shorter than {MIN_KEEPALIVE_TIME:?}: etcd closes connections \
         that ping more often than its --grpc-keepalive-min-time (5s)"
    )]
    KeepaliveTooShort(Duration),
    /// The keep-alive timeout is zero.
    #[error("keep-alive timeout must be longer than zero")]
    KeepaliveTimeoutZero,
    /// `--password` was given without `--user`.
    #[error("--password needs --user")]
    PasswordWithoutUser,
    /// `--user` holds only a name and no `--password` was given.
    #[error("--user {0:?} has no password: use --user NAME:PASSWORD or --password")]
    UserWithoutPassword(String),
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    TlsFile {
        /// Which file (CA, certificate, key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate was given without its key, or the other way round.
    #[error("--cert and --key go together: give both or neither")]
    CertWithoutKey,
    /// The endpoint did not answer in time or refused the connection.
    #[error("cannot reach etcd at {endpoints}: {reason}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// What went wrong.
        reason: String,
    },
    /// The TLS handshake failed (wrong CA, expired or mismatched certificate, missing client
    /// certificate).
    #[error("TLS handshake with {endpoints} failed: {reason}")]
    Tls {
        /// The endpoints tried.
        endpoints: String,
        /// What the TLS layer said.
        reason: String,
    },
    /// The server refused the user name or password.
    #[error("etcd at {endpoints} refused the credentials for user {user:?}: {reason}")]
    Credentials {
        /// The endpoints tried.
        endpoints: String,
        /// The user name.
        user: String,
        /// What the server said.
        reason: String,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::TlsFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// etcd-client's TLS settings from `files` (the CA, and the client certificate for mutual
/// TLS), read now so that a missing file is reported before any connection.
pub fn tls_options(files: &TlsFiles) -> Result<TlsOptions, ConnectError> {
    let mut tls = TlsOptions::new();
    if let Some(ca) = &files.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read("CA file", ca)?));
    }
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("certificate", cert)?,
                read("key", key)?,
            ));
        }
        (None, None) => {}
        _ => return Err(ConnectError::CertWithoutKey),
    }
    Ok(tls)
}

/// Connects and checks the connection with a Status call, so that an unreachable endpoint,
/// a TLS problem or wrong credentials are reported here rather than at the first request.
pub async fn connect(config: &ConnectConfig) -> Result<Client, ConnectError> {
    config.validate()?;
    let uses_https = config.endpoints.iter().any(|e| e.starts_with("https://"));
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout)
        .with_timeout(config.request_timeout)
        .with_keep_alive(config.keepalive_time, config.keepalive_timeout)
        // A ping on a connection with nothing open counts against the client at etcd.
        .with_keep_alive_while_idle(false);
    let mut endpoints = config.endpoints.clone();
    let mut chosen_tls = None;
    let insecure = config.tls.as_ref().is_some_and(|t| t.insecure_skip_verify);
    if (config.tls.is_some() || uses_https) && !insecure {
        let tls = tls_options(&config.tls.clone().unwrap_or_default())?;
        options = options.with_tls(tls.clone());
        chosen_tls = Some(tls);
        // etcd-client picks TLS per endpoint from the scheme.
        endpoints = endpoints
            .into_iter()
            .map(|e| {
                if e.contains("://") {
                    e.replacen("http://", "https://", 1)
                } else {
                    format!("https://{e}")
                }
            })
            .collect();
    }
    // Probes need no credentials (Status is open to all), and must not cost an
    // authentication each.
    let probe_options = options.clone();
    // A member cut off from the quorum refuses requests ("no leader") instead of holding
    // them, and cancels watches, which then move to a member that has one.
    options = options.with_require_leader(true);
    if let Some((user, password)) = &config.credentials {
        options = options.with_user(user.clone(), password.clone());
    }
    let joined = config.endpoints.join(",");
    let classify = |err: etcd_client::Error| -> ConnectError {
        let reason = describe(&err);
        let lower = reason.to_lowercase();
        if let Some((user, _)) = &config.credentials {
            if lower.contains("unimplemented") || lower.contains("not implemented") {
                return ConnectError::Credentials {
                    endpoints: joined.clone(),
                    user: user.clone(),
                    reason: "the server does not support authentication; connect without --user"
                        .into(),
                };
            }
            if lower.contains("authentication failed") || lower.contains("invalid user") {
                return ConnectError::Credentials {
                    endpoints: joined.clone(),
                    user: user.clone(),
                    reason,
                };
            }
        }
        if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
            ConnectError::Tls {
                endpoints: joined.clone(),
                reason,
            }
        } else {
            ConnectError::Unreachable {
                endpoints: joined.clone(),
                reason,
            }
        }
    };
    let attempt = async {
        let mut client = match &config.tls {
            Some(files) if insecure => {
                let channel = insecure::channel(&config.endpoints[0], files, config)?;
                Client::from_channel(channel, Some(options))
                    .await
                    .map_err(classify)?
            }
            _ if endpoints.len() > 1 || config.auto_sync_interval.is_some() => {
                let urls = endpoints
                    .iter()
                    .map(|e| {
                        if e.contains("://") {
                            e.clone()
                        } else {
                            format!("http://{e}")
                        }
                    })
                    .collect();
                let spec = health::EndpointSpec {
                    dial_timeout: config.dial_timeout,
                    request_timeout: config.request_timeout,
                    tls: chosen_tls,
                    auto_sync_interval: config.auto_sync_interval,
                    keepalive: (config.keepalive_time, config.keepalive_timeout),
                };
                health::connect_cluster(urls, options, probe_options, spec)
                    .await
                    .map_err(classify)?
            }
            None if chosen_tls.is_none() => {
                let address = endpoints[0].trim_start_matches("http://").to_string();
                let channel = plain_channel::PlainChannel::new(plain_channel::PlainEndpoint::new(
                    address, config,
                ))
                .map_err(|e| ConnectError::Unreachable {
                    endpoints: joined.clone(),
                    reason: e.to_string(),
                })?;
                Client::from_channel(channel.into_etcd_channel(), Some(options))
                    .await
                    .map_err(classify)?
            }
            _ => Client::connect(endpoints, Some(options))
                .await
                .map_err(classify)?,
        };
        client.status().await.map_err(classify)?;
        Ok(client)
    };
    match tokio::time::timeout(
        config.dial_timeout.saturating_add(config.request_timeout),
        attempt,
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Unreachable {
            endpoints: joined.clone(),
            reason: format!(
                "no answer within {:?}",
                config.dial_timeout.saturating_add(config.request_timeout)
            ),
        }),
    }
}

/// The whole chain of an error, since the useful part (refused, certificate unknown) is
/// usually at the bottom.
fn describe(err: &etcd_client::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
