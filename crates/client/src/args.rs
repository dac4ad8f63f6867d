//! The connection flags every command that talks to a store shares (`clap` feature): the
//! `ferry` binary's subcommands and the examples take exactly these.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::{ConnectConfig, ConnectError, TlsFiles};

/// How to reach the store (the embedded one or a real etcd cluster), as flags and
/// `FERRY_*` environment variables.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Comma-separated etcd endpoints (host:port, http://host:port or https://host:port).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379",
        env = "FERRY_ENDPOINTS",
        global = true
    )]
    pub endpoints: Vec<String>,
    /// CA bundle to verify the server certificate.
    #[arg(long, env = "FERRY_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[arg(long, env = "FERRY_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Key of the client certificate.
    #[arg(long, env = "FERRY_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Use TLS but do not verify the server certificate (first endpoint only).
    #[arg(long, env = "FERRY_INSECURE_SKIP_TLS_VERIFY", global = true)]
    pub insecure_skip_tls_verify: bool,
    /// User name, or `user:password` (as etcdctl's --user).
    #[arg(long, env = "FERRY_USER", global = true)]
    pub user: Option<String>,
    /// Password, when --user holds only the name.
    #[arg(long, env = "FERRY_PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<String>,
    /// Time allowed to establish a connection.
    #[arg(long, default_value = "2s", env = "FERRY_DIAL_TIMEOUT", global = true, value_parser = positive_duration)]
    pub dial_timeout: Duration,
    /// Time allowed for one request.
    #[arg(
        long,
        default_value = "5s",
        env = "FERRY_COMMAND_TIMEOUT",
        global = true,
        value_parser = positive_duration
    )]
    pub command_timeout: Duration,
    /// Replace the endpoints with the cluster members' client URLs this often (etcd's
    /// `--auto-sync-interval`); 0, the default, keeps the endpoints given.
    #[arg(
        long,
        default_value = "0s",
        env = "FERRY_AUTO_SYNC_INTERVAL",
        global = true,
        value_parser = crate::duration::parse
    )]
    pub auto_sync_interval: Duration,
    /// Ping a member after this long without hearing from it while a request or watch is
    /// open (etcdctl's --keepalive-time); at least 5s, etcd's --grpc-keepalive-min-time.
    #[arg(
        long,
        default_value = "10s",
        env = "FERRY_KEEPALIVE_TIME",
        global = true,
        value_parser = positive_duration
    )]
    pub keepalive_time: Duration,
    /// A member that does not answer the ping within this long is taken for dead and its
    /// watches move to another member (etcdctl's --keepalive-timeout).
    #[arg(
        long,
        default_value = "5s",
        env = "FERRY_KEEPALIVE_TIMEOUT",
        global = true,
        value_parser = positive_duration
    )]
    pub keepalive_timeout: Duration,
}

/// A Go-style duration longer than zero, for clap.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(text)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

impl ConnectionArgs {
    /// The library configuration these flags describe; malformed endpoints and credentials
    /// are refused here, before any connection is tried.
    pub fn config(&self) -> Result<ConnectConfig, ConnectError> {
        let mut config =
            ConnectConfig::new(self.endpoints.iter().filter(|e| !e.is_empty()).cloned());
        config.dial_timeout = self.dial_timeout;
        config.request_timeout = self.command_timeout;
        config.auto_sync_interval =
            (!self.auto_sync_interval.is_zero()).then_some(self.auto_sync_interval);
        config.keepalive_time = self.keepalive_time;
        config.keepalive_timeout = self.keepalive_timeout;
        if self.cacert.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.insecure_skip_tls_verify
        {
            config.tls = Some(TlsFiles {
                ca: self.cacert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
                insecure_skip_verify: self.insecure_skip_tls_verify,
            });
        }
        config.credentials = match (&self.user, &self.password) {
            (None, None) => None,
            (None, Some(_)) => return Err(ConnectError::PasswordWithoutUser),
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (Some(user), None) => match user.split_once(':') {
                Some((name, password)) => Some((name.to_string(), password.to_string())),
                None => return Err(ConnectError::UserWithoutPassword(user.clone())),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Connects, reporting malformed flags, unreachable endpoints, TLS and credential
    /// problems each with its own error.
    pub async fn connect(&self) -> Result<etcd_client::Client, ConnectError> {
        crate::connect(&self.config()?).await
    }
}
